"""Every final model, the ensemble included, is calibrated as it is logged: a temperature fitted
on validation only, NLL/Brier/ECE with intervals before and after it, and a logged model that
serves the scaled probabilities (real pipelines on real images, a temporary MLflow store)."""

from __future__ import annotations

import dataclasses
import pickle
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from study import (attempts, calibration, config, data, ensemble_stage, evaluation, images,
                   pipelines, predict, serving, tracking, tuning)

SPLITS, METRICS = ("val", "test"), ("nll", "brier", "ece")


def _final(name: str, tiny, parent: str) -> str:
    """One pipeline as a compare runs it (one trial, then the final fit, test and logging)."""
    spec = pipelines.load(name)
    budget = dataclasses.replace(spec.budget("smoke"), n_trials=1)
    setup = attempts.TuningSetup("", tuning.storage.open_storage(
        str(Path.cwd() / "optuna.journal")))
    return attempts.run_pipeline(spec, config.profile("smoke"), tiny, 2020, setup, parent, "",
                                 budget=budget)


@pytest.fixture
def finals(tracking_store, tiny):
    """A compare run with the final runs of logreg and pca_logreg, and their ensemble."""
    exp = mlflow.set_experiment(config.EXPERIMENT_NAME).experiment_id
    parent = mlflow.MlflowClient().create_run(exp, tags={"role": "compare"}).info.run_id
    runs = {name: _final(name, tiny, parent) for name in ("logreg", "pca_logreg")}
    runs["ensemble"] = ensemble_stage.run(parent, "smoke", tiny.y_val, tiny.y_test,
                                          tiny.x_test, "").run_id
    return runs


def _logged(run_id: str):
    run = mlflow.MlflowClient().get_run(run_id)
    val = tracking.load_npy(run_id, "evaluation/val_proba.npy").astype(np.float64)
    test = tracking.load_npy(run_id, "evaluation/test_proba.npy").astype(np.float64)
    return run, val, test


def test_every_final_model_is_calibrated_on_validation_and_serves_it(finals, tiny, tmp_path):
    """Each final run (two pipelines and the ensemble) carries NLL, Brier and ECE with their
    intervals on validation and test, after and before scaling, computed from the
    probabilities it logged; its temperature is the fit on its logged validation
    probabilities, kept because it lowers validation NLL; its logged model returns the scaled probabilities with
    every argmax unchanged, and so does `study predict` on image files."""
    for name, run_id in finals.items():
        run, val, test = _logged(run_id)
        m = run.data.metrics
        for split in SPLITS:
            for metric in METRICS:
                for suffix in ("", "_unscaled"):
                    key = f"{split}_{metric}{suffix}"
                    # ECE included: its interval is corrected for the resamples' bias
                    assert m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"], (name, key)
                    assert m[f"{key}_lo"] < m[f"{key}_hi"], (name, key)
        t = m["temperature"]
        # the validation fit, on the probabilities the run logged (float32: to 1e-3)
        assert t == pytest.approx(calibration.fit_temperature(val, tiny.y_val), rel=1e-3), name
        assert t != 1.0 and m["val_nll"] < m["val_nll_unscaled"], name
        assert run.data.tags["calibration"].startswith(f"temperature {t:.4g} "), name
        scaled = calibration.apply_temperature(test, t)
        assert m["test_nll"] == pytest.approx(calibration.nll(scaled, tiny.y_test), rel=1e-4)
        assert m["test_ece"] == pytest.approx(calibration.ece(scaled, tiny.y_test), abs=1e-4)
        assert m["test_nll_unscaled"] == pytest.approx(calibration.nll(test, tiny.y_test),
                                                       rel=1e-4)
        assert m["unsure_threshold"] == pytest.approx(calibration.unsure_threshold(
            calibration.apply_temperature(val, t), tiny.y_val), abs=1e-4)
        # the reliability diagram and its numbers: the logged test probabilities' bins
        # before and after the kept temperature
        shown = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
        assert {"evaluation/reliability.png", "evaluation/reliability.json"} <= shown, name
        record = tracking.load_json(run_id, "evaluation/reliability.json")
        assert record["temperature"] == pytest.approx(t) and record["images"] == len(test)
        for side, proba in (("before", test), ("after", scaled)):
            bins = calibration.reliability(proba, tiny.y_test)
            assert [b["count"] for b in record[side]["bins"]] == [b.count for b in bins]
            assert sum(b.count for b in bins) == len(test)
            for logged, b in zip(record[side]["bins"], bins):
                if b.count:
                    assert logged["accuracy"] == pytest.approx(b.accuracy, abs=1e-9)
                    assert logged["confidence"] == pytest.approx(b.confidence, abs=1e-4)
            assert record[side]["ece"] == pytest.approx(calibration.ece(proba, tiny.y_test),
                                                        abs=1e-4)
        assert record["after"]["ece"] == pytest.approx(m["test_ece"], abs=1e-4)
        # accuracy as before: on the argmax, which scaling leaves alone
        predictions = tracking.load_npy(run_id, "evaluation/test_predictions.npy")
        assert np.array_equal(scaled.argmax(1), test.argmax(1))
        assert m["test_accuracy"] == pytest.approx(np.mean(predictions == tiny.y_test))

        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/{name}")  # named by its pipeline
        served = images.probabilities(model.predict(data.as_image(tiny.x_test)))
        assert np.abs(served - scaled).max() < 1e-4, name
        assert np.abs(served - test).max() > 1e-3, name  # the temperature is applied
        assert np.array_equal(served.argmax(1), test.argmax(1)), name
        classifier = model.unwrap_python_model()
        assert classifier.temperature == pytest.approx(t)
        assert classifier.unsure_threshold == pytest.approx(m["unsure_threshold"])
        # `study predict` on image files: the scaled probabilities of its preprocessed pixels
        paths = []
        for i, image in enumerate(tiny.x_test[:5]):
            paths.append(str(tmp_path / f"{name}_{i}.png"))
            Image.fromarray(image).save(paths[-1])
        small = np.stack([pixels for _, pixels in predict.prepared(paths)]) / np.float32(255)
        expected = calibration.apply_temperature(classifier.members(small), t)
        for result, row in zip(predict.classify(paths, model=model, top=10), expected):
            assert dict(result.top) == pytest.approx(dict(zip(config.CLASS_NAMES, row)),
                                                     abs=1e-5)


