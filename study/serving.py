"""The MLflow model that every final run logs and the registry serves: image files or pixels
in, class probabilities and the top class name out.

A request carries either encoded image files (PNG, JPEG, WebP, ...; base64 text in JSON) under
the input name `image`, or pixels in [0, 1] as (n, 28, 28, 1), (n, 28, 28) or (n, 784)
tensors. Images get `study predict`'s preprocessing (study.images: one implementation). The
model holds one or more members (a single network or estimator, or an ensemble's weighted
members), each a native MLflow model (keras or sklearn flavor) stored as an artifact of this
one, and calls them directly on the whole batch: the Keras networks through one traced
tf.function, estimators through predict_proba; no per-call dataset, progress bar or schema
work. A bad request raises RequestError, which MLflow's scoring server answers with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import os
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from study import calibration, config, images, inputs
from study.config import CLASS_NAMES
from study.images import IMAGE_INPUT
from study.tracking import native_model_path, pinned

CLASS_OUTPUT = "class"  # the output column with the top class name; one column per class follows
TOP_OUTPUT = "top_probability"  # after the class columns: the top class's probability
# and why the answer is uncertain, in words (None when it is not): study.inputs.uncertain
UNCERTAIN_OUTPUT = "uncertain"
MAX_IMAGES = 1024  # per request: a bigger batch is refused, not queued for minutes
MAX_IMAGE_BYTES = 10 * 2**20  # per encoded image
MAX_REQUEST_BYTES = 64 * 2**20  # encoded images of one request, together
# Decoded pixels of one request, together, read from the headers before decoding (a drafted
# JPEG counts at its reduced scale): about 0.5 s of decoding for blank RGB PNGs here.
MAX_REQUEST_PIXELS = 64_000_000
# A JSON body past these is refused before it is parsed (see `_guard_json_parsing`): the
# largest request the limits above allow is 64 MB of images as base64, or 1,024 images of
# 784 numbers each.
MAX_BODY_BYTES = MAX_REQUEST_BYTES * 4 // 3 + 2**20
MAX_JSON_ITEMS = 2 * MAX_IMAGES * 784
ALONE_ROWS = 32  # requests of this many images are a batch of their own, not merged
RANGE_TOLERANCE = 1e-3  # pixels a little outside [0, 1] from rounding in a client's JSON
INPUTS_DOC = (f"'{IMAGE_INPUT}': encoded image files (PNG, JPEG, WebP, GIF, BMP, TIFF; base64 "
              "text in JSON), preprocessed as `study predict` does; or pixels in [0, 1] shaped "
              f"(n, 28, 28, 1), (n, 28, 28) or (n, 784). At most {MAX_IMAGES} images and "
              f"{MAX_REQUEST_PIXELS // 10**6} decoded megapixels per request.")


class RequestError(MlflowException):
    """A request the model cannot answer, with the reason in one line (HTTP 400). The scoring
    server prefixes an MlflowException's message with the whole request (a megabyte of base64
    for one bad image); this message ignores that rewrite and stays one line."""

    def __init__(self, message: str):
        self._line = message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, _value: str) -> None:
        pass


class Classifier(mlflow.pyfunc.PythonModel):
    """The weighted mean of its members' class probabilities (one member: that model), scaled
    by its temperature (fitted on validation when it was logged), for images or pixels, as a
    DataFrame: `class` (the top class name), one probability column per class, in
    CLASS_NAMES order, `top_probability` and `uncertain`: why the answer is not to be taken
    at its word (the input unlike the training data, or the top probability under the
    model's unsure threshold), None when it is. Nothing is refused for being uncertain."""

    # Its inputs (image bytes or tensors of three layouts) cannot be written as type hints.
    _skip_type_hint_validation = True
    # Models pickled before calibration have neither attribute: they load with these.
    temperature = 1.0
    unsure_threshold = 0.0

    def __init__(self, weights: dict[str, float], temperature: float = 1.0,
                 unsure_threshold: float = 0.0):
        self.weights = dict(weights)  # artifact key -> weight
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.unsure_threshold = float(unsure_threshold)

    def load_context(self, context):
        self.members = members_function({key: context.artifacts[key] for key in self.weights},
                                        self.weights)
        self.merged = Batcher(self.members)
        self.members(np.zeros((1, 28, 28), dtype=np.float32))  # trace the graph now
        _guard_json_parsing()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Small requests wait to be merged; a batch of its own runs at once, on the caller's
        thread, beside the others (measured, 8 clients sending 64 images each to one server
        process: 715 images/s merged, 856 side by side)."""
        proba = self.members(x) if len(x) >= ALONE_ROWS else self.merged(x)
        if self.temperature == 1.0:
            return proba
        return calibration.apply_temperature(proba, self.temperature)

    def predict(self, context, model_input, params=None):
        try:
            x, found = request_images(model_input)
        except RequestError:
            raise
        except Exception as exc:  # an odd structure numpy chokes on: a 400, not a traceback
            raise RequestError(f"unreadable request ({type(exc).__name__}); send encoded images "
                               f"under '{IMAGE_INPUT}' or a pixel tensor") from None
        proba = self.predict_proba(x)
        return frame(proba, inputs.uncertain_all(x, proba, self.unsure_threshold, found))


def _guard_json_parsing() -> None:
    """In `mlflow models serve`'s process, parse a JSON body under the study's limits before
    MLflow does. MLflow parses the body before the model runs, and with a signature that
    declares no inputs it turns `inputs` into one numpy array: one 50,000-character string
    among 2,000 empty ones (a 60 kB body) became a 400 MB array; JSON nested deeper than
    Python's recursion limit escaped as a 500; 64 MB of numbers took 12 s. MLflow has no
    setting for any of this, and a type-hinted predict (which gets `inputs` raw) makes the
    server refuse dataframe_split/records bodies, a documented input form. So this wraps
    the server's one JSON entry point, `_parse_json_data` (MLflow 3.x): a body too large or
    holding too many items, or nested too deep, is a 400; `{"inputs": ...}` (or `instances`)
    reaches the model as parsed (lists and dicts, checked by `pixels`); any other body goes to
    MLflow's own parsing as before. Where that entry point is missing (another MLflow), the server
    parses as MLflow does and the model's own limits still hold."""
    import json
    import logging
    import sys

    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    original = getattr(server, "_parse_json_data", None)
    parsed_input = getattr(server, "ParsedJsonInput", None)
    if original is None or parsed_input is None or getattr(original, "_study_guard", False):
        if server is not None and original is None:
            logging.getLogger(__name__).warning(
                "MLflow's scoring server has no _parse_json_data: JSON bodies are parsed "
                "without the study's limits")
        return

    def parse(data, metadata, input_schema):
        if isinstance(data, (bytes, str)):
            if len(data) > MAX_BODY_BYTES:
                raise RequestError(f"a body of {len(data) / 2**20:.0f} MB; the limit is "
                                   f"{MAX_BODY_BYTES // 2**20} MB: send fewer images")
            items = data.count(b"," if isinstance(data, bytes) else ",")
            if items > MAX_JSON_ITEMS:
                raise RequestError(f"over {MAX_JSON_ITEMS:,} JSON items in one body (the limit):"
                                   " send fewer images, or encoded images instead of pixels")
            try:
                data = json.loads(data)
            except RecursionError:
                raise RequestError("JSON nested too deeply: send encoded images under "
                                   f"'{IMAGE_INPUT}' or a pixel tensor (at most 4 levels)"
                                   ) from None
            except ValueError:  # not JSON or not UTF-8: MLflow's own 400 says so
                return original(data, metadata, input_schema)
        keys = set(data) - {"params"} if isinstance(data, dict) else set()
        if keys in ({"inputs"}, {"instances"}):
            x = data.get("inputs", data.get("instances"))
            if "instances" in keys and isinstance(x, list) and x and \
                    all(isinstance(row, dict) for row in x):  # records -> columns, as MLflow
                x = {key: [row.get(key) for row in x] for key in x[0]}
            return parsed_input(x, data.get("params"), False)
        try:
            return original(data, metadata, input_schema)
        except RecursionError:
            raise RequestError("JSON nested too deeply for a table") from None

    parse._study_guard = True
    server._parse_json_data = parse


class Batcher:
    """Runs a batch function on one thread of its own, over the requests waiting together as
    one batch. The scoring server predicts on a pool of threads: concurrent requests would
    otherwise each start the networks' graph and fight over the same cores (measured, 8
    clients sending single images to one server process: 49 requests/s apart, 89 together)."""

    def __init__(self, fn, max_rows: int = MAX_IMAGES):
        import queue
        import threading

        self.fn, self.max_rows, self.waiting = fn, max_rows, queue.SimpleQueue()
        threading.Thread(target=self._serve, name="model", daemon=True).start()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from concurrent.futures import Future

        done: Future = Future()
        self.waiting.put((x, done))
        return done.result()

    def _serve(self) -> None:
        import queue

        while True:
            batch = [self.waiting.get()]
            rows = len(batch[0][0])
            while rows < self.max_rows:
                try:
                    batch.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
                rows += len(batch[-1][0])
            try:
                out = self.fn(np.concatenate([x for x, _ in batch]))
            except BaseException as exc:  # every waiting request hears it
                for _, done in batch:
                    done.set_exception(exc)
                continue
            start = 0
            for x, done in batch:
                done.set_result(out[start:start + len(x)])
                start += len(x)


def members_function(paths: dict[str, str], weights: dict[str, float]):
    """(n, 28, 28) float32 pixels -> (n, 10) weighted mean probabilities of the native models
    at `paths`. The Keras members run in one traced graph (TensorFlow may run them side by
    side); estimators get flat pixels, as they were trained."""
    total = float(sum(weights.values()))
    networks, estimators = [], []
    if any(_is_keras(native_model_path(path)) for path in paths.values()):
        _share_cores()
    for key, path in paths.items():
        native = native_model_path(path)
        if _is_keras(native):
            from mlflow import keras as mlflow_keras  # imports TensorFlow: only when needed

            networks.append((weights[key] / total, mlflow_keras.load_model(native)))
        else:
            from mlflow import sklearn as mlflow_sklearn

            estimators.append((weights[key] / total, mlflow_sklearn.load_model(native)))
    graph = _graph(networks) if networks else None
    # One OpenMP thread for the estimators: the scoring server predicts on a pool of threads,
    # and each new calling thread wakes a cold OpenMP team for every one of a boosted model's
    # ~1,000 small parallel loops (measured, HistGradientBoosting on one image: 43 ms on a
    # pool thread, 5 ms with one thread; no slower for 64 images).
    from threadpoolctl import ThreadpoolController

    openmp = ThreadpoolController()

    def estimate(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), len(CLASS_NAMES)))
        with openmp.limit(limits=1, user_api="openmp"):
            for weight, estimator in estimators:
                out += weight * estimator.predict_proba(x.reshape(len(x), -1))
        return out

    if graph is None:
        return estimate
    # The estimators run on a thread of their own while the networks' graph runs (it releases
    # the GIL): one image takes max(networks, estimators), not the sum (7 + 7 ms measured).
    from concurrent.futures import ThreadPoolExecutor

    side = ThreadPoolExecutor(1, thread_name_prefix="estimators") if estimators else None

    def predict_proba(x: np.ndarray) -> np.ndarray:
        pending = side.submit(estimate, x) if side else None
        out = graph(x[..., None]).numpy()
        return out + pending.result() if pending else out

    return predict_proba


