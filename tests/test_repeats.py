"""Seed repeats: a compare's top models refitted with more seeds, beside the leaderboard."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

import mlflow
import pytest

from study import (attempts, cli, config, data, pipelines, repeats, report, tracking, training,
                   tuning)
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


def test_an_ensemble_is_passed_over_and_the_note_says_what_is_repeated_instead():
    rows = [{"pipeline": "ensemble", "family": "ensemble", "rank": 1},
            {"pipeline": "cnn", "family": "cnn", "rank": 2},
            {"pipeline": "svm", "family": "svm", "rank": 3}]
    chosen, notes = repeats.pick(rows, 1)
    assert [r["pipeline"] for r in chosen] == ["cnn"]
    # its members are not what is repeated: the next-ranked single models are
    assert "ensemble (rank 1)" in notes[0] and "members" not in notes[0]
    assert "not refitted; the next-ranked single models are repeated instead" in notes[0]


def test_a_specialist_says_its_generalist_is_held_fixed():
    specialist, plain = pipelines.load("cnn_upper"), pipelines.load("cnn_modern")
    (note,) = repeats.held_fixed([plain, specialist])
    assert note.startswith("cnn_upper held fixed: the compare's cnn_modern network")
    assert "leaves out cnn_modern's seed variance" in note
    assert repeats.held_fixed([plain]) == []


def _logged(fitted: dict, tuned: dict, run_id: str = "r1") -> dict:
    """A final run as tracking.final_runs returns it, with params as tracking.log_final
    logs them (str of each value)."""
    params = {"pipeline": "cnn_modern", "reducer": "none", "model": "cnn_modern",
              "profile": "quick", "seed": "2020",
              **{k: str(v) for k, v in fitted.items()},
              **{f"best.{k}": str(v) for k, v in tuned.items()}}
    return {"run_id": run_id, "pipeline": "cnn_modern", "params": params}


def test_the_refit_uses_what_the_final_run_logged_not_the_profile_recipe():
    spec, profile = pipelines.load("cnn_modern"), config.profile("quick")
    recipe = spec.budget(profile)
    assert recipe.fit["epochs"] == 16
    # a time budget cut the compare's fit to 2 epochs and 30 s; tuning chose a small rate
    cut = dataclasses.replace(recipe, fit={**recipe.fit, "epochs": 2, "max_seconds": 30.0})
    tuned = {"learning_rate": 9e-05}
    fitted = tuning.final_params(spec, cut, tuned)
    params = repeats.logged_fit_params(spec, profile, _logged(fitted, tuned))
    assert params == fitted  # exactly, types included (9e-05 a float, ema 0.99, widths a str)
    assert params["epochs"] == 2 and params["max_seconds"] == 30.0
    assert params["learning_rate"] == 9e-05 and params["widths"] == "24-48-96-96"

    # the other type traps: a tuned "53" stays a string (hidden layer widths, as the old
    # YAML reading made it an int the builder refuses), a tuned 3e-06 is a number
    mlp = pipelines.load("mlp_seed")
    mlp_tuned = {"hidden": "53", "l2": 3e-06, "batch_size": 32, "activation": "relu"}
    mlp_fitted = tuning.final_params(mlp, mlp.budget("smoke"), mlp_tuned)
    assert repeats.logged_fit_params(mlp, config.profile("smoke"),
                                     _logged(mlp_fitted, mlp_tuned)) == mlp_fitted

    # a run that did not log a parameter of the recipe is refused, never refitted by recipe
    older = _logged({k: v for k, v in fitted.items() if k != "epochs"}, tuned, "old1")
    with pytest.raises(ConfigError, match=r"final run old1 \(cnn_modern\) logged no epochs"):
        repeats.logged_fit_params(spec, profile, older)
    truncated = _logged({**fitted, "widths": "8-" * 3000}, tuned, "cut1")
    with pytest.raises(ConfigError, match="holds widths truncated"):
        repeats.logged_fit_params(spec, profile, truncated)


def test_a_seed_stopped_by_its_time_cap_is_noted():
    capped = training.FitResult(None, "keras", 30.0, notes=[
        "time limit: stopped after 3 of 8 epochs (max_seconds 30)", "other"])
    assert repeats.time_limited("cnn", 2021, capped, 8.0) == [
        "cnn seed 2021: time limit: stopped after 3 of 8 epochs (max_seconds 30); the "
        "compare's fit ran 8"]
    assert repeats.time_limited("cnn", 2021, training.FitResult(None, "keras", 9.0), 8.0) == []


@pytest.mark.slow
def test_a_budget_cut_compare_is_repeated_with_its_cut_epochs(tracking_store, real_dir):
    """A real compare run whose time budget cut mlp_seed's smoke fit from 2 epochs to 1: each
    repeat fits 1 epoch, as the compare did."""
    spec, profile = pipelines.load("mlp_seed"), config.profile("smoke")
    assert spec.budget(profile).fit["epochs"] == 2
    cut = dataclasses.replace(spec.budget(profile), n_trials=0,
                              fit={"epochs": 1, "max_seconds": 120.0})
    splits = data.make_splits(data.load(real_dir), profile)
    tracking.configure()
    url = tuning.resolve_storage(None)
    setup = attempts.TuningSetup(url, tuning.open_storage(url))
    with tracking.compare_run(profile.name, config.SEED, [spec.name]) as parent_id:
        tracking.log_metrics({"budget_minutes": 1.0})
        final_id = attempts.run_pipeline(spec, profile, splits, config.SEED, setup, parent_id,
                                         data.fingerprint(splits), cut)
    final = mlflow.MlflowClient().get_run(final_id)
    assert final.data.params["epochs"] == "1" and final.data.metrics["epochs_run"] == 1

    summary = repeats.run(parent_id, seeds=2, top=1, data_dir=str(real_dir))
    children = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(config.EXPERIMENT_NAME + tracking.REPEATS_SUFFIX)
         .experiment_id], f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert len(children) == 2
    for child in children:  # the profile says 2 epochs; the compare fitted 1, and so do they
        assert child.data.params["epochs"] == "1" and child.data.metrics["epochs_run"] == 1
        assert child.data.params["max_seconds"] == "120.0"


def _chromium_dom(request, html):
    """Chromium's DOM of `html` where Chromium is installed (or required, as in CI), else
    None: the checks before it run everywhere."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")
            or os.environ.get("STUDY_REQUIRE_BROWSER")):
        return None
    return request.getfixturevalue("render_dom")(html)


