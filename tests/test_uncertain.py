"""Answers that say when they do not know (issue 44): `study predict` and the served model flag
an image unlike the training data, or a top probability under the model's validation-chosen
threshold, in words, and refuse nothing; both give the same calibrated probabilities for the
same files. A small real model: logistic regression on a few hundred real Fashion-MNIST
images, its temperature and threshold chosen on real validation images, logged as a compare
logs its models into a temporary MLflow store."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from study import (calibration, cli, config, data, evaluation, images, inputs, predict, serving,
                   tracking)


@pytest.fixture(scope="module")
def calibrated(tiny, tmp_path_factory):
    """logreg on the 300 real training images of `tiny`, its temperature and unsure threshold
    fitted on its 150 validation images, logged with them and loaded back via pyfunc."""
    from sklearn.linear_model import LogisticRegression

    estimator = LogisticRegression(C=0.05, max_iter=300).fit(data.as_flat(tiny.x_train),
                                                             tiny.y_train)
    val = estimator.predict_proba(data.as_flat(tiny.x_val))
    test = estimator.predict_proba(data.as_flat(tiny.x_test))
    cal = evaluation.calibrate(val, tiny.y_val, test, tiny.y_test)
    assert cal.temperature != 1.0 and cal.unsure_threshold > 0.3  # something to flag by
    store = tmp_path_factory.mktemp("uncertain-store")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("uncertain-tests")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        native = str(Path(tmp) / tracking.NETWORK)
        mlflow.sklearn.save_model(estimator, native, pyfunc_predict_fn="predict_proba",
                                  serialization_format="cloudpickle")
        uri = serving.log_model({tracking.NETWORK: 1.0}, {tracking.NETWORK: native},
                                **cal.carried()).model_uri
    return {"pyfunc": mlflow.pyfunc.load_model(uri), "uri": uri, "estimator": estimator,
            "calibrated": cal, "store": store}


def _unlike(folder: Path) -> dict[str, Path]:
    """A blank white photo, a uniform grey one and a random-noise one, as PNG files."""
    rng = np.random.default_rng(0)
    images = {"blank": Image.new("RGB", (300, 200), (255, 255, 255)),
              "grey": Image.new("L", (200, 300), 128),
              "noise": Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))}
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name])
    return paths


def _confident_real(fmnist, calibrated, folder: Path, n: int = 20) -> list[Path]:
    """n real test images (the canonical test set, as PNG files) that the model classifies
    at or above its unsure threshold."""
    model, threshold = calibrated["pyfunc"], calibrated["calibrated"].unsure_threshold
    x = fmnist.x_test[:400]
    top = images.probabilities(model.predict(x.astype(np.float32) / 255)).max(axis=1)
    chosen = np.flatnonzero(top >= threshold)[:n]
    assert len(chosen) == n
    paths = []
    for i in chosen:
        paths.append(folder / f"test_{i}.png")
        Image.fromarray(fmnist.x_test[i]).save(paths[-1])
    return paths


def _served(model, paths: list[Path]):
    """The served model's answer for these files, sent as a JSON request carries them."""
    encoded = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]
    return model.predict({serving.IMAGE_INPUT: np.asarray(encoded)})


def test_study_predict_and_the_served_model_agree_on_the_same_files(calibrated, fmnist,
                                                                    tmp_path):
    """The same files: the same calibrated probabilities (the temperature applied to the
    estimator's on the preprocessed pixels), top probability and uncertain reason."""
    paths = _confident_real(fmnist, calibrated, tmp_path)[:8] + list(_unlike(tmp_path).values())
    model, t = calibrated["pyfunc"], calibrated["calibrated"].temperature
    local = predict.classify([str(p) for p in paths], model=model, top=10)
    served = _served(model, paths)
    assert list(served.columns) == [serving.CLASS_OUTPUT, *config.CLASS_NAMES,
                                    serving.TOP_OUTPUT, serving.UNCERTAIN_OUTPUT]
    views = np.stack([small for _, small in predict.prepared([str(p) for p in paths])])
    expected = calibration.apply_temperature(
        calibrated["estimator"].predict_proba(views.reshape(len(views), -1) / np.float32(255)), t)
    for result, row, want in zip(local, served.to_dict("records"), expected):
        mine = dict(result.top)
        assert mine == pytest.approx(dict(zip(config.CLASS_NAMES, want)), abs=1e-5)
        assert all(abs(row[c] - p) < 1e-6 for c, p in mine.items())
        assert row[serving.CLASS_OUTPUT] == result.top[0][0]
        assert row[serving.TOP_OUTPUT] == pytest.approx(result.probability, abs=1e-6)
        assert row[serving.UNCERTAIN_OUTPUT] == result.uncertain
    assert [r.uncertain for r in local[-3:]] == ["blank image", "blank image", "random noise"]


