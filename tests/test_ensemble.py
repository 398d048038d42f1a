"""The ensemble stage: selection on constructed probabilities, on real models in a real MLflow
store (validation data only, the pyfunc's weighted mean, left-out members), mirror TTA, and a
compare killed before its ensemble."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest

from study import (calibration, compare, config, ensemble, ensemble_stage, images, serving,
                   tracking)
from study.errors import ConfigError


def votes(labels: np.ndarray, right: np.ndarray, confidence: float, seed: int = 0) -> np.ndarray:
    """Class probabilities that put `confidence` on the true class where `right`, else on a
    wrong class, and spread the rest evenly."""
    rng = np.random.default_rng(seed)
    wrong = (labels + rng.integers(1, 10, len(labels))) % 10
    picked = np.where(right, labels, wrong)
    proba = np.full((len(labels), 10), (1 - confidence) / 9)
    proba[np.arange(len(labels)), picked] = confidence
    return proba


@pytest.fixture
def constructed():
    """A and B are each right on 60% of the rows, confidently where the other is wrong, so
    their mean is right everywhere; C is right on 40% and adds nothing."""
    y = np.arange(500) % 10
    first = np.arange(500) < 300
    second = np.arange(500) >= 200
    a = np.where(first[:, None], votes(y, np.ones(500, bool), 0.9), votes(y, np.zeros(500, bool), 0.6, 1))
    b = np.where(second[:, None], votes(y, np.ones(500, bool), 0.9), votes(y, np.zeros(500, bool), 0.6, 2))
    c = votes(y, np.arange(500) % 5 < 2, 0.7, 3)
    return y, {"A": a, "B": b, "C": c}


def test_selection_finds_the_known_best_pair(constructed):
    y, val = constructed
    assert [ensemble.accuracy(val[k], y) for k in "ABC"] == [0.6, 0.6, 0.4]
    chosen = ensemble.select(val, y, rounds=10, max_members=3)
    assert set(chosen.weights) == {"A", "B"} and chosen.val_accuracy == 1.0
    assert chosen.weights["A"] == pytest.approx(chosen.weights["B"])
    assert sum(chosen.weights.values()) == pytest.approx(1.0)
    mix = ensemble.combine(val, chosen.weights)
    assert ensemble.accuracy(mix, y) == 1.0
    assert chosen.history[0]["added"] in ("A", "B") and chosen.best_round == 2
    assert chosen.ties >= 1 and any("tied" in note for note in chosen.notes)


def test_accuracy_ties_go_to_the_lower_log_loss():
    y = np.arange(300) % 10
    right = np.arange(300) < 240
    sure, unsure = votes(y, right, 0.9), votes(y, right, 0.5)  # same mistakes, other confidence
    chosen = ensemble.select({"a_unsure": unsure, "b_sure": sure}, y, rounds=1, max_members=2)
    assert chosen.weights == {"b_sure": 1.0}  # not the first name: the lower log loss
    assert ensemble.log_loss(sure, y) < ensemble.log_loss(unsure, y)


def test_selection_takes_validation_data_only(constructed):
    """By construction: the selection function has no parameter through which a test set
    could reach it, and it follows validation even where test would want another model."""
    assert list(inspect.signature(ensemble.select).parameters) == [
        "val_proba", "y_val", "rounds", "max_members"]
    y, val = constructed
    # a test set on which C is perfect and A, B are useless: chosen on it, C would win alone
    y_test = (np.arange(400) * 7) % 10
    test = {"A": votes(y_test, np.zeros(400, bool), 0.9, 4),
            "B": votes(y_test, np.zeros(400, bool), 0.9, 5),
            "C": votes(y_test, np.ones(400, bool), 0.7, 6)}
    assert ensemble.select(test, y_test, rounds=5, max_members=3).weights == {"C": 1.0}
    chosen = ensemble.select(val, y, rounds=5, max_members=3)
    assert "C" not in chosen.weights


def test_degenerate_cases_are_reported():
    y = np.arange(200) % 10
    one = ensemble.select({"only": votes(y, np.arange(200) < 150, 0.8)}, y, 5, 3)
    assert one.weights == {"only": 1.0} and "one candidate" in one.notes[0]
    # B is a worse copy of A's mistakes: no mix beats A alone
    a = votes(y, np.arange(200) < 180, 0.9)
    b = votes(y, np.arange(200) < 100, 0.9, 5)
    alone = ensemble.select({"A": a, "B": b}, y, 8, 3)
    assert alone.weights == {"A": 1.0} and "all weight on A" in alone.notes[0]
    # the member cap holds: after max_members distinct models only those are added again
    many = {f"m{i}": votes(y, (np.arange(200) + 20 * i) % 200 < 120, 0.7, i) for i in range(6)}
    capped = ensemble.select(many, y, 20, 2)
    assert len(capped.weights) <= 2
    with pytest.raises(ValueError, match="expected"):
        ensemble.select({"bad": np.ones((3, 10)) / 10}, y, 3, 2)


def test_usable_leaves_out_members_without_validation_probabilities():
    y_val, y_test = np.zeros(30, int), np.zeros(40, int)
    good = ensemble.Candidate("good", "r1", "cnn", np.ones((30, 10)) / 10, np.ones((40, 10)) / 10,
                              model_uri="models:/m-1")
    missing = ensemble.Candidate("old", "r2", "svm", None, np.ones((40, 10)) / 10,
                                 model_uri="models:/m-2")
    base = ensemble.Candidate("dummy", "r3", "baseline", np.ones((30, 10)) / 10,
                              np.ones((40, 10)) / 10, model_uri="models:/m-3")
    other = ensemble.Candidate("moved", "r4", "knn", np.ones((30, 10)) / 10,
                               np.ones((40, 10)) / 10, model_uri="models:/m-4", data_digest="x")
    kept, left_out = ensemble.usable([good, missing, base, other], len(y_val), len(y_test),
                                     ("baseline",), data_digest="y")
    assert [c.name for c in kept] == ["good"]
    assert len(left_out) == 3
    assert left_out[0].startswith("old: no validation probabilities logged")
    assert left_out[1].startswith("dummy: family baseline is excluded")
    assert left_out[2].startswith("moved: trained on other rows")


def test_usable_leaves_out_the_reducers_the_settings_exclude(tmp_path):
    proba = np.ones((30, 10)) / 10
    umap = ensemble.Candidate("umap_knn", "r1", "knn", proba, proba, model_uri="m",
                              reducer="umap")
    pca = ensemble.Candidate("knn", "r2", "knn", proba, proba, model_uri="m", reducer="pca")
    path = tmp_path / "ensemble.yaml"
    path.write_text("rounds: 5\nmax_members: 3\nexclude_reducers: [umap]\n")
    settings = ensemble.load_config(path)
    kept, left_out = ensemble.usable([umap, pca], 30, 30, settings.exclude_families,
                                     excluded_reducers=settings.exclude_reducers)
    assert [c.name for c in kept] == ["knn"]
    assert left_out == ["umap_knn: reducer umap is excluded in the ensemble settings"]
    # the shipped settings let UMAP models vote: their served answers are the scored ones
    # (tests/test_pipelines.py::test_umap_reducer_transforms_alike_fresh_reloaded_and_refitted)
    shipped = ensemble.load_config()
    kept, _ = ensemble.usable([umap, pca], 30, 30, shipped.exclude_families,
                              excluded_reducers=shipped.exclude_reducers)
    assert [c.name for c in kept] == ["umap_knn", "knn"]


def test_bad_settings_are_one_line_errors(tmp_path):
    path = tmp_path / "ensemble.yaml"
    path.write_text("enabled: true\nrounds: 0\nmax_members: 3\n")
    with pytest.raises(ConfigError, match="rounds must be a positive integer"):
        ensemble.load_config(path)
    path.write_text("rounds: [\n")
    with pytest.raises(ConfigError, match="cannot read the ensemble settings"):
        ensemble.load_config(path)
    assert ensemble.load_config().enabled  # the project's own settings are valid


def test_compare_builds_the_ensemble_from_validation_and_serves_the_weighted_mean(
        tracking_store, fmnist, monkeypatch):
    """A real smoke compare in a temporary store: the selection receives the validation rows
    and nothing of the test set; the ensemble is a ranked final run whose pyfunc returns the
    weighted mean of its members' probabilities; a member without validation probabilities
    is left out with a note when the ensemble is built again."""
    seen = []
    real_select = ensemble.select

    def spy(val_proba, y_val, rounds, max_members):
        seen.append((val_proba, y_val))
        return real_select(val_proba, y_val, rounds, max_members)

    monkeypatch.setattr(ensemble, "select", spy)
    result = compare.compare("smoke", "dummy,logreg,knn,pca_logreg")
    assert not result.failures
    (val_proba, y_val), = seen
    from study import data

    splits = data.make_splits(fmnist, config.PROFILES["smoke"])
    assert np.array_equal(y_val, splits.y_val)  # the validation labels, not the test ones
    assert sorted(val_proba) == ["knn", "logreg", "pca_logreg"]  # the baseline is excluded
    assert all(p.shape == (len(splits.y_val), 10) for p in val_proba.values())

    rows = {r["pipeline"]: r for r in result.rows}
    ens = rows["ensemble"]
    assert ens["family"] == "ensemble" and ens["rank"] >= 1
    client = mlflow.MlflowClient()
    run = client.get_run(ens["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == result.run_id
    weights = {k[len("weight."):]: float(v) for k, v in run.data.params.items()
               if k.startswith("weight.")}
    assert weights and sum(weights.values()) == pytest.approx(1.0, abs=1e-3)
    assert run.data.params["members"].split(",") == list(weights)
    assert ens["best_params"] == {k: f"{v:.4f}" for k, v in weights.items()}
    # the params are rounded to 4 decimals (three thirds sum to 0.9999): compare with the exact
    # weights the selection logged
    summary = tracking.load_json(ens["run_id"], "ensemble/selection.json")
    exact = summary["weights"]
    # the leaderboard's yardstick is stated too: the best single model on test, among every
    # final run (the excluded baseline too), from their logged test accuracy
    top = max((n for n in rows if n != "ensemble"), key=lambda n: (rows[n]["test_accuracy"], n))
    assert summary["best_single_on_test"] == top
    assert summary["best_single_test_accuracy"] == pytest.approx(rows[top]["test_accuracy"])
    assert {n: f"{w:.4f}" for n, w in exact.items()} == ens["best_params"]
    weights = exact
    # the logged test probabilities are the weighted mean of the members' logged ones
    members = {n: tracking.load_npy(rows[n]["run_id"], "evaluation/test_proba.npy") for n in weights}
    logged = tracking.load_npy(ens["run_id"], "evaluation/test_proba.npy")
    assert np.allclose(logged, ensemble.combine(members, weights), atol=1e-5)
    assert run.data.metrics["test_accuracy"] == pytest.approx(
        ensemble.accuracy(logged, fmnist.y_test))
    # the pyfunc model: weighted mean of the members' own logged models, on flat or image input,
    # each member before its own temperature (undone: 1/T), the mean with the ensemble's own
    model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
    x = fmnist.x_test[:50].astype(np.float32) / 255
    uris = {n: client.get_run(rows[n]["run_id"]).data.tags["model_uri"] for n in weights}
    expected = calibration.apply_temperature(sum(w * calibration.apply_temperature(
        images.probabilities(mlflow.pyfunc.load_model(uris[n]).predict(x.reshape(50, -1))),
        1 / rows[n]["temperature"]) for n, w in weights.items()),
        run.data.metrics["temperature"])
    for layout in (x.reshape(50, -1), x[..., None]):  # flat or image pixels, either way
        assert np.allclose(images.probabilities(model.predict(layout)), expected, atol=1e-5)
    # it holds its members' native models, as MLflow copied them from their logged models
    held = Path(model._model_impl.context.artifacts[f"member_0_{next(iter(weights))}"])
    assert (held / "MLmodel").is_file() and "sklearn" in (held / "MLmodel").read_text()
    assert run.data.metrics["served_max_abs_diff"] < 1e-5

    # Built again without one member's validation probabilities: left out, and said so.
    client.delete_run(ens["run_id"])
    gone = next(iter(weights))
    artifacts = Path(client.get_run(rows[gone]["run_id"]).info.artifact_uri.replace("file://", ""))
    (artifacts / "evaluation" / "val_proba.npy").unlink()
    again = ensemble_stage.run(result.run_id, "smoke", splits.y_val, splits.y_test,
                               splits.x_test, data.fingerprint(splits))
    assert any(line.startswith(f"{gone}: no validation probabilities") for line in again.left_out)
    assert again.run_id  # two of the three candidates remain
    assert gone not in client.get_run(again.run_id).data.params["members"].split(",")


def test_yardsticks_follow_the_selections_order_and_the_logged_test_figures():
    """Best member: tied on validation accuracy, the lower log loss wins, as in the selection
    (not the later name). Test figures: the logged test_accuracy, scored from the logged
    predictions, where the float32 probabilities tie and their argmax flips. Best single on
    test: every final run, also one the ensemble may not use."""
    from study.evaluation import evaluate

    y_val, y_test = np.arange(300) % 10, np.arange(400) % 10
    right = np.arange(300) < 240
    sure, unsure = votes(y_val, right, 0.9), votes(y_val, right, 0.5)  # same mistakes
    # on test, "a_sure" puts 0.5 + 1e-9 on the true class and 0.5 - 1e-9 on class 0 for the
    # rows of classes 1-9: right in float64, a tie in float32, where argmax says class 0
    near = np.zeros((400, 10))
    near[:, 0] = 0.5 - 1e-9
    near[np.arange(400), y_test] += 0.5 + 1e-9
    near /= near.sum(axis=1, keepdims=True)
    scored = evaluate(y_test, near)  # as the final run scored it and logged its metric
    logged = near.astype(np.float32)  # as tracking.log_evaluation stores test_proba.npy
    assert scored.accuracy == 1.0 and ensemble.accuracy(logged, y_test) == pytest.approx(0.1)

    def candidate(name, val, test, acc, family="cnn"):
        return ensemble.Candidate(name, name, family, val, test, {"test_accuracy": acc},
                                  model_uri=f"models:/{name}")

    a = candidate("a_sure", sure, logged, scored.accuracy)
    b = candidate("b_unsure", unsure, votes(y_test, np.arange(400) < 300, 0.8), 0.75)
    # the best on test, left out of the candidates (its family is excluded)
    x = candidate("x_excluded", sure, votes(y_test, np.ones(400, bool), 0.9), 1.0, "baseline")
    kept, _ = ensemble.usable([a, b, x], 300, 400, ("baseline",))
    assert [c.name for c in kept] == ["a_sure", "b_unsure"]
    figures = ensemble_stage.yardsticks([a, b, x], kept, ["a_sure", "b_unsure"], y_val)
    first = ensemble.select({c.name: c.val_proba for c in kept}, y_val, 1, 2)
    assert figures["best_member"] == "a_sure" == first.history[0]["added"]
    assert figures["best_member_val_accuracy"] == 0.8
    assert figures["member_test_accuracy"] == {"a_sure": 1.0, "b_unsure": 0.75}
    assert figures["best_member_test_accuracy"] == scored.accuracy  # not 0.1
    assert figures["best_single_on_test"] == "x_excluded"
    assert figures["best_single_test_accuracy"] == 1.0


def test_ensemble_weights_never_see_the_test_labels_and_its_yardstick_is_every_final_run(
        tracking_store, tiny):
    """Real final runs in a real store. Built twice, with the real test labels and with test
    labels under which another mix would win on test: the weights are the same, only the
    test score moves. The best single model on test is a final run the ensemble may not use
    (its family is excluded), found from its logged test accuracy."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from study.evaluation import evaluate
    from study.training import FitResult, features

    client = mlflow.MlflowClient()
    exp_id = mlflow.set_experiment(config.EXPERIMENT_NAME).experiment_id
    parent = client.create_run(exp_id, tags={"role": "compare"}).info.run_id
    flat = features("sklearn", tiny.x_train)

    def final(name: str, family: str, model) -> str:
        """A final run as compare logs it: its model, scores and probabilities."""
        fit = FitResult(model.fit(flat, tiny.y_train), "sklearn", 0.0)
        tags = {"role": "final", "pipeline": name, "family": family, "mlflow.parentRunId": parent}
        with mlflow.start_run(run_name=name, tags=tags) as run, \
                tempfile.TemporaryDirectory() as tmp:
            mlflow.set_tag("model_uri", tracking.log_model(
                fit, "-", tiny.x_val[:5], log_classifier=serving.log_model).model_uri)
            scored = evaluate(tiny.y_test, fit.predict_proba(tiny.x_test))
            mlflow.log_metric("test_accuracy", scored.accuracy)
            tracking.log_evaluation(name, scored, fit.predict_proba(tiny.x_val), Path(tmp))
        return run.info.run_id

    final("weak", "linear", LogisticRegression(C=1e-4, max_iter=1000))
    final("prior", "baseline_like", DummyClassifier(strategy="prior"))
    final("strong", "baseline", LogisticRegression(max_iter=1000))  # excluded by the settings
    accs = {r["pipeline"]: r["metrics"]["test_accuracy"] for r in tracking.final_runs(parent)}
    assert max(accs, key=accs.get) == "strong" and accs["strong"] > accs["weak"]

    first = ensemble_stage.run(parent, "smoke", tiny.y_val, tiny.y_test, tiny.x_test, "")
    summary = tracking.load_json(first.run_id, "ensemble/selection.json")
    assert "strong" not in summary["candidates"]
    assert summary["best_single_on_test"] == "strong"
    assert summary["best_single_test_accuracy"] == accs["strong"]
    assert summary["member_test_accuracy"] == {n: accs[n] for n in summary["weights"]}

    # test labels under which "prior" alone is perfect: chosen on test, another mix would win
    runs = {r["pipeline"]: r["run_id"] for r in tracking.final_runs(parent)}
    rigged = tracking.load_npy(runs["prior"], "evaluation/test_predictions.npy").astype(np.int64)
    tests = {n: tracking.load_npy(runs[n], "evaluation/test_proba.npy")
             for n in summary["candidates"]}
    assert ensemble.accuracy(tests["prior"], rigged) == 1.0
    assert ensemble.select(tests, rigged, 5, 8).weights != summary["weights"]
    client.delete_run(first.run_id)
    again = ensemble_stage.run(parent, "smoke", tiny.y_val, rigged, tiny.x_test, "")
    run_first, run_again = client.get_run(first.run_id), client.get_run(again.run_id)
    assert tracking.load_json(again.run_id, "ensemble/selection.json")["weights"] == \
        summary["weights"]
    assert run_again.data.metrics["test_accuracy"] != run_first.data.metrics["test_accuracy"]