def _is_keras(native: str) -> bool:
    return "keras" in Model.load(str(Path(native) / "MLmodel")).flavors


def _share_cores() -> None:
    """Under `MLFLOW_MODELS_WORKERS=N mlflow models serve`, each of the N server processes
    gives TensorFlow its share of the cores: one thread per process on 2 cores with 2 workers,
    1.5x less CPU per image than two threads contending (measured: 64 images through the
    three networks of the reference ensemble, 60 ms on one thread, 45 ms on two)."""
    workers = os.environ.get("MLFLOW_MODELS_WORKERS", "")
    if not workers.isdigit() or int(workers) < 1:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already runs in this process: its threads stay
        pass


def _graph(networks):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def weighted(x):
        return tf.add_n([weight * tf.cast(net(x, training=False), tf.float64)
                         for weight, net in networks])

    with warnings.catch_warnings():  # Keras notes input names differing from the saved ones
        warnings.simplefilter("ignore", UserWarning)
        weighted.get_concrete_function()
    return weighted


def frame(proba: np.ndarray, uncertain: list[str | None] | None = None):
    """Probabilities -> the served DataFrame: top class name, one column per class, the top
    probability and why the answer is uncertain (None: it is not, or nobody said)."""
    import pandas as pd

    out = pd.DataFrame(proba.astype(np.float32), columns=list(CLASS_NAMES))
    out.insert(0, CLASS_OUTPUT, np.asarray(CLASS_NAMES, dtype=object)[proba.argmax(axis=1)])
    out[TOP_OUTPUT] = proba.max(axis=1).astype(np.float32)
    out[UNCERTAIN_OUTPUT] = pd.Series([None] * len(proba) if uncertain is None else uncertain,
                                      dtype=object)
    return out


