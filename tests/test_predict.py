"""Classifying real image files: preprocessing round trips, bad files, the CLI on the champion."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from study import config, data, images, predict, serving, tracking


def _log_served(estimator, x: np.ndarray):
    """An estimator logged the way a compare logs its final models (a serving.Classifier
    around the native sklearn model) into the active run; its model URI."""
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        native = str(Path(tmp) / tracking.NETWORK)
        mlflow.sklearn.save_model(estimator, native, pyfunc_predict_fn="predict_proba",
                                  signature=infer_signature(x[:5], estimator.predict_proba(x[:5])))
        return serving.log_model({tracking.NETWORK: 1.0}, {tracking.NETWORK: native}).model_uri


@pytest.fixture(scope="module")
def model(fmnist, tmp_path_factory):
    """A real logistic regression on 6,000 real images, logged as a compare logs its models
    and loaded back via pyfunc."""
    from sklearn.linear_model import LogisticRegression

    rows = data.stratified_subsample(np.arange(60000), fmnist.y_train, 6000)
    x = data.as_flat(fmnist.x_train[rows])
    clf = LogisticRegression(C=0.1, max_iter=300).fit(x, fmnist.y_train[rows])
    store = tmp_path_factory.mktemp("predict-store")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("predict-tests")  # not a stale experiment id from an earlier test
    with mlflow.start_run():
        uri = _log_served(clf, x)
    return {"pyfunc": mlflow.pyfunc.load_model(uri), "uri": uri, "store": store,
            "estimator": clf}


@pytest.fixture(scope="module")
def ensemble_model(model, fmnist):
    """The study's ensemble over two real logged models: the logistic regression above
    (weight 0.7) and a k-NN (0.3), logged into the same store."""
    from sklearn.neighbors import KNeighborsClassifier

    rows = data.stratified_subsample(np.arange(60000), fmnist.y_train, 3000, seed=7)
    x = data.as_flat(fmnist.x_train[rows])
    knn = KNeighborsClassifier(5).fit(x, fmnist.y_train[rows])
    mlflow.set_tracking_uri(f"sqlite:///{model['store'] / 'mlflow.db'}")
    mlflow.set_experiment("predict-tests")
    with mlflow.start_run():
        knn_uri = _log_served(knn, x)
    with mlflow.start_run():
        info = tracking.log_ensemble_model({"logreg": 0.7, "knn": 0.3},
                                        {"logreg": model["uri"], "knn": knn_uri},
                                        log_classifier=serving.log_model)
    return {"pyfunc": mlflow.pyfunc.load_model(info.model_uri), "uri": info.model_uri,
            "store": model["store"], "members": {"logreg": model["estimator"], "knn": knn},
            "weights": {"logreg": 0.7, "knn": 0.3}}


def test_ensemble_classifies_files_with_the_weighted_mean_of_its_members(ensemble_model,
                                                                          fmnist, tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(255 - fmnist.x_test[i]).save(paths[-1])
    results = predict.classify([str(p) for p in paths], model=ensemble_model["pyfunc"], top=10)
    views = np.stack([small for _, small in predict.prepared([str(p) for p in paths])])
    flat = views.reshape(4, -1).astype(np.float32) / 255
    expected = sum(w * ensemble_model["members"][n].predict_proba(flat)
                   for n, w in ensemble_model["weights"].items())
    for result, proba in zip(results, expected):
        got = dict(result.top)
        assert all(abs(got[c] - proba[i]) < 1e-5 for i, c in enumerate(config.CLASS_NAMES))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_the_served_model_takes_image_files_and_pixels_alike(model, fmnist, tmp_path):
    """Encoded files (base64 in JSON, a DataFrame column, raw bytes) get `study predict`'s
    preprocessing; pixels in any of the three layouts give the same answer."""
    paths = []
    for i in range(4):
        paths.append(tmp_path / (f"{i}.png" if i % 2 else f"{i}.jpg"))
        photo(fmnist.x_test[i], 90 + 30 * i, (0.2, 0.5, 0.9)).save(paths[-1])
    local = predict.classify([str(p) for p in paths], model=model["pyfunc"], top=10)
    served = model["pyfunc"]
    answers = [served.predict({images.IMAGE_INPUT: np.asarray([_b64(p) for p in paths])}),
               served.predict(pd.DataFrame({images.IMAGE_INPUT: [_b64(p) for p in paths]})),
               served.predict([p.read_bytes() for p in paths])]
    for answer in answers:
        assert list(answer.columns) == [serving.CLASS_OUTPUT, *config.CLASS_NAMES,
                                        serving.TOP_OUTPUT, serving.UNCERTAIN_OUTPUT]
        for row, result in zip(answer.to_dict("records"), local):
            assert row[serving.CLASS_OUTPUT] == result.top[0][0]
            assert row[serving.UNCERTAIN_OUTPUT] == result.uncertain
            assert all(abs(row[c] - p) < 1e-6 for c, p in result.top)
    x = fmnist.x_test[:5].astype(np.float32) / 255
    layouts = [images.probabilities(served.predict(v))
               for v in (x, x[..., None], x.reshape(5, -1), pd.DataFrame(x.reshape(5, -1)))]
    assert all(np.array_equal(layouts[0], other) for other in layouts[1:])
    assert np.allclose(layouts[0], model["estimator"].predict_proba(x.reshape(5, -1)), atol=1e-6)


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_rows():
    import threading
    import time

    calls = []

    def slow_double(x):
        calls.append(len(x))
        time.sleep(0.05)  # while the first batch runs, the other requests queue up
        if (x < 0).any():
            raise ValueError("negative rows")
        return x * 2

    batcher = serving.Batcher(slow_double)
    inputs = [np.full((i + 1, 3), float(i)) for i in range(8)]
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: batcher(inputs[i])}))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(results[i], inputs[i] * 2) for i in range(8))
    assert sum(calls) == sum(range(1, 9)) and len(calls) < 8  # merged, nothing lost
    with pytest.raises(ValueError, match="negative rows"):  # a failed batch: its callers hear it
        batcher(np.full((1, 3), -1.0))
    assert np.array_equal(batcher(np.ones((1, 3))), np.full((1, 3), 2.0))  # and it goes on


def _bad_requests(png: bytes) -> dict[str, tuple[object, str]]:
    """What a client gets wrong, in-process, and a phrase its error must contain."""
    good = np.full((2, 28, 28, 1), 0.5, dtype=np.float32)
    nan = good.copy()
    nan[1, 3, 4, 0] = np.nan
    encoded = lambda *items: {images.IMAGE_INPUT: np.asarray(items, dtype=object)}  # noqa: E731
    return {
        "empty batch": (np.zeros((0, 28, 28, 1)), "empty request"),
        "empty image list": ({images.IMAGE_INPUT: np.asarray([], dtype=object)}, "empty"),
        "wrong shape": (np.zeros((2, 27, 28)), "expected (n, 28, 28, 1)"),
        "NaN": (nan, "image 1: pixels must be finite"),
        "0-255 pixels": (good * 255, "divide 0-255 pixels by 255"),
        "ragged rows": ([[0.1, 0.2], [0.3]], "rectangular array of numbers"),
        "unknown input": ({"photo": np.asarray(["x"])}, "unknown input ['photo']"),
        "not base64": (encoded("abc!!!"), "image 0: not base64"),
        "not an image": (encoded(base64.b64encode(b"hello").decode()), "image 0: not an image"),
        "truncated": (encoded(base64.b64encode(png[:len(png) // 2]).decode()), "truncated"),
        "decompression bomb": (encoded(base64.b64encode(_bomb_bytes(50_000, 50_000)).decode()),
                               "decompression bomb"),
        "too many images": (np.zeros((serving.MAX_IMAGES + 1, 784)), "the limit is"),
        "decoded pixels over the request limit": (
            encoded(*[base64.b64encode(_hostile().blank_png(6324, 6324)).decode()] * 2),
            "images 0-1 decode to over 64,000,000 pixels"),
        "1 x 40,000,000": (encoded(base64.b64encode(_hostile().blank_png(1, 40_000_000)).decode()),
                           "narrower than 1:50"),
        "a format outside the list": ([_png_in(Image.new("RGB", (30, 30)), "PPM")],
                                      "accepted format"),
        "odd structure": ({images.IMAGE_INPUT: [["abc"], 3]}, "image 0: expected base64 text"),
        "image over the size limit": ([png + b"\0" * (serving.MAX_IMAGE_BYTES + 1)],
                                      "the limit is"),
    }


def _png_in(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _hostile():
    return _benchmark("serve_hostile")


def test_decoding_work_is_bounded_by_pixels_and_odd_modes_decode_right(fmnist):
    """A blank 40-megapixel PNG (39 kB) and a JPEG of the same size are decoded and
    preprocessed in well under a CPU second (full-size work took 1.6 s and ~500 MB); a 16-bit
    image gives its 8-bit version's view (not all white); a photo under 1,024 pixels a side
    is preprocessed exactly as before the reduction step existed."""
    import time

    huge = Image.fromarray(255 - fmnist.x_test[0]).resize((6000, 6000))
    for raw in (_hostile().blank_png(6324, 6324), _png_in(huge, "JPEG", quality=90)):
        started = time.process_time()
        small = images.preprocess(images.decode(raw))
        assert time.process_time() - started < 0.6 and small.shape == (28, 28)
    eight = Image.fromarray(255 - fmnist.x_test[3]).resize((90, 90))
    sixteen = Image.fromarray(np.asarray(eight, dtype=np.uint16) * 257)  # mode I;16
    assert np.array_equal(images.preprocess(images.decode(_png_in(sixteen))),
                          images.preprocess(eight))
    photo_ = photo(fmnist.x_test[5], 600, (0.2, 0.5, 0.9))
    assert np.array_equal(images.preprocess(images.decode(_png_in(photo_))),
                          images.preprocess(photo_))


def test_bad_requests_are_refused_in_one_line_with_http_400(model, fmnist, tmp_path):
    from mlflow.exceptions import MlflowException

    path = tmp_path / "good.png"
    _good_png(path, fmnist)
    for name, (request, phrase) in _bad_requests(path.read_bytes()).items():
        with pytest.raises(MlflowException) as err:
            model["pyfunc"].predict(request)
        assert isinstance(err.value, serving.RequestError), name
        assert err.value.get_http_status_code() == 400, name
        assert phrase in err.value.message and "\n" not in err.value.message, \
            (name, err.value.message)
        err.value.message = "Failed to predict data '...'. Error: " + err.value.message
        assert phrase in err.value.message and not err.value.message.startswith("Failed")
    assert len(model["pyfunc"].predict(str(_b64(path)))) == 1  # and it still answers


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
    original = images.probabilities(model["pyfunc"].predict(data.as_flat(originals))).argmax(1)
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
    out = images.preprocess(Image.fromarray(image))
    assert out.shape == (28, 28)
    assert out[:, 14].max() == 255 and out[14, 0] == 0  # object light, centred; sides black
    assert (out > 128).any(axis=1).sum() >= 27  # the long edge spans the frame, like the dataset
    transparent = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    transparent.paste((30, 30, 30, 255), (20, 10, 60, 70))
    assert images.preprocess(transparent)[14, 14] == 255  # transparency counts as background


def _bomb_png(path: Path, width: int, height: int) -> None:
    path.write_bytes(_bomb_bytes(width, height))


def _bomb_bytes(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: the serving benchmark's."""
    return _serve_load().bomb_png(width, height)


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