@pytest.mark.slow
def test_repeats_of_a_compare_leave_its_leaderboard_alone(tracking_store, capsys, tmp_path,
                                                          monkeypatch, request):
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
    # the ensemble (if it ranks in the top 2) is passed over for the next-ranked models
    assert sorted(summary["models"]) == ["knn", "logreg"] and summary["seeds"] == [2021, 2022]
    ranks = {r["pipeline"]: int(r["rank"]) for r in tracking.final_runs(compare.info.run_id)}
    passed = [n for n in summary["notes"] if n.startswith("ensemble")]
    assert len(passed) == (ranks.get("ensemble", 99) <= 2)
    assert all("next-ranked single models are repeated instead" in n for n in passed)
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
    assert "the parameters each final run logged: tuned values, epochs and caps" in text
    assert re.search(r"<td>\d\.\d{4} \+/- \d\.\d{4}</td>", built.html.read_text())

    # a definition changed since the compare: refused before anything is trained
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "knn.yaml").write_text((config.PIPELINES_DIR / "knn.yaml").read_text())
    (folder / "logreg.yaml").write_text(
        (config.PIPELINES_DIR / "logreg.yaml").read_text().replace("max_iter: 300", "max_iter: 301"))
    monkeypatch.setenv(config.PIPELINES_ENV, str(folder))
    with pytest.raises(ConfigError, match="pipeline logreg changed since compare"):
        repeats.run(compare.info.run_id, seeds=2, top=2)

    # and renders like the other sections (where Chromium is; CI requires it)
    dom = _chromium_dom(request, built.html)
    if dom is not None:
        assert re.search(r'<h2 id="s\d+">\d+\. Seed repeats \(training variance\)</h2>', dom)
        assert re.search(r"<td>\d\.\d{4} \+/- \d\.\d{4}</td>", dom)