def signature():
    """Outputs only: the inputs take two forms (images or pixels), checked by `pixels`, and
    are documented in the model's metadata (INPUTS_DOC)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(outputs=Schema([ColSpec("string", CLASS_OUTPUT)]
                                         + [ColSpec("float", name) for name in CLASS_NAMES]
                                         + [ColSpec("float", TOP_OUTPUT),
                                            ColSpec("string", UNCERTAIN_OUTPUT, required=False)]))


def request_images(model_input: Any) -> tuple[np.ndarray, list[bool] | None]:
    """`pixels`, and for encoded images whether preprocessing found an object in each
    (None for pixels sent as such): what `inputs.uncertain` needs besides the pixels."""
    encoded = _encoded_images(model_input)
    if encoded is not None:
        return _decode_all(encoded)
    return pixels(model_input), None


def pixels(model_input: Any) -> np.ndarray:
    """What a request carries -> (n, 28, 28) float32 pixels in [0, 1], or RequestError."""
    encoded = _encoded_images(model_input)
    if encoded is not None:
        return _decode_all(encoded)[0]
    try:
        x = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError("pixels must be a rectangular array of numbers, or send encoded "
                           f"images under '{IMAGE_INPUT}'") from None
    if x.ndim > 0 and len(x) == 0:
        raise RequestError("empty request: send at least one image")
    if x.ndim == 0 or x.shape[1:] not in ((28, 28, 1), (28, 28), (784,)):
        raise RequestError(f"pixels of shape {x.shape}; expected (n, 28, 28, 1), (n, 28, 28) "
                           f"or (n, 784), or encoded images under '{IMAGE_INPUT}'")
    _check_count(len(x))
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise RequestError(f"image {int(np.flatnonzero(bad)[0])}: pixels must be finite numbers "
                           "(found NaN or infinity)")
    low, high = float(x.min()), float(x.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        hint = "; divide 0-255 pixels by 255" if high <= 255 and low >= 0 else ""
        raise RequestError(f"pixels range from {low:g} to {high:g}; expected [0, 1]{hint}")
    return np.clip(x.reshape(len(x), 28, 28), 0.0, 1.0)


def _encoded_images(model_input: Any) -> list | None:
    """The encoded images of a request, or None when it carries pixels."""
    if isinstance(model_input, dict):
        if IMAGE_INPUT not in model_input:
            raise RequestError(f"unknown input {sorted(model_input)}; send '{IMAGE_INPUT}' "
                               "(encoded image files) or a pixel tensor")
        return list(np.atleast_1d(np.asarray(model_input[IMAGE_INPUT], dtype=object)).ravel())
    columns = getattr(model_input, "columns", None)
    if columns is not None:
        if IMAGE_INPUT in columns:
            return list(model_input[IMAGE_INPUT])
        if all(np.issubdtype(t, np.number) for t in model_input.dtypes):
            return None  # a DataFrame of pixel columns
        raise RequestError(f"unknown columns {list(columns)[:5]}; send '{IMAGE_INPUT}' "
                           "(encoded image files) or a pixel tensor")
    if isinstance(model_input, (bytes, str)):
        return [model_input]
    if isinstance(model_input, (list, tuple)) and model_input and \
            isinstance(model_input[0], (bytes, str)):
        return list(model_input)
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "OSUa":
        return list(model_input.ravel())
    return None


def _decode_all(encoded: list) -> tuple[np.ndarray, list[bool]]:
    """Encoded images -> their preprocessed pixels in [0, 1], and whether preprocessing found
    an object in each (images.foreground_found)."""
    if not encoded:
        raise RequestError("empty request: send at least one image")
    _check_count(len(encoded))
    raw, total = [], 0
    for i, item in enumerate(encoded):
        raw.append(_bytes(i, item))
        total += len(raw[-1])
        if total > MAX_REQUEST_BYTES:
            raise RequestError(f"over {MAX_REQUEST_BYTES // 2**20} MB of images in one request "
                               "(the limit): send fewer or smaller images")
    # Every header first: a request whose images would decode to too many pixels together is
    # refused before any of them is decoded (a 39 kB blank PNG decodes to 40 megapixels).
    opened, pixels_total = [], 0
    for i, data in enumerate(raw):
        try:
            opened.append(images.open_image(data, MAX_IMAGE_BYTES))
        except images.ImageError as exc:
            raise RequestError(f"image {i}: {exc}") from None
        pixels_total += images.decoded_pixels(opened[-1])
        if pixels_total > MAX_REQUEST_PIXELS:
            raise RequestError(f"images 0-{i} decode to over {MAX_REQUEST_PIXELS:,} pixels "
                               "together (the limit per request): send fewer or smaller images")
    out, found = np.empty((len(raw), 28, 28), dtype=np.float32), []
    for i, image in enumerate(opened):
        try:
            image = images.load(image)
            out[i] = images.preprocess(image) / np.float32(255)
            found.append(images.foreground_found(image))
        except images.ImageError as exc:
            raise RequestError(f"image {i}: {exc}") from None
        opened[i] = image = None  # its decoded pixels go now, not at the end of the request
    return out, found


def _bytes(i: int, item: Any) -> bytes:
    """One image's bytes: raw bytes as given in-process, base64 text (a data: URL too) in JSON."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if not isinstance(item, str):
        raise RequestError(f"image {i}: expected base64 text of an image file, got "
                           f"{type(item).__name__}")
    text = item.split(",", 1)[1] if item.startswith("data:") and "," in item else item
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError(f"image {i}: {len(text) * 3 / 4 / 2**20:.1f} MB of image data; the "
                           f"limit is {MAX_IMAGE_BYTES // 2**20} MB per image")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"image {i}: not base64 text (encode the file's bytes with "
                           "base64, e.g. `base64 -w0 photo.jpg`)") from None


