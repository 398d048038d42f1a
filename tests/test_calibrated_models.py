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

from study import (calibration, compare, config, data, ensemble_stage, evaluation, pipelines,
                   predict, serving, tracking, tuning)

SPLITS, METRICS = ("val", "test"), ("nll", "brier", "ece")


def _final(name: str, tiny, parent: str) -> str:
    """One pipeline as a compare runs it (one trial, then the final fit, test and logging)."""
    spec = pipelines.load(name)
    budget = dataclasses.replace(spec.budget("smoke"), n_trials=1)
    setup = compare.TuningSetup("", tuning.storage.open_storage(
        str(Path.cwd() / "optuna.journal")))
    return compare.run_pipeline(spec, config.profile("smoke"), tiny, 2020, setup, parent, "",
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
        # accuracy as before: on the argmax, which scaling leaves alone
        predictions = tracking.load_npy(run_id, "evaluation/test_predictions.npy")
        assert np.array_equal(scaled.argmax(1), test.argmax(1))
        assert m["test_accuracy"] == pytest.approx(np.mean(predictions == tiny.y_test))

        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/{name}")  # named by its pipeline
        served = serving.probabilities(model.predict(data.as_image(tiny.x_test)))
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
    old = serving.Classifier({serving.NETWORK: 1.0})
    del old.temperature, old.unsure_threshold  # the state an old pickle holds
    assert set(pickle.loads(pickle.dumps(old)).__dict__) == {"weights"}
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        native = str(Path(tmp) / serving.NETWORK)
        mlflow.sklearn.save_model(estimator, native, pyfunc_predict_fn="predict_proba",
                                  serialization_format="cloudpickle")
        uri = mlflow.pyfunc.log_model(name="model", python_model=old,
                                      artifacts={serving.NETWORK: native},
                                      code_paths=[str(config.PACKAGE_DIR)]).model_uri
    model = mlflow.pyfunc.load_model(uri)
    assert model.unwrap_python_model().temperature == 1.0
    assert model.unwrap_python_model().unsure_threshold == 0.0
    served = serving.probabilities(model.predict(data.as_image(tiny.x_test)))
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
