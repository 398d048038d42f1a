"""Everything a report shows, read from MLflow once (and the test images from the verified
dataset files): the sections only format it, so none of them talks to MLflow."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from study import config, evaluation, files, leaderboard, tracking
from study.config import CLASS_NAMES

CALIBRATION_DIAGRAMS = 5  # reliability diagrams: the champion and the top models after it
REDUCTION_FIGURES = ("pca_explained_variance.png", "pca_map.png", "umap_map.png")
ABLATION_FIGURES = ("lr_batch", "l2", "activation", "topology")


@dataclass(frozen=True)
class Context:
    """One compare as its report sees it; built once by `gather`, read by every section."""

    parent: Any  # the compare's MLflow run
    profile: str
    stamp: datetime  # when the compare started
    folder: Path  # where the report and its figures go
    dataset: Any  # data.FashionMNIST: the test images and labels
    rows: list[dict[str, Any]]  # the ranked leaderboard, champion selected, significance added
    predictions: dict[str, np.ndarray]  # run id -> test predictions
    champion_proba: np.ndarray | None
    ensemble_note: str
    ensemble_summary: dict[str, Any] | None
    failures: list[dict[str, Any]]
    per_class_f1: dict[str, list[float]]  # pipeline -> F1 per class, leaderboard order
    curves: dict[str, dict[str, list[float]]]  # network -> validation accuracy/loss per epoch
    tunings: list[dict[str, Any]]
    environment: dict[str, Any]
    reduction_images: dict[str, Path | None]
    repeats: tuple[Any, dict[str, Any]] | None  # (run, summary) of the compare's seed repeats
    ablation: tuple[Any, dict[str, Any], dict[str, Path | None]] | None  # (run, table, images)
    timeline: list[tuple[str, float, float]]  # (pipeline, minutes into the compare, test acc)
    budgets: list[dict[str, float]]  # budgeted compares of this profile: what each minute buys
    skipped: dict[str, str]  # pipeline -> why the time budget skipped it
    # per final run with calibration metrics, leaderboard order: pipeline, run_id, champion,
    # its metrics, the `calibration` tag (which temperature was kept and why) and, for the
    # champion and the top models, its test reliability bins (evaluation.reliability_record)
    calibration: list[dict[str, Any]]

    @property
    def run_id(self) -> str:
        return self.parent.info.run_id

    @property
    def champion(self) -> dict[str, Any] | None:
        """The model chosen on validation accuracy (not rank 1, the test maximum)."""
        return leaderboard.champion_of(self.rows)

    @property
    def y_test(self) -> np.ndarray:
        return self.dataset.y_test


def fetch(run_id: str, artifact: str, folder: Path) -> Path | None:
    """Copy one artifact of a run into the report folder, flat, beside report.md."""
    with tempfile.TemporaryDirectory() as tmp:
        local = tracking.download_artifact(run_id, artifact, tmp)
        if not local:
            return None
        with files.replacing(folder / local.name) as part:
            shutil.copy(local, part)
        return folder / local.name


def gather(parent, profile: str, dataset, ensemble_note: str, out_dir: Path | None) -> Context:
    """Read one compare's results; ranks are written back to the final runs on the way."""
    pid = parent.info.run_id
    runs = tracking.final_runs(pid)
    rows, predictions = tracking.ranked(runs, dataset.y_test)
    champion = leaderboard.champion_of(rows)
    for row in rows:
        tracking.set_rank(row["run_id"], row["rank"])
    stamp = datetime.fromtimestamp(parent.info.start_time / 1000, tz=timezone.utc)
    folder = Path(out_dir) if out_dir else config.reports_dir() / f"{stamp:%Y%m%d-%H%M%S}-{profile}"
    folder.mkdir(parents=True, exist_ok=True)
    ensemble_row = next((r for r in rows if r["family"] == "ensemble"), None)
    return Context(
        parent=parent, profile=profile, stamp=stamp, folder=folder, dataset=dataset, rows=rows,
        predictions=predictions,
        champion_proba=(tracking.load_npy(champion["run_id"], "evaluation/test_proba.npy")
                        if champion else None),
        ensemble_note=ensemble_note,
        ensemble_summary=(tracking.load_json(ensemble_row["run_id"], "ensemble/selection.json")
                          if ensemble_row else None),
        failures=tracking.failed_runs(pid), per_class_f1=_per_class_f1(rows),
        curves=_curves(rows), tunings=tracking.tuning_runs(pid),
        environment=tracking.load_json(pid, "environment.json") or {},
        reduction_images={name: fetch(pid, f"reduction/{name}", folder)
                          for name in REDUCTION_FIGURES},
        repeats=_repeats(pid), ablation=_ablation(pid, folder),
        timeline=_timeline(parent, runs), budgets=tracking.budgeted_compares(pid, profile),
        skipped=_skipped(pid), calibration=_calibration(runs, rows, champion, dataset.y_test))