def test_the_temperature_never_sees_the_test_set(tracking_store, tiny):
    """The same pipeline on the same rows, scored once on the real test labels and once on
    labels rolled by one class (a fit on them would sharpen nothing and soften a lot): the
    temperature and unsure threshold are identical, only the test figures move."""
    exp = mlflow.set_experiment(config.EXPERIMENT_NAME).experiment_id
    parent = mlflow.MlflowClient().create_run(exp, tags={"role": "compare"}).info.run_id
    rolled = dataclasses.replace(tiny, y_test=(tiny.y_test + 1) % 10)
    real, wrong = (mlflow.MlflowClient().get_run(_final("logreg", splits, parent)).data.metrics
                   for splits in (tiny, rolled))
    assert real["temperature"] == wrong["temperature"] != 1.0
    assert real["unsure_threshold"] == wrong["unsure_threshold"]
    assert real["val_nll"] == wrong["val_nll"]
    assert wrong["test_accuracy"] < 0.2 < real["test_accuracy"]
    assert wrong["test_nll"] > real["test_nll"] + 1.0
    # fitted on those test labels instead, the temperature would be far from the one kept
    _, _, test = _logged(tracking.final_run_of(parent, "logreg")["run_id"])
    assert calibration.fit_temperature(test, rolled.y_test) > 2 * real["temperature"]


