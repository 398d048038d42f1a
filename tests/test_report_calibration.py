"""The report's "Calibration" section on a real smoke compare (logreg and k-NN on real images,
their ensemble, a temporary MLflow store): its figures are the logged ones, its verdict is
computed from them, and it renders in headless Chromium like the other sections."""

from __future__ import annotations

import os
import re
import shutil

import mlflow
import pytest

from study import cli, config, tracking
from study.report import SECTIONS
from study.report.texts import calibration_rows, calibration_verdict

pytestmark = pytest.mark.slow


@pytest.fixture
def compared(tracking_store, tmp_path, capsys):
    assert cli.main(["compare", "--profile", "smoke", "--pipelines", "logreg,knn"]) == 0
    capsys.readouterr()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    (folder,) = (tmp_path / "reports").glob("*-smoke")
    return parent.info.run_id, folder


def test_the_calibration_section_shows_the_logged_figures(compared, request):
    pid, folder = compared
    markdown = (folder / "report.md").read_text()
    number = SECTIONS.index("Calibration") + 1
    assert f"## {number}. Calibration" in markdown
    body = markdown.split(f"## {number}. Calibration", 1)[1].split("\n## ", 1)[0]
    assert "](calibration_reliability.png)" in body
    assert (folder / "calibration_reliability.png").stat().st_size > 10_000

    runs = {r["pipeline"]: r for r in tracking.final_runs(pid)}
    assert {"logreg", "knn"} <= set(runs)
    # one table row per calibrated model, each with its logged figures and intervals
    for name, run in runs.items():
        m = run["metrics"]
        line = next(ln for ln in body.splitlines() if ln.startswith(f"| {name}"))
        ece = f"{100 * m['test_ece']:.2f}% ({100 * m['test_ece_lo']:.2f}-" \
              f"{100 * m['test_ece_hi']:.2f})"
        ece0 = f"{100 * m['test_ece_unscaled']:.2f}% ({100 * m['test_ece_unscaled_lo']:.2f}-" \
               f"{100 * m['test_ece_unscaled_hi']:.2f})"
        nll = f"{m['test_nll']:.3f} ({m['test_nll_lo']:.3f}-{m['test_nll_hi']:.3f})"
        assert ece in line and ece0 in line and nll in line, (name, line)
        threshold = m["unsure_threshold"]
        assert (f"| {threshold:.3f} |" if threshold > 0 else "| 0 (never unsure) |") in line
        t = m["temperature"]
        assert (f"| {t:.3g} |" if t != 1.0 else "| 1 (none kept) |") in line
        # a kept temperature lowered validation NLL and did not raise validation ECE
        if t != 1.0:
            assert m["val_nll"] < m["val_nll_unscaled"]
            assert m["val_ece"] <= m["val_ece_unscaled"]
            assert run["calibration"].startswith("temperature ")
        else:
            assert run["calibration"].startswith("no temperature (T=1)")
    # the verdict names the champion and quotes its logged figures, not a canned sentence
    rows = [r for r in re.findall(r"^\| (\w+)(?: \(champion\))? \|", body, re.M)
            if r != "model"]  # the header
    assert sorted(rows) == sorted(runs)
    chosen = re.search(r"^\| (\w+) \(champion\) \|", body, re.M).group(1)
    m = runs[chosen]["metrics"]
    verdict = body.strip().split("\n")[0]
    assert verdict.startswith(f"The champion, {chosen}, ")
    assert f"{100 * m['test_ece']:.2f}% (95% CI {100 * m['test_ece_lo']:.2f}-" in verdict
    assert f"the best calibrated on test is " in verdict

    # and renders in Chromium like the others (where installed; CI requires it)
    if shutil.which("chromium") or shutil.which("chromium-browser") or \
            os.environ.get("STUDY_REQUIRE_BROWSER"):
        dom = request.getfixturevalue("render_dom")(folder / "report.html")
        assert f'<h2 id="s{number}">{number}. Calibration</h2>' in dom
        section = dom.split(f'<h2 id="s{number}">', 1)[1].split("<h2 ", 1)[0]
        (image,) = re.findall(r"<img [^>]*>", section)
        assert 'data-loaded="1"' in image and "Reliability diagrams" in image
        assert "<th>test ECE after</th>" in section and ece in dom


def _entry(name, champion, t, ece, ece0, nll, nll0):
    m = {"temperature": t, "test_ece": ece, "test_ece_lo": ece * 0.8, "test_ece_hi": ece * 1.2,
         "test_ece_unscaled": ece0, "test_nll": nll, "test_nll_unscaled": nll0,
         "unsure_threshold": 0.5}
    note = "temperature x" if t != 1.0 else (
        "no temperature (T=1): the fitted T=5 raised ECE (validation NLL 0.9 -> 0.4, "
        "ECE 2.00% -> 6.00%)")
    return {"pipeline": name, "run_id": name, "champion": champion, "metrics": m, "note": note,
            "reliability": None}


def test_the_calibration_verdict_follows_the_figures():
    """Two sentences built from the figures: they change when the figures do."""
    scaled = [_entry("cnn", True, 1.8, 0.012, 0.045, 0.25, 0.31),
              _entry("knn", False, 1.0, 0.019, 0.019, 0.9, 0.9),
              _entry("mlp", False, 1.4, 0.02, 0.03, 0.33, 0.35)]
    text = calibration_verdict(scaled)
    assert text.count(". ") == 1 and text.endswith(".")
    assert "cnn, is scaled by T=1.8: its test ECE goes from 4.50% to 1.20%" in text
    assert "from 0.310 to 0.250 (lower after scaling)" in text and "within the study's 1.5% aim" in text
    assert "lowered test ECE for 2 of the 2 models that kept a temperature" in text
    assert "1 kept T=1 (knn): on validation the fitted temperature" in text and "the best calibrated on test is cnn (1.20% ECE)" in text
    kept_none = [_entry("knn", True, 1.0, 0.019, 0.019, 0.9, 0.9)]
    text = calibration_verdict(kept_none)
    assert "knn, keeps no temperature (the fitted T=5 raised ECE" in text
    assert "No model kept a temperature; 1 kept T=1 (knn)" in text
    assert "above the study's 1.5% aim" in calibration_verdict(
        [_entry("cnn", True, 1.8, 0.03, 0.045, 0.25, 0.31)])
    rows = calibration_rows(scaled)
    assert rows[0][:2] == ["cnn (champion)", "1.8"] and rows[1][1] == "1 (none kept)"
    assert rows[0][7] == "1.20% (0.96-1.44)" and rows[0][8] == "0.500"