def test_blank_grey_and_noise_are_flagged_and_still_answered(calibrated, tmp_path, capsys):
    """Each gets its top classes and probability, and the reason in words; `study predict`
    prints it; nothing is refused (exit 0)."""
    paths = _unlike(tmp_path)
    results = predict.classify([str(p) for p in paths.values()], model=calibrated["pyfunc"])
    for result, reason in zip(results, ("blank image", "blank image", "random noise")):
        assert result.error is None and len(result.top) == 3 and result.probability > 0
        assert result.uncertain == reason
    text = predict.render(results)
    assert text.count("uncertain: blank image") == 2 and "uncertain: random noise" in text
    as_json = {Path(r["path"]).stem: r for r in json.loads(predict.render(results, True))}
    assert as_json["noise"]["uncertain"] == "random noise"
    assert as_json["grey"]["top_probability"] == pytest.approx(results[1].probability, abs=1e-6)

    code = cli.main(["predict", *map(str, paths.values()), "--model-uri", calibrated["uri"]])
    out = capsys.readouterr().out
    assert code == 0
    lines = {Path(line.split()[0]).stem: line for line in out.splitlines()[1:]}
    assert lines["blank"].endswith("uncertain: blank image")
    assert lines["grey"].endswith("uncertain: blank image")
    assert lines["noise"].endswith("uncertain: random noise")


def test_confident_real_test_images_are_not_flagged(calibrated, fmnist, tmp_path):
    """20 real test images saved as files, classified at or above the model's threshold: no
    flag; a real image under it is flagged with both figures, and answered all the same."""
    paths = _confident_real(fmnist, calibrated, tmp_path)
    results = predict.classify([str(p) for p in paths], model=calibrated["pyfunc"])
    assert [r.uncertain for r in results] == [None] * 20
    assert "uncertain" not in predict.render(results)
    assert list(_served(calibrated["pyfunc"], paths)[serving.UNCERTAIN_OUTPUT]) == [None] * 20

    threshold = calibrated["calibrated"].unsure_threshold
    x = fmnist.x_test[:400]
    top = images.probabilities(calibrated["pyfunc"].predict(x / np.float32(255))).max(axis=1)
    low = int(np.flatnonzero(top < threshold)[0])
    Image.fromarray(x[low]).save(tmp_path / "unsure.png")
    (result,) = predict.classify([str(tmp_path / "unsure.png")], model=calibrated["pyfunc"])
    assert result.error is None and result.top
    assert result.uncertain == (f"top probability {result.probability:.2f} below the model's "
                                f"{threshold:.2f}")


def test_the_reason_comes_first_from_the_image_then_from_the_threshold():
    rng = np.random.default_rng(2)
    blank, noise = np.zeros((28, 28), np.uint8), rng.integers(0, 256, (28, 28), np.uint8)
    shirt = np.zeros((28, 28), np.uint8)
    shirt[4:24, 6:22] = np.linspace(60, 250, 16, dtype=np.uint8)[None, :]
    assert inputs.unlike_training(shirt) is None
    assert inputs.uncertain(blank, 0.99, 0.5) == "blank image"
    assert inputs.uncertain(noise, 0.2, 0.5) == "random noise"
    assert inputs.uncertain(shirt, 0.41, 0.55) == "top probability 0.41 below the model's 0.55"
    assert inputs.uncertain(shirt, 0.55, 0.55) is None  # at the threshold: sure
    assert inputs.uncertain(shirt, 0.9, 0.5, foreground=False) == \
        "no foreground found after preprocessing"
    # a batch, as the served model gets it: pixels in [0, 1] read as the 0-255 image they were
    proba = np.full((3, 10), 0.05)
    proba[:, 0] = [0.55, 0.9, 0.3]
    batch = np.stack([shirt, shirt, blank]) / np.float32(255)
    assert inputs.uncertain_all(batch, proba, 0.6) == [
        "top probability 0.55 below the model's 0.60", None, "blank image"]


def test_a_batch_is_flagged_as_its_images_one_by_one(fmnist):
    """The served model flags a whole request at once: the same reasons as one image at a
    time, each image's object box its own (real test images, noise, blank and faint ones)."""
    rng = np.random.default_rng(4)
    faint = np.zeros((20, 28, 28), np.uint8)
    faint[:, 4:24, 4:24] = 60 + rng.integers(0, 8, (20, 20, 20))
    batch = np.concatenate([fmnist.x_test[:300], rng.integers(0, 256, (20, 28, 28), np.uint8),
                            np.zeros((3, 28, 28), np.uint8), faint])
    rng.shuffle(batch)
    found = rng.random(len(batch)) < 0.9
    together = inputs.unlike_training_all(batch, found)
    assert together == [inputs.unlike_training(x, bool(f)) for x, f in zip(batch, found)]
    assert {"blank image", "random noise", "nearly uniform image",
            "no foreground found after preprocessing", None} == set(together)