def test_a_model_logged_before_calibration_loads_with_no_temperature(tracking_store, tiny):
    """A Classifier pickled without temperature or threshold (as every model logged before
    them) serves its members' probabilities unchanged (T=1, threshold 0)."""
    from sklearn.linear_model import LogisticRegression

    flat = data.as_flat(tiny.x_train)
    estimator = LogisticRegression(max_iter=300).fit(flat, tiny.y_train)
    old = serving.Classifier({tracking.NETWORK: 1.0})
    del old.temperature, old.unsure_threshold  # the state an old pickle holds
    assert set(pickle.loads(pickle.dumps(old)).__dict__) == {"weights"}
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        native = str(Path(tmp) / tracking.NETWORK)
        mlflow.sklearn.save_model(estimator, native, pyfunc_predict_fn="predict_proba",
                                  serialization_format="cloudpickle")
        uri = mlflow.pyfunc.log_model(name="model", python_model=old,
                                      artifacts={tracking.NETWORK: native},
                                      code_paths=[str(config.PACKAGE_DIR)]).model_uri
    model = mlflow.pyfunc.load_model(uri)
    assert model.unwrap_python_model().temperature == 1.0
    assert model.unwrap_python_model().unsure_threshold == 0.0
    served = images.probabilities(model.predict(data.as_image(tiny.x_test)))
    assert np.abs(served - estimator.predict_proba(data.as_flat(tiny.x_test))).max() < 1e-6


def test_a_temperature_that_does_not_lower_validation_nll_is_not_kept():
    """Probabilities already calibrated on validation (drawn from themselves): the fitted T
    lands near 1 and is kept only if it lowers validation NLL; a T that does not is 1.0."""
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(10) * 0.3, size=2000)
    y = np.array([rng.choice(10, p=p) for p in proba])
    t, note = evaluation.fitted_temperature(proba, y)
    fitted = calibration.fit_temperature(proba, y)
    lowered = (calibration.nll(calibration.apply_temperature(proba, fitted), y)
               < calibration.nll(proba, y))
    assert (t, note.startswith("temperature ")) == ((fitted, True) if lowered else (1.0, False))
    # a constant prediction: no temperature changes its NLL, so none is kept
    flat = np.full((50, 10), 0.1)
    t, note = evaluation.fitted_temperature(flat, np.arange(50) % 10)
    assert t == 1.0 and note.startswith("no temperature (T=1)")


def _knn_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of five neighbours' votes (levels 0.6, 0.8, 1.0), about as right as
    they say (accuracy min(level, 0.96)): a wrong "1.0" leaves the true class at 0."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    top = rng.choice([0.6, 0.8, 1.0], size=n, p=[0.1, 0.2, 0.7])
    right = rng.random(n) < np.minimum(top, 0.96)
    other = (y + rng.integers(1, 10, n)) % 10
    proba = np.zeros((n, 10))
    proba[np.arange(n), np.where(right, y, other)] = top
    proba[np.arange(n), np.where(right, other, y)] += 1 - top  # the minority votes
    return proba, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_knn_like_model_keeps_no_temperature_that_raises_validation_ece(seed):
    """k-NN-like probabilities: the NLL fit softens them (T ~ 5, as k-NN's measured T=5) and
    lowers validation NLL, but raises validation ECE, so T=1 is kept and the note says why."""
    proba, y = _knn_like(3000, seed)
    fitted = calibration.fit_temperature(proba, y)
    softened = calibration.apply_temperature(proba, fitted)
    assert fitted > 3
    assert calibration.nll(softened, y) < calibration.nll(proba, y)
    assert calibration.ece(softened, y) > calibration.ece(proba, y)
    t, note = evaluation.fitted_temperature(proba, y)
    assert t == 1.0
    assert note.startswith(f"no temperature (T=1): the fitted T={fitted:.4g} raised ECE")
    # and the run logs it so: temperature 1, the figures unchanged by scaling
    cal = evaluation.calibrate(proba, y, proba[:500], y[:500])
    assert cal.temperature == 1.0 and cal.note == note
    assert cal.metrics["val_ece"] == cal.metrics["val_ece_unscaled"]


def test_a_network_like_model_keeps_its_temperature():
    """An overconfident network (logits 2.5x those of the labels' true distribution): the
    fitted T (~2.5) lowers validation NLL and ECE, and is kept."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3000, 10)) * 2
    truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(10, p=p) for p in truth])
    over = np.exp(2.5 * logits)
    over /= over.sum(1, keepdims=True)
    t, note = evaluation.fitted_temperature(over, y)
    assert 2.0 < t < 3.0 and note.startswith(f"temperature {t:.4g} (validation NLL")
    scaled = calibration.apply_temperature(over, t)
    assert calibration.ece(scaled, y) < calibration.ece(over, y) / 3
    assert np.array_equal(scaled.argmax(1), over.argmax(1))