def _check_count(n: int) -> None:
    if n > MAX_IMAGES:
        raise RequestError(f"{n} images in one request; the limit is {MAX_IMAGES}: split it")


def log_model(weights: dict[str, float], native_paths: dict[str, str],
              temperature: float = 1.0, unsure_threshold: float = 0.0, name: str = "model"):
    """Log a Classifier over native MLflow models (local folders) into the active run as
    `name` (its pipeline's), with its temperature and unsure threshold; MLflow copies the
    natives in as its artifacts, and the study package ships with it. Its requirements: the
    members' own, and what decoding images needs."""
    import logging

    requirements = set(pinned(["mlflow", "numpy", "pandas", "pillow", "cloudpickle"]))
    for path in native_paths.values():
        reqs = Path(path) / "requirements.txt"
        if reqs.is_file():
            requirements |= {line.strip() for line in reqs.read_text().splitlines()
                             if line.strip() and not line.startswith("#")}

    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # type-hint advice, see below
    with warnings.catch_warnings():
        # The model is a class of this package shipped with code_paths; MLflow's advice to
        # add type hints or an input example does not fit inputs of two forms.
        warnings.filterwarnings("ignore", message=".*(type hint|input example|CloudPickle).*")
        return mlflow.pyfunc.log_model(
            name=name, python_model=Classifier(weights, temperature, unsure_threshold),
            artifacts=native_paths,
            signature=signature(), pip_requirements=sorted(requirements),
            code_paths=[str(config.PACKAGE_DIR)],
            metadata={"inputs": INPUTS_DOC, "outputs": f"'{CLASS_OUTPUT}' (the top class name), "
                      f"one probability column per class, '{TOP_OUTPUT}' and "
                      f"'{UNCERTAIN_OUTPUT}' (why the answer is uncertain, in words, or null)",
                      "temperature": temperature, "unsure_threshold": unsure_threshold})