def test_members_load_their_runs_own_models_not_the_model_uri_tag(tracking_store, tiny):
    """The model_uri tag is editable by anyone with EDIT on the experiment: a member whose tag
    points at another user's model still joins the ensemble (and its served model) with the
    model its own run logged."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from study.training import FitResult, features

    client = mlflow.MlflowClient()
    exp_id = mlflow.set_experiment(config.EXPERIMENT_NAME).experiment_id
    parent = client.create_run(exp_id, tags={"role": "compare"}).info.run_id
    flat = features("sklearn", tiny.x_train)

    def final(name: str, model, tags: dict[str, str]) -> str:
        """A run like a final run: the logged model and its validation and test probabilities."""
        fit = FitResult(model.fit(flat, tiny.y_train), "sklearn", 0.0)
        with mlflow.start_run(run_name=name, tags={"role": "final", "pipeline": name,
                                                   "family": "linear", **tags}) as run:
            mlflow.set_tag("model_uri", tracking.log_model(
                fit, "-", tiny.x_val[:5], log_classifier=serving.log_model).model_uri)
            for split, x in (("val", tiny.x_val), ("test", tiny.x_test)):
                np.save(f"{split}_proba.npy", fit.predict_proba(x))
                mlflow.log_artifact(f"{split}_proba.npy", "evaluation")
        return run.info.run_id

    good = final("good", LogisticRegression(max_iter=1000), {"mlflow.parentRunId": parent})
    final("prior", DummyClassifier(strategy="prior"), {"mlflow.parentRunId": parent})
    attacker = final("attacker", DummyClassifier(strategy="constant", constant=7),
                     {"mlflow.user": "mallory"})  # in no compare: always class 7
    client.set_tag(good, "model_uri", client.get_run(attacker).data.tags["model_uri"])

    result = ensemble_stage.run(parent, "smoke", tiny.y_val, tiny.y_test, tiny.x_test, "")
    assert result.run_id and "good" in client.get_run(result.run_id).data.params["members"]
    served = images.probabilities(mlflow.pyfunc.load_model(
        f"runs:/{result.run_id}/ensemble").predict(features("sklearn", tiny.x_test)))
    scored = calibration.apply_temperature(  # logged before the ensemble's temperature
        tracking.load_npy(result.run_id, "evaluation/test_proba.npy"),
        client.get_run(result.run_id).data.metrics["temperature"])
    assert np.allclose(served, scored, atol=1e-5)  # the honest members' weighted mean
    assert ensemble.accuracy(served, tiny.y_test) > 0.5  # not mallory's constant class


def test_mirror_tta_model_is_mirror_symmetric(fmnist, tmp_path):
    """The wrapped network gives a mirrored image the prediction of the image, and that is the
    mean of the bare network on both views; it saves and loads as plain Keras."""
    import keras

    from study.models.keras_models import cnn_seed1, with_mirror

    keras.utils.set_random_seed(1)
    net = cnn_seed1()
    x = fmnist.x_test[:16, :, :, None].astype(np.float32) / 255
    net.fit(x, fmnist.y_test[:16], epochs=1, verbose=0)  # not symmetric by itself
    assert not np.allclose(net.predict(x, verbose=0), net.predict(x[:, :, ::-1], verbose=0))
    tta = with_mirror(net)
    both = tta.predict(x, verbose=0)
    assert np.allclose(both, tta.predict(x[:, :, ::-1], verbose=0), atol=1e-6)
    assert np.allclose(both, 0.5 * (net.predict(x, verbose=0) +
                                    net.predict(x[:, :, ::-1], verbose=0)), atol=1e-6)
    assert tta.count_params() == net.count_params() + 28 * 28  # the frozen mirror kernel
    tta.save(tmp_path / "tta.keras")
    loaded = keras.models.load_model(tmp_path / "tta.keras")
    assert np.allclose(loaded.predict(x, verbose=0), both, atol=1e-6)


def test_tta_is_kept_only_where_validation_gains(tiny):
    """Two validation labellings of the same network, built from its own predictions: labels
    that the plain network gets all right (mirroring cannot gain: kept would be wrong) and
    labels that the mirrored mean gets all right (mirroring gains). The figures and the
    decision are checked against accuracies computed here from the bare network."""
    from study import pipelines, training

    spec = pipelines.load("cnn_seed1")
    fit = training.fit(spec, {"learning_rate": 1e-3, "epochs": 2, "batch_size": 64,
                              "precision": "float32"}, tiny.x_train, tiny.y_train, tiny.x_val,
                       tiny.y_val, seed=3)
    bare = fit.model
    plain = fit.predict_proba(tiny.x_val)
    mirrored = 0.5 * (plain + fit.predict_proba(tiny.x_val[:, :, ::-1]))
    assert np.any(plain.argmax(1) != mirrored.argmax(1))  # the two views disagree somewhere
    for labels, keep in ((plain.argmax(1), False), (mirrored.argmax(1), True)):
        trial = training.FitResult(bare, "keras", 0.0)
        proba = training.choose_mirror_tta(trial, tiny.x_val, labels)
        info = trial.info
        assert info["val_accuracy_plain"] == training.accuracy(plain, labels)
        assert info["val_accuracy_mirror"] == training.accuracy(mirrored, labels)
        assert info["tta"] == ("mirror" if keep else "none")
        assert (trial.model is not bare) == keep
        assert training.accuracy(proba, labels) == (1.0 if keep else info["val_accuracy_plain"])
        # the model kept predicts what was scored: mirror-symmetric only when wrapped
        assert np.allclose(trial.predict_proba(tiny.x_val), mirrored if keep else plain,
                           atol=1e-5)
        assert np.allclose(trial.predict_proba(tiny.x_val[:, :, ::-1]),
                           trial.predict_proba(tiny.x_val), atol=1e-5) == keep


@pytest.mark.slow
def test_compare_killed_before_its_ensemble_reruns_only_the_ensemble(tmp_path, sigkill_at):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
           "OPTUNA_JOURNAL": str(tmp_path / "o.journal"), config.REPORTS_ENV: str(tmp_path / "r")}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    command = [sys.executable, "-m", "study", "compare", "--profile", "smoke", "--pipelines",
               "logreg,knn"]
    # killed once both pipelines are logged, as the ensemble stage starts
    sigkill_at(command, "=== ensemble", cwd=tmp_path, env=env)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    (killed,) = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    before = {r.data.tags["pipeline"]: r.info.run_id for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{killed.info.run_id}'")}
    assert sorted(before) == ["knn", "logreg"]  # killed before the ensemble was logged

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, run_id in before.items():
        assert f"{name}: reusing run {run_id}" in again.stderr
    assert "final fit" not in again.stderr and "trial " not in again.stderr  # nothing retrained
    assert "ensemble: " in again.stderr
    resumed = next(r for r in client.search_runs([exp.experiment_id], "tags.role = 'compare'")
                   if r.info.run_id != killed.info.run_id)
    rows = {r.data.tags["pipeline"]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{resumed.info.run_id}'")}
    assert sorted(rows) == ["ensemble", "knn", "logreg"]
    assert rows["ensemble"].info.status == "FINISHED" and rows["ensemble"].data.tags["rank"]


def test_the_ensembles_cost_counts_each_model_underneath_once_and_times_every_test_image(
        tracking_store, tiny, fmnist, monkeypatch):
    """Issue 42, findings 5 and 7. Two specialists built on one generalist: their fit_seconds
    each include the generalist's, so the ensemble's is the own fit of every distinct model
    underneath (10 + 3 + 4 s), not the sum of its members' figures (37 s). Its prediction is
    timed the way every final model's is: in this process, on every test image."""
    from sklearn.linear_model import LogisticRegression

    from study import evaluation
    from study.tracking import ensemble_run
    from study.training import FitResult, features

    client = mlflow.MlflowClient()
    exp_id = mlflow.set_experiment(config.EXPERIMENT_NAME).experiment_id
    parent = client.create_run(exp_id, tags={"role": "compare"}).info.run_id

    def logged(metrics: dict[str, float], tags: dict[str, str]) -> str:
        run = client.create_run(exp_id, tags={"role": "final", **tags}).info.run_id
        for key, value in metrics.items():
            client.log_metric(run, key, value)
        return run

    general = logged({"fit_seconds": 10.0, "own_fit_seconds": 10.0, "tuning_seconds": 5.0}, {})
    special = [logged({"fit_seconds": 10.0 + own, "own_fit_seconds": own},
                      {"generalist_run_id": general}) for own in (3.0, 4.0)]
    assert ensemble_run.cost_of([*special, general]) == {"fit_seconds": 17.0,
                                                         "tuning_seconds": 5.0}
    assert ensemble_run.cost_of(special) == {"fit_seconds": 17.0, "tuning_seconds": 5.0}
    # a run logged before own_fit_seconds: its fit_seconds was its own fit
    assert ensemble_run.cost_of([logged({"fit_seconds": 6.0}, {})])["fit_seconds"] == 6.0

    flat = features("sklearn", tiny.x_train)

    def final(name: str, c: float) -> None:
        fit = FitResult(LogisticRegression(C=c, max_iter=300).fit(flat, tiny.y_train), "sklearn",
                        0.0)
        with mlflow.start_run(run_name=name, tags={
                "role": "final", "pipeline": name, "family": "linear",
                "mlflow.parentRunId": parent}):
            tracking.log_model(fit, "-", tiny.x_val[:5], log_classifier=serving.log_model)
            mlflow.log_metrics({"fit_seconds": c * 100, "own_fit_seconds": c * 100})
            for split, x in (("val", tiny.x_val), ("test", fmnist.x_test)):
                np.save(f"{split}_proba.npy", fit.predict_proba(x))
                mlflow.log_artifact(f"{split}_proba.npy", "evaluation")

    final("strong", 0.1)
    final("weak", 0.001)
    timed = []

    def recording(predict, images):
        proba, seconds = evaluation.timed_proba(predict, images)
        timed.append((len(images), proba.shape, seconds))
        return proba, seconds

    monkeypatch.setattr(ensemble_run, "timed_proba", recording)
    result = ensemble_stage.run(parent, "smoke", tiny.y_val, fmnist.y_test, fmnist.x_test, "")
    run = client.get_run(result.run_id)
    members = [r["run_id"] for r in tracking.final_runs(parent)
               if r["pipeline"] in run.data.params["members"].split(",")]
    assert run.data.metrics["fit_seconds"] == ensemble_run.cost_of(members)["fit_seconds"]
    (rows, shape, seconds), = timed  # every test image, not a sample of 1,000
    assert rows == len(fmnist.x_test) == 10_000 and shape == (10_000, 10)
    assert run.data.metrics["predict_seconds"] == pytest.approx(seconds)
    assert run.data.metrics["predict_ms_per_1000"] == pytest.approx(seconds * 100)


