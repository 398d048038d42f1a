"""Seed repeats: a compare's top models refitted with more seeds, beside the leaderboard."""

from __future__ import annotations

import re

import mlflow
import pytest

from study import cli, config, repeats, report, tracking
from study.errors import ConfigError


def test_summary_on_constructed_accuracies():
    results = {"a": [0.91, 0.92, 0.90], "b": [0.89, 0.93, 0.88]}  # b beats a with seed 2
    summary = repeats.summarize(results, {"a": 0.915, "b": 0.905})
    a = summary["models"]["a"]
    assert a["mean"] == pytest.approx(0.91) and a["std"] == pytest.approx(0.01)
    assert (a["min"], a["max"], a["n"]) == (0.90, 0.92, 3)
    assert summary["order_held_seeds"] == 2 and not summary["order_stable"]
    assert "held for 2 of 3 seeds" in repeats.verdict(summary)
    steady = repeats.summarize({"a": [0.92, 0.93], "b": [0.90, 0.91]}, {})
    assert steady["order_stable"] and "held for every one of the 2 seeds" in \
        repeats.verdict(steady)


def test_an_ensemble_is_passed_over_for_its_members():
    rows = [{"pipeline": "ensemble", "family": "ensemble", "rank": 1},
            {"pipeline": "cnn", "family": "cnn", "rank": 2},
            {"pipeline": "svm", "family": "svm", "rank": 3}]
    chosen, notes = repeats.pick(rows, 1)
    assert [r["pipeline"] for r in chosen] == ["cnn"] and "ensemble (rank 1)" in notes[0]


@pytest.mark.slow
def test_repeats_of_a_compare_leave_its_leaderboard_alone(tracking_store, capsys, tmp_path,
                                                          monkeypatch, render_dom):
    assert cli.main(["compare", "--profile", "smoke", "--pipelines", "logreg,knn"]) == 0
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    (compare,) = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    finals = {r.info.run_id: r.data.tags["rank"] for r in client.search_runs(
        [exp.experiment_id], "tags.role = 'final'")}
    capsys.readouterr()

    with pytest.raises(ConfigError, match="seeds >= 2"):
        repeats.run(compare.info.run_id, seeds=1, top=2)
    assert cli.main(["repeats", "--run-id", compare.info.run_id, "--seeds", "2", "--top",
                     "2"]) == 0
    out = capsys.readouterr()
    assert "mean +/- std" in out.out and "[repeats] logreg seed 2021 (1/2)" in out.err

    run = tracking.repeats_run_of(compare.info.run_id)
    summary = tracking.load_json(run.info.run_id, "repeats/repeats.json")
    # the ensemble (if it ranks in the top 2) is passed over: its members are repeated
    assert sorted(summary["models"]) == ["knn", "logreg"] and summary["seeds"] == [2021, 2022]
    for model in summary["models"].values():
        assert model["n"] == 2 and 0.3 < model["mean"] <= 1.0 and model["std"] >= 0
    children = client.search_runs([run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted((c.data.tags["pipeline"], c.data.params["seed"]) for c in children) == \
        [("knn", "2021"), ("knn", "2022"), ("logreg", "2021"), ("logreg", "2022")]
    # the compare's leaderboard is what it was: no new final run, the same ranks
    assert {r.info.run_id: r.data.tags["rank"] for r in client.search_runs(
        [exp.experiment_id], "tags.role = 'final'")} == finals
    # and its report shows them, as a section of its own
    built = report.build(compare.info.run_id)
    text = (built.html.parent / "report.md").read_text()
    assert "Seed repeats (training variance)" in text and run.info.run_id in text
    dom = render_dom(built.html)  # and renders like the other sections
    assert re.search(r'<h2 id="s\d+">\d+\. Seed repeats \(training variance\)</h2>', dom)
    assert re.search(r"<td>\d\.\d{4} \+/- \d\.\d{4}</td>", dom)

    # a definition changed since the compare: refused before anything is trained
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "knn.yaml").write_text((config.PIPELINES_DIR / "knn.yaml").read_text())
    (folder / "logreg.yaml").write_text(
        (config.PIPELINES_DIR / "logreg.yaml").read_text().replace("max_iter: 300", "max_iter: 301"))
    monkeypatch.setenv(config.PIPELINES_ENV, str(folder))
    with pytest.raises(ConfigError, match="pipeline logreg changed since compare"):
        repeats.run(compare.info.run_id, seeds=2, top=2)