def _post(url: str, body: bytes) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/invocations", body,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _post_body(paths: list[Path]) -> bytes:
    return json.dumps({"inputs": {images.IMAGE_INPUT: [_b64(p) for p in paths]}}).encode()


def _curl_photo(url: str, path: Path) -> tuple[int, str]:
    """README's curl command for one photo (urllib with the same body where curl is missing)."""
    import shutil

    if not shutil.which("curl"):
        return _post(url, _post_body([path]))
    command = ("(printf '{\"inputs\": {\"image\": [\"'; base64 -w0 \"$PHOTO\"; printf '\"]}}') | "
               "curl -s -w '\\n%{http_code}' -H 'Content-Type: application/json' "
               f"--data-binary @- {url}/invocations")
    out = subprocess.run(["bash", "-c", command], env={**os.environ, "PHOTO": str(path)},
                         capture_output=True, text=True, timeout=60).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def _hostile_battery(url: str, server_pid: int, valid: bytes) -> None:
    """Each request of benchmarks/serve_hostile.py (small bodies that cost a server minutes
    or gigabytes before the limits in decoded pixels) gets a 4xx with a one-line message,
    bounded server work (generous bounds: the issue's are 1 CPU s and 200 MB, and the
    machine is shared), and the next valid request a 200."""
    hostile = _benchmark("serve_hostile")
    requests = hostile.hostile()
    rows = hostile.run(url, server_pid, valid, requests)
    for name, row in rows.items():
        assert 400 <= row["status"] < 500 and row["next"] == 200, (name, row)
        assert row["cpu s"] < 2.5 and row["rss MB"] < 300, (name, row)
    for name in ("300 blank 6,324^2 PNGs", "50,000-char string + 1,999 empty",
                 "JSON 100,000 deep", "ICO around a 40 MP PNG"):
        status, body = _post(url, requests[name])
        message = json.loads(body)["message"]
        assert status == 400 and message and "\n" not in message and "Traceback" not in body, \
            (name, body[:300])