def test_report_shows_one_test_figure_per_model_and_the_best_of_every_final_run():
    """A summary logged by an older stage (test figures recomputed from float32 probabilities,
    best on test among the candidates only): the section takes the leaderboard's figures, so a
    member shows the test accuracy its leaderboard row shows, and the best single model on
    test may be one the ensemble could not use."""
    from types import SimpleNamespace

    from study.report.sections import ensemble_section

    rows = [{"pipeline": "ensemble", "family": "ensemble", "run_id": "e", "rank": 1,
             "val_accuracy": 0.95, "test_accuracy": 0.9400},
            {"pipeline": "big", "family": "baseline", "run_id": "b", "test_accuracy": 0.9390},
            {"pipeline": "cnn", "family": "cnn", "run_id": "c", "test_accuracy": 0.9371},
            {"pipeline": "mlp", "family": "mlp", "run_id": "m", "test_accuracy": 0.8800}]
    summary = {"weights": {"cnn": 0.5, "mlp": 0.5}, "counts": {"cnn": 1, "mlp": 1},
               "candidates": ["cnn", "mlp"], "rounds": 2, "max_members": 2, "best_round": 2,
               "member_val_accuracy": {"cnn": 0.94, "mlp": 0.89},
               "member_test_accuracy": {"cnn": 0.9368, "mlp": 0.8800},  # recomputed: ties flipped
               "best_member": "cnn", "best_member_val_accuracy": 0.94,
               "best_member_test_accuracy": 0.9368, "best_single_on_test": "cnn",
               "best_single_test_accuracy": 0.9368}
    text = "".join(ensemble_section(SimpleNamespace(
        rows=rows, ensemble_summary=summary, ensemble_note="")).md)
    assert "0.9371" in text and "0.9368" not in text
    assert "+0.29 points" in text  # 0.9400 against cnn's logged 0.9371
    assert "The best single model on the test set is big (0.9390)" in text
