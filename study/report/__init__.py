"""The comparison report, rebuilt from MLflow alone: report.md and a self-contained report.html.

Everything here reads what compare logged (final runs, their predictions and curves, tuning
runs, the parent's figures); nothing is retrained. The test images themselves come from the
verified dataset files, for the grid of misclassified examples. `context` reads, `sections`
formats, `document` writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import config, files, leaderboard, tracking
from study.errors import first_line
from study.report import context, document, sections

SECTIONS = sections.TITLES  # the sections every report has, in order

logger = logging.getLogger(__name__)


@dataclass
class Report:
    run_id: str  # the compare run reported on
    folder: Path
    markdown: Path
    html: Path
    rows: list[dict[str, Any]]


def build(run_id: str | None = None, out_dir: Path | None = None, data_dir: str | None = None,
          log: bool = True) -> Report:
    """Rank the final runs of one compare (the latest by default) and write its report."""
    import os

    from study import data

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # dozens of downloads
    start = time.perf_counter()
    parent = tracking.find_compare_run(run_id)
    pid = parent.info.run_id
    given_dir = parent.data.params.get("data_dir")
    dataset = data.load(data_dir or (None if given_dir in (None, "", "auto", "-", "None")
                                     else given_dir))
    ensemble_note = parent.data.tags.get("ensemble", "")
    profile = parent.data.tags.get("profile", parent.data.params.get("profile", "?"))
    if log and profile in config.PROFILES:  # an interrupted or older compare: build it now
        try:
            ensemble_note = rebuild_ensemble(pid, profile, dataset) or ensemble_note
        except Exception as exc:  # the models are ranked and reported without it
            ensemble_note = f"ensemble: could not be built ({type(exc).__name__}: {first_line(exc)})"
            logger.warning(ensemble_note)
    ctx = context.gather(parent, profile, dataset, ensemble_note, out_dir)
    folder = ctx.folder
    written = [files.write_text(folder / "leaderboard.csv", leaderboard.render_csv(ctx.rows)),
               files.write_text(folder / "leaderboard.md",
                                leaderboard.render_markdown(ctx.rows) + "\n"),
               files.write_text(folder / "leaderboard.txt",
                                leaderboard.render_text(ctx.rows, wide=True) + "\n")]
    intro, body = sections.intro(ctx), sections.render(ctx)
    md_path, html_path = document.write(
        folder, f"Fashion-MNIST comparison {ctx.profile} {pid}", intro, body)
    written += [md_path, html_path, *(f for s in (intro, *body) for f in s.figures)]
    if log:
        upload(written, pid)
        tracking.log_metric(pid, "report_seconds", time.perf_counter() - start)
    return Report(pid, folder, md_path, html_path, ctx.rows)


def upload(written: list[Path], run_id: str) -> None:
    """Only the files this report wrote go to the tracking store, never the rest of its
    folder: `--out ~` must not publish ~/.pgpass or ~/.ssh."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for path in dict.fromkeys(written):  # a figure shown twice is uploaded once
            shutil.copy(path, Path(tmp) / path.name)
        tracking.log_artifacts(tmp, "report", run_id=run_id)


def rebuild_ensemble(pid: str, profile: str, dataset) -> str:
    """The compare's ensemble from its logged probabilities, when it has none yet; returns the
    stage's one-line message ("" when the ensemble was there already)."""
    from study import data, ensemble_stage

    if ensemble_stage.existing_run(pid):
        return ""
    splits = data.make_splits(dataset, config.profile(profile))
    result = ensemble_stage.run(pid, profile, splits.y_val, splits.y_test, splits.x_test,
                                data.fingerprint(splits))
    logger.info(result.message)
    return result.message