def _serve_load():
    """benchmarks/serve_load.py, whose list of malformed requests the serving test sends."""
    return _benchmark("serve_load")


def _benchmark(name: str):
    import importlib.util

    folder = str(config.PROJECT_ROOT / "benchmarks")
    if folder not in sys.path:  # serve_hostile imports serve_load
        sys.path.insert(0, folder)
    path = config.PROJECT_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("champion", ["single", "ensemble"])
def test_served_champion_answers_http(tmp_path, model, fmnist, champion, request):
    """`mlflow models serve` on loopback, with a single model or the ensemble as the champion:
    photos (PNG, JPEG) sent as files get study predict's answer; every malformed request of
    the serving benchmark a 4xx, and the server keeps answering."""
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
        for i in range(4):  # real test images as product photos, PNG and JPEG
            photos.append(tmp_path / (f"p{i}.png" if i % 2 else f"p{i}.jpg"))
            photo(fmnist.x_test[i], 100 + 40 * i, (0.2, 0.5, 0.9)).save(photos[-1])
        # study predict on the same files, with the same model (the CLI's own test is above)
        served = request.getfixturevalue("ensemble_model" if uri else "model")["pyfunc"]
        blank = tmp_path / "blank.png"  # flagged, and answered all the same
        Image.new("RGB", (120, 160), (255, 255, 255)).save(blank)
        photos.append(blank)
        local = [{"top": [{"class": c, "probability": p} for c, p in r.top],
                  "uncertain": r.uncertain}
                 for r in predict.classify(list(map(str, photos)), model=served, top=10)]
        assert local[-1]["uncertain"] == "blank image"
        made = subprocess.run([sys.executable, "-m", "study", "predict", *map(str, photos),
                               "--print-request"], env=env, capture_output=True, text=True,
                              timeout=300)  # the README's way to build a request
        assert made.returncode == 0, made.stderr[-2000:]
        assert len(made.stdout) < 4 * sum(p.stat().st_size for p in photos)  # the files, base64
        answer = json.loads(_post(url, made.stdout.encode())[1])["predictions"]
        # README's curl, one photo at a time: the same class as study predict on that file
        for path, mine in zip(photos, local):
            status, body = _curl_photo(url, path)
            assert status == 200, body
            (row,) = json.loads(body)["predictions"]
            assert row["class"] == mine["top"][0]["class"]
            for got in (row, answer[photos.index(path)]):
                assert all(abs(got[t["class"]] - t["probability"]) < 1e-5 for t in mine["top"])
                assert abs(got["top_probability"] - mine["top"][0]["probability"]) < 1e-5
                assert got["uncertain"] == mine["uncertain"]  # null when sure
        # each malformed request of the serving benchmark gets a 4xx with a one-line message,
        # and the server answers the next valid request
        pixels = json.dumps({"inputs": np.round(fmnist.x_test[:1, :, :, None] / 255, 4).tolist()})
        bad = _serve_load().malformed(pixels.encode(), photos[1].read_bytes())
        for name, payload in bad.items():
            status, body = _post(url, payload)
            assert 400 <= status < 500, (name, status, body[:300])
            message = json.loads(body).get("message", "")
            assert message and (name == "not JSON" or "\n" not in message), (name, message)
            assert _post(url, _post_body(photos[:1]))[0] == 200, f"no answer after {name}"
        if champion == "single":  # the hostile battery once: the same code serves both
            _hostile_battery(url, server.pid, _post_body(photos[:1]))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