def _calibration(runs, rows, champion, y_test: np.ndarray) -> list[dict[str, Any]]:
    """Each calibrated final run's figures, in leaderboard order; the champion and the next
    models by rank (CALIBRATION_DIAGRAMS in all) with their reliability bins, read from
    evaluation/reliability.json (or, for runs logged before it, from their test
    probabilities and temperature)."""
    by_id = {r["run_id"]: r for r in runs}
    calibrated = [r for r in rows if "test_nll" in by_id.get(r["run_id"], {}).get("metrics", {})]
    first = [r for r in calibrated if champion and r["run_id"] == champion["run_id"]]
    shown = {r["run_id"] for r in (first + [r for r in calibrated if r not in first])
             [:CALIBRATION_DIAGRAMS]}
    out = []
    for row in calibrated:
        run = by_id[row["run_id"]]
        record = None
        if row["run_id"] in shown:
            record = tracking.load_json(row["run_id"], "evaluation/reliability.json")
            proba = None if record else tracking.load_npy(row["run_id"],
                                                          "evaluation/test_proba.npy")
            if proba is not None and len(proba) == len(y_test):
                record = evaluation.reliability_record(
                    proba.astype(np.float64), y_test, run["metrics"].get("temperature", 1.0))
        out.append({"pipeline": row["pipeline"], "run_id": row["run_id"],
                    "champion": bool(champion and row["run_id"] == champion["run_id"]),
                    "metrics": run["metrics"], "note": run.get("calibration", ""),
                    "reliability": record})
    return out


def _timeline(parent, runs) -> list[tuple[str, float, float]]:
    """When each final model was done, in minutes from the compare's start (reused models of
    an interrupted compare ended before it started: left out)."""
    start = parent.info.start_time
    points = [(r["pipeline"], (r["end_time"] - start) / 60000, r["metrics"]["test_accuracy"])
              for r in runs if r.get("end_time") and "test_accuracy" in r["metrics"]]
    return sorted((p for p in points if p[1] >= 0), key=lambda p: p[1])


def _skipped(pid: str) -> dict[str, str]:
    text = tracking.load_text(pid, "skipped.txt") or ""
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def _per_class_f1(rows) -> dict[str, list[float]]:
    out = {}
    for r in rows:
        rep = tracking.load_json(r["run_id"], "evaluation/classification_report.json")
        if rep:
            out[r["pipeline"]] = [rep[c]["f1-score"] for c in CLASS_NAMES]
    return out


def _curves(rows) -> dict[str, dict[str, list[float]]]:
    curves = {r["pipeline"]: {k: tracking.metric_history(r["run_id"], f"epoch/{k}")
                              for k in ("val_accuracy", "val_loss")}
              for r in rows if r.get("kind") == "keras"}
    return {k: v for k, v in curves.items() if v["val_accuracy"]}


def _repeats(pid: str):
    run = tracking.repeats_run_of(pid)
    summary = tracking.load_json(run.info.run_id, "repeats/repeats.json") if run else None
    return (run, summary) if summary else None


def _ablation(pid: str, folder: Path):
    run = tracking.ablation_run_of(pid)
    if run is None:
        return None
    table = tracking.load_json(run.info.run_id, "ablation/ablation.json") or {}
    images = {key: fetch(run.info.run_id, f"ablation/ablation_{key}.png", folder)
              for key in ABLATION_FIGURES}
    return run, table, images
