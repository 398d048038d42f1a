"""Classifying real image files: preprocessing round trips, bad files, the CLI on the champion."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from study import config, data, predict


@pytest.fixture(scope="module")
def model(fmnist, tmp_path_factory):
    """A real logistic regression on 6,000 real images, logged and loaded back via pyfunc."""
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    rows = data.stratified_subsample(np.arange(60000), fmnist.y_train, 6000)
    x = data.as_flat(fmnist.x_train[rows])
    clf = LogisticRegression(C=0.1, max_iter=300).fit(x, fmnist.y_train[rows])
    store = tmp_path_factory.mktemp("predict-store")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("predict-tests")  # not a stale experiment id from an earlier test
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(clf, name="model", pyfunc_predict_fn="predict_proba",
                                        signature=infer_signature(x[:5], clf.predict_proba(x[:5])))
    return {"pyfunc": mlflow.pyfunc.load_model(info.model_uri), "uri": info.model_uri,
            "store": store, "info": info}


@pytest.fixture(scope="module")
def ensemble_model(model, fmnist):
    """The study's ensemble pyfunc over two real logged models: the logistic regression above
    (weight 0.7) and a k-NN (0.3), logged into the same store."""
    from mlflow.models import infer_signature
    from sklearn.neighbors import KNeighborsClassifier

    from study import ensemble_stage

    rows = data.stratified_subsample(np.arange(60000), fmnist.y_train, 3000, seed=7)
    x = data.as_flat(fmnist.x_train[rows])
    knn = KNeighborsClassifier(5).fit(x, fmnist.y_train[rows])
    mlflow.set_tracking_uri(f"sqlite:///{model['store'] / 'mlflow.db'}")
    mlflow.set_experiment("predict-tests")
    with mlflow.start_run():
        knn_uri = mlflow.sklearn.log_model(
            knn, name="model", pyfunc_predict_fn="predict_proba",
            signature=infer_signature(x[:5], knn.predict_proba(x[:5]))).model_uri
    with mlflow.start_run():
        info = ensemble_stage.log_model({"logreg": 0.7, "knn": 0.3},
                                        {"logreg": model["uri"], "knn": knn_uri}, False)
    members = {"logreg": model["pyfunc"], "knn": mlflow.pyfunc.load_model(knn_uri)}
    return {"pyfunc": mlflow.pyfunc.load_model(info.model_uri), "uri": info.model_uri,
            "store": model["store"], "members": members, "weights": {"logreg": 0.7, "knn": 0.3}}


def test_ensemble_classifies_files_with_the_weighted_mean_of_its_members(ensemble_model,
                                                                          fmnist, tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(255 - fmnist.x_test[i]).save(paths[-1])
    results = predict.classify([str(p) for p in paths], model=ensemble_model["pyfunc"], top=10)
    views = np.stack([small for _, small in predict.prepared([str(p) for p in paths])])
    flat = views.reshape(4, -1).astype(np.float32) / 255
    expected = sum(w * np.asarray(ensemble_model["members"][n].predict(flat))
                   for n, w in ensemble_model["weights"].items())
    for result, proba in zip(results, expected):
        got = dict(result.top)
        assert all(abs(got[c] - proba[i]) < 1e-5 for i, c in enumerate(config.CLASS_NAMES))


def photo(image28: np.ndarray, size: int, colour: tuple[float, float, float],
          margin: float = 0.15) -> Image.Image:
    """A 'product photo' of a test image: dark coloured object on white, `size` pixels wide,
    with a white margin around it."""
    big = Image.fromarray(image28).resize((size, size), Image.Resampling.BICUBIC)
    pad = int(size * margin)
    canvas = Image.new("L", (size + 2 * pad, size + 2 * pad), 0)
    canvas.paste(big, (pad, pad))
    x = np.asarray(canvas, dtype=np.float32)[..., None] / 255.0
    rgb = 255.0 * (1.0 - x * (1.0 - np.asarray(colour)))  # white background, tinted object
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def test_real_photos_get_the_prediction_of_their_28x28_original(model, fmnist, tmp_path):
    rows = data.stratified_subsample(np.arange(10000), fmnist.y_test, 100)
    originals = fmnist.x_test[rows]
    paths = []
    sizes, colours = (56, 84, 120, 200, 333), ((0.1, 0.4, 0.8), (0.8, 0.2, 0.1), (0.3, 0.7, 0.2))
    for i, image in enumerate(originals):
        img = photo(image, sizes[i % len(sizes)], colours[i % len(colours)])
        path = tmp_path / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg")
        img.save(path, **({} if i % 2 else {"quality": 92}))
        paths.append(str(path))
    results = predict.classify(paths, model=model["pyfunc"], top=3,
                               save_preprocessed=str(tmp_path / "seen"))
    assert all(r.error is None and len(r.top) == 3 for r in results)
    original = np.asarray(model["pyfunc"].predict(data.as_flat(originals))).argmax(axis=1)
    photos = [config.CLASS_NAMES.index(r.top[0][0]) for r in results]
    agree = int(np.sum(np.asarray(photos) == original))
    assert agree >= 95, f"{agree}/100 photos classified like their originals"
    seen = np.asarray(Image.open(results[1].preprocessed))
    border = np.concatenate([seen[0], seen[-1], seen[:, 0], seen[:, -1]])
    assert seen.shape == (28, 28) and seen.max() == 255 and np.median(border) < 30  # dark ground
    # the preprocessed view is close to the original pixels (mean absolute difference)
    assert np.abs(seen.astype(float) - originals[1]).mean() < 20


def test_light_background_is_inverted_and_object_cropped():
    image = np.full((300, 200), 250, dtype=np.uint8)  # white photo, tall dark object off-centre
    image[40:240, 120:170] = 20
    out = predict.preprocess(Image.fromarray(image))
    assert out.shape == (28, 28)
    assert out[:, 14].max() == 255 and out[14, 0] == 0  # object light, centred; sides black
    assert (out > 128).any(axis=1).sum() >= 27  # the long edge spans the frame, like the dataset
    transparent = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    transparent.paste((30, 30, 30, 255), (20, 10, 60, 70))
    assert predict.preprocess(transparent)[14, 14] == 255  # transparency counts as background


def _bomb_png(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height pixels (checksums valid)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


def _good_png(path: Path, fmnist) -> None:
    Image.fromarray(255 - fmnist.x_test[0]).resize((90, 90)).save(path)


def _one_error(path: Path, model) -> str:
    (result,) = predict.classify([str(path)], model=model["pyfunc"])
    assert result.error and not result.top
    return result.error


def test_a_text_file_is_not_an_image(tmp_path, model):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    assert "not an image" in _one_error(path, model)


def test_an_empty_file(tmp_path, model):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _one_error(path, model) == "empty file"


def test_a_truncated_image(tmp_path, model, fmnist):
    good = tmp_path / "good.png"
    _good_png(good, fmnist)
    path = tmp_path / "cut.png"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated" in _one_error(path, model)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, model):
    path = tmp_path / "bomb.png"
    _bomb_png(path, 50_000, 50_000)  # 2.5 gigapixels claimed by a 100-byte file
    assert path.stat().st_size < 200
    assert "decompression bomb" in _one_error(path, model)


def test_an_unreadable_path(tmp_path, model):
    assert _one_error(tmp_path / "missing.png", model) == "no such file"


def _registered_champion(model, uri: str | None = None) -> dict[str, str]:
    mlflow.set_tracking_uri(f"sqlite:///{model['store'] / 'mlflow.db'}")
    mlflow.set_experiment("predict-tests")
    client = mlflow.MlflowClient()
    version = mlflow.register_model(uri or model["uri"], config.REGISTERED_MODEL).version
    client.set_registered_model_alias(config.REGISTERED_MODEL, config.CHAMPION_ALIAS, version)
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{model['store'] / 'mlflow.db'}",
            # `mlflow models serve` starts uvicorn by name: the venv's bin must be on PATH
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_cli_directory_with_bad_files_classifies_the_good_ones(tmp_path, model, fmnist):
    env = _registered_champion(model)
    folder = tmp_path / "photos"
    folder.mkdir()
    _good_png(folder / "a_good.png", fmnist)
    Image.fromarray(255 - fmnist.x_test[1]).convert("RGB").save(folder / "b_good.jpg")
    (folder / "c_bad.png").write_text("nope")
    (folder / "d_empty.png").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "study", "predict", str(folder), "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # finished, but not everything was an image
    out = {Path(r["path"]).name: r for r in json.loads(proc.stdout)}
    assert sorted(out) == ["a_good.png", "b_good.jpg", "c_bad.png", "d_empty.png"]
    for name in ("a_good.png", "b_good.jpg"):
        top = out[name]["top"]
        assert len(top) == 3 and out[name]["error"] is None
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
        assert top[0]["class"] in config.CLASS_NAMES
    assert "not an image" in out["c_bad.png"]["error"] and out["d_empty.png"]["error"] == "empty file"
    assert "error: " in proc.stderr and "c_bad.png" in proc.stderr
    # a glob, as a table
    proc = subprocess.run([sys.executable, "-m", "study", "predict", str(folder / "*good*")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.count("\n") >= 2 and "ERROR" not in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("champion", ["single", "ensemble"])
def test_served_champion_answers_http(tmp_path, model, fmnist, champion, request):
    """`mlflow models serve` on loopback: probabilities for a good request, 4xx for a bad one,
    with a single model or the ensemble as the champion."""
    import socket
    import time
    import urllib.error
    import urllib.request

    uri = request.getfixturevalue("ensemble_model")["uri"] if champion == "ensemble" else None
    env = _registered_champion(model, uri)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [mlflow_bin, "models", "serve", "-m",
         f"models:/{config.REGISTERED_MODEL}@{config.CHAMPION_ALIAS}", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        photos = []
        for i in range(3):
            photos.append(tmp_path / f"p{i}.png")
            photo(fmnist.x_test[i], 100, (0.2, 0.5, 0.9)).save(photos[-1])
        made = subprocess.run([sys.executable, "-m", "study", "predict", *map(str, photos),
                               "--print-request"], env=env, capture_output=True, text=True,
                              timeout=300)  # the README's way to build a request
        assert made.returncode == 0, made.stderr[-2000:]
        body = made.stdout.encode()
        req = urllib.request.Request(f"{url}/invocations", body,
                                     {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
        proba = np.asarray(answer["predictions"])
        assert proba.shape == (3, 10) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
        if champion == "ensemble":  # the served answer is the ensemble's weighted mean
            inputs = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
            local = request.getfixturevalue("ensemble_model")["pyfunc"].predict(inputs)
            assert np.allclose(proba, local, atol=1e-5)
        bad = urllib.request.Request(f"{url}/invocations", b'{"inputs": [[1, 2, 3]]}',
                                     {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=30)
        assert 400 <= err.value.code < 500
        message = json.loads(err.value.read())
        assert message.get("message")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
