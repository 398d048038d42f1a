"""Fit and apply a pipeline's model, whatever its kind; no tracking, no tuning here.

`fit()` builds the model from a pipeline spec and a parameter set (so a model can be rebuilt
from `study.best_params`), fits it on training rows, and for networks keeps the weights of
the best validation epoch.
"""

from __future__ import annotations

import logging
import inspect
import io
import math
import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from study import config, processes
from study import data as fmnist
from study.errors import ConfigError
from study.models import KERAS_FIT_KEYS, REDUCER_PREFIX, get_builder
from study.models.reducers import build_reducer
from study.pipelines import PipelineSpec

logger = logging.getLogger(__name__)



@dataclass
class FitResult:
    model: Any  # a fitted sklearn Pipeline or a Keras Model
    kind: str
    fit_seconds: float  # this model's own final fit (a boosted member's out-of-fold pair too)
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch, networks only
    best_epoch: int | None = None  # 1-based epoch whose weights were kept
    notes: list[str] = field(default_factory=list)  # e.g. "did not converge in max_iter"
    info: dict[str, Any] = field(default_factory=dict)  # runtime facts, e.g. the precision used
    base_seconds: float = 0.0  # the logged fit_seconds of the final model it is built on

    @property
    def total_seconds(self) -> float:
        """The study's one fit_seconds: the time to produce this model from the data,
        including the final models it is built on (a specialist's generalist), each counted
        once; tuning is not in it (tuning_seconds)."""
        return self.fit_seconds + self.base_seconds

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return predict_proba(self.model, self.kind, images)


def features(kind: str, images: np.ndarray) -> np.ndarray:
    """uint8 images -> the model kind's float input."""
    return fmnist.as_image(images) if kind == "keras" else fmnist.as_flat(images)


def predict_proba(model: Any, kind: str, images: np.ndarray) -> np.ndarray:
    x = features(kind, images)
    if kind == "keras":
        return np.asarray(model.predict(x, batch_size=2048, verbose=0), dtype=np.float64)
    return model.predict_proba(x)


def split_params(spec: PipelineSpec, params: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(builder kwargs, reducer kwargs, fit settings) from one flat parameter dict."""
    kind = get_builder(spec.model).kind
    reducer = {k[len(REDUCER_PREFIX):]: v for k, v in params.items() if k.startswith(REDUCER_PREFIX)}
    rest = {k: v for k, v in params.items() if not k.startswith(REDUCER_PREFIX)}
    fit_keys = KERAS_FIT_KEYS if kind == "keras" else set()
    fit = {k: v for k, v in rest.items() if k in fit_keys}
    model = {k: v for k, v in rest.items() if k not in fit_keys}
    return model, reducer, fit


_FIT_CACHE = None
FIT_CACHE_PREFIX = "study-fit-cache-"


def sweep_fit_caches(folder: str) -> list[str]:
    """Remove the fit caches in `folder` whose process is gone; return their paths.

    A process killed by a signal never runs its atexit handler, so its cache would stay behind
    (the resume-after-kill tests kill compares on purpose): the next process cleans up after it.
    """
    import shutil

    removed = []
    for name in sorted(os.listdir(folder)):
        if not name.startswith(FIT_CACHE_PREFIX):
            continue
        # name: prefix, "host:pid" (processes.this_process), "-", mkdtemp's random part
        host, _, pid = name[len(FIT_CACHE_PREFIX):].rpartition("-")[0].rpartition(":")
        path = os.path.join(folder, name)
        if processes.died_here(host, pid) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def fit_cache():
    """A joblib cache of fitted reducers for this process, removed when the process ends."""
    global _FIT_CACHE
    if _FIT_CACHE is None:
        import atexit
        import shutil
        import tempfile

        from joblib import Memory

        # The host and pid in the name let a later process remove the cache of one that was killed.
        sweep_fit_caches(tempfile.gettempdir())
        folder = tempfile.mkdtemp(prefix=f"{FIT_CACHE_PREFIX}{processes.this_process()}-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _FIT_CACHE = Memory(folder, verbose=0)
    return _FIT_CACHE


def build_sklearn(spec: PipelineSpec, params: dict[str, Any], seed: int, cache: bool = True):
    """The reducer and the model as one Pipeline, with every random_state set to `seed`."""
    from sklearn.pipeline import Pipeline

    model_kw, reducer_kw, _ = split_params(spec, params)
    builder = get_builder(spec.model)
    try:
        estimator = builder.build(**model_kw)
        reducer = build_reducer(spec.reducer, **reducer_kw)
    except TypeError as exc:
        raise ConfigError(f"pipeline {spec.name}: bad parameter for {spec.model} ({exc})") from None
    # Fitted reducers are cached by (parameters, data) during tuning: trials that repeat a reducer
    # setting on the same rows fit it once. Final fits do not cache, so fit_seconds is the real cost.
    memory = fit_cache() if cache and spec.reducer != "none" else None
    pipe = Pipeline([("reduce", reducer), ("model", estimator)], memory=memory)
    seeds = {k: seed for k in pipe.get_params() if k.endswith("random_state")}
    return pipe.set_params(**seeds)


_TF_THREADS_SET = False


def configure_tensorflow(seed: int) -> None:
    """Threads (once, before TF runs anything: later calls would raise), seeds, determinism."""
    global _TF_THREADS_SET
    import keras
    import tensorflow as tf

    if not _TF_THREADS_SET:
        cores = int(os.environ.get("STUDY_TF_THREADS") or config.threads())
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cores)
            tf.config.threading.set_inter_op_parallelism_threads(
                int(os.environ.get("STUDY_TF_INTER_THREADS", 1)))
        except RuntimeError:  # TF already initialised by the caller: keep its settings
            pass
        _TF_THREADS_SET = True
    tf.get_logger().setLevel("ERROR")  # retracing notices are expected: one graph per trial
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def cpu_supports_bf16() -> bool:
    """bfloat16 arithmetic in hardware (AVX512-BF16 or AMX); elsewhere it is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> tuple[str, str]:
    """(precision to use, why): mixed_bfloat16 only where the CPU computes bf16 natively."""
    if requested == "mixed_bfloat16" and not cpu_supports_bf16():
        return "float32", "mixed_bfloat16 requested, but this CPU has no bf16 instructions"
    return requested, "as configured"


def _progress_callback(prefix: str, epochs: int):
    import keras

    class Progress(keras.callbacks.Callback):
        """One line per epoch, so a long fit shows where it is."""

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            shown = " ".join(f"{k}={v:.4f}" for k, v in logs.items()
                             if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
            logger.info(f"{prefix} epoch {epoch + 1}/{epochs} {shown}")

    return Progress()


def _time_limit_callback(max_seconds: float, stopped_after: list[int]):
    import keras

    class TimeLimit(keras.callbacks.Callback):
        """Stops before an epoch that would end past max_seconds (costing what the last one
        did; the first one counted from its first step, since tracing is paid once): a
        safety net against a hang or a far slower host. Epochs decide where a recipe ends; a
        stop here is a failure of the plan (evaluation.limited_by says so)."""

        def on_train_begin(self, logs=None):
            self.start = self.last = time.perf_counter()
            self.first_step = None

        def on_train_batch_end(self, batch, logs=None):
            if self.first_step is None:
                self.first_step = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            # cnn_seed1 under a budget: a 70 s first epoch (mostly tracing) stopped a 2-epoch
            # schedule whose second epoch would have taken ~20 s
            last = now - (self.first_step if epoch == 0 and self.first_step else self.last)
            if now - self.start + last > max_seconds:
                self.model.stop_training = True
                stopped_after.append(epoch + 1)
            self.last = now

    return TimeLimit()


def _weight_average_callback(decay: float, every: int = 5):
    import keras

    if not 0.0 < decay < 1.0:
        raise ConfigError(f"ema must be a decay in (0, 1), like 0.99; got {decay}")

    class WeightAverage(keras.callbacks.Callback):
        """An exponential moving average of all weights (batch-norm statistics too), updated
        every `every` steps, with a warm-up. Validation sees the averaged weights and they stay in the model
        until training resumes, so the epoch that early stopping keeps is an averaged one."""

        def on_train_begin(self, logs=None):
            self.average = [w.copy() for w in self.model.get_weights()]
            self.raw, self.steps = None, 0

        def on_train_batch_begin(self, batch, logs=None):
            if self.raw is not None:  # back to the weights being trained
                self.model.set_weights(self.raw)
                self.raw = None

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps % every == 0:
                # warm-up (as in timm's ModelEmaV2): early on the average follows the weights
                # closely instead of dragging the random initial ones along
                keep = min(decay ** every, (1 + self.steps) / (10 + self.steps))
                for avg, w in zip(self.average, self.model.get_weights()):
                    avg *= keep
                    avg += (1.0 - keep) * w

        def on_test_begin(self, logs=None):
            if self.raw is None:
                self.raw = self.model.get_weights()
                self.model.set_weights(self.average)

    return WeightAverage()


def build_network(spec: PipelineSpec, params: dict[str, Any], n_rows: int, seed: int
                  ) -> tuple[Any, dict[str, Any], str, str]:
    """The compiled network a fit of `n_rows` rows trains (TensorFlow configured, precision
    resolved for this CPU, its schedule sized to the run): (model, fit settings, precision,
    why). Shared by fit_keras and the throughput probe (study.probes)."""
    model_kw, _, fit_kw = split_params(spec, params)
    configure_tensorflow(seed + int(fit_kw.get("seed_offset", 0)))
    precision, why = resolve_precision(model_kw.get("precision", "float32"))
    model_kw["precision"] = precision
    build = get_builder(spec.model).build
    if "steps_per_epoch" in inspect.signature(build).parameters:  # schedules sized to the run
        model_kw.update(steps_per_epoch=math.ceil(n_rows / int(fit_kw.get("batch_size", 128))),
                        epochs=int(fit_kw.get("epochs", 10)))
    try:
        model = build(**model_kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pipeline {spec.name}: bad parameter for {spec.model} ({exc})") from None
    return model, fit_kw, precision, why


def fit_keras(spec: PipelineSpec, params: dict[str, Any], x_train, y_train, x_val, y_val,
              seed: int, callbacks: Sequence[Any] = (), progress: str | None = None) -> FitResult:
    import keras
    import tensorflow as tf

    model, fit_kw, precision, why = build_network(spec, params, len(x_train), seed)
    seed += int(fit_kw.get("seed_offset", 0))
    epochs = int(fit_kw.get("epochs", 10))
    batch_size = int(fit_kw.get("batch_size", 128))
    patience = int(fit_kw.get("patience", 3))
    # Data stays in memory; shuffling is seeded so two runs see the same batches.
    train = (tf.data.Dataset.from_tensor_slices((features("keras", x_train), y_train))
             .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    val = (tf.data.Dataset.from_tensor_slices((features("keras", x_val), y_val))
           .batch(2048).prefetch(tf.data.AUTOTUNE))
    stopper = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience,
                                            restore_best_weights=True)
    # the average first: validation and early stopping then see the averaged weights
    cbs = ([_weight_average_callback(float(fit_kw["ema"]))] if fit_kw.get("ema") else [])
    cbs += [stopper, *callbacks]
    stopped_after: list[int] = []
    if fit_kw.get("max_seconds"):
        cbs.append(_time_limit_callback(float(fit_kw["max_seconds"]), stopped_after))
    if progress:
        cbs.append(_progress_callback(progress, epochs))
    start = time.perf_counter()
    hist = model.fit(train, validation_data=val, epochs=epochs, callbacks=cbs,
                     shuffle=False, verbose=0)  # the dataset shuffles itself, seeded
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    best_epoch = int(np.argmax(history["val_accuracy"])) + 1
    if stopper.best_weights is not None:  # also when training ran all epochs without stopping
        model.set_weights(stopper.best_weights)
    result = FitResult(model, "keras", seconds, history, best_epoch)
    if stopped_after and stopped_after[0] < epochs:
        result.notes.append(f"time limit: stopped after {stopped_after[0]} of {epochs} epochs "
                            f"(max_seconds {float(fit_kw['max_seconds']):g})")
    result.info.update(precision=precision, precision_reason=why,
                       images_per_second=len(x_train) * len(history["loss"]) / seconds)
    return result


def fit(spec: PipelineSpec, params: dict[str, Any], x_train, y_train, x_val=None, y_val=None,
        seed: int = 2020, callbacks: Sequence[Any] = (), progress: str | None = None,
        cache: bool = True) -> FitResult:
    """Build from (spec, params) and fit on the training rows; validation rows guide early stopping.
    `cache=False` for final fits: a cached reducer would hide its fitting time."""
    kind = get_builder(spec.model).kind
    if kind == "keras":
        return fit_keras(spec, params, x_train, y_train, x_val, y_val, seed, callbacks, progress)
    from sklearn.exceptions import ConvergenceWarning

    pipe = build_sklearn(spec, params, seed, cache)
    start = time.perf_counter()
    # A capped iteration count is part of the budget: record it in one line, not a warning page.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            pipe.fit(features(kind, x_train), y_train)
        except ValueError as exc:  # sklearn's own parameter validation
            raise ConfigError(f"pipeline {spec.name}: {str(exc).splitlines()[0]}") from None
    seconds = time.perf_counter() - start
    pipe.memory = None  # the cache is this process's; a saved model must not point at it
    notes = sorted({str(w.message).splitlines()[0] for w in caught
                    if issubclass(w.category, ConvergenceWarning)})
    return FitResult(pipe, kind, seconds, notes=notes)


def accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(proba.argmax(axis=1) == labels))


def keeps_mirror(plain_accuracy: float, mirror_accuracy: float) -> bool:
    """Mirror TTA is kept only on a strict validation gain (a tie keeps the cheaper model)."""
    return mirror_accuracy > plain_accuracy


def mirror_proba(fit: FitResult, x: np.ndarray) -> np.ndarray:
    """The mean of the network's probabilities for the images and their horizontal mirrors."""
    return 0.5 * (fit.predict_proba(x) + fit.predict_proba(x[:, :, ::-1]))


def choose_mirror_tta(fit: FitResult, x_val: np.ndarray, y_val: np.ndarray) -> np.ndarray:
    """Wrap a network in mirror test-time augmentation when that raises its validation
    accuracy (a strict gain; a tie keeps the cheaper model). The decision and both validation
    figures go into fit.info; returns the validation probabilities of the model kept."""
    plain = fit.predict_proba(x_val)
    mirrored = 0.5 * (plain + fit.predict_proba(x_val[:, :, ::-1]))
    plain_acc, mirror_acc = accuracy(plain, y_val), accuracy(mirrored, y_val)
    keep = keeps_mirror(plain_acc, mirror_acc)
    fit.info.update(val_accuracy_plain=plain_acc, val_accuracy_mirror=mirror_acc,
                    tta="mirror" if keep else "none")
    if not keep:
        fit.notes.append(f"mirror TTA off (validation {mirror_acc:.4f} with, {plain_acc:.4f} "
                         "without)")
        return plain
    from study.models.keras_models import with_mirror

    fit.model = with_mirror(fit.model)
    fit.notes.append(f"mirror TTA on (validation {mirror_acc:.4f} with, {plain_acc:.4f} without)")
    return mirrored  # what the wrapped model computes, without predicting twice more


def final_fit(spec: PipelineSpec, params: dict[str, Any], splits, seed: int,
              progress: str | None = None) -> tuple[FitResult, np.ndarray]:
    """A final model: fitted on the training split (no reducer cache, so fit_seconds is the
    real cost), mirror TTA decided on validation where the pipeline asks for it; returns the
    fit and the validation probabilities of the model kept."""
    fit_ = fit(spec, params, splits.x_train, splits.y_train, splits.x_val, splits.y_val, seed,
               progress=progress, cache=False)
    if spec.tta == "mirror":
        return fit_, choose_mirror_tta(fit_, splits.x_val, splits.y_val)
    return fit_, fit_.predict_proba(splits.x_val)


def inference_copy(model):
    """The network without its training configuration (optimizer, loss), for saving: a saved
    model then loads in any process, even where a custom loss (label smoothing) is unknown."""
    import keras

    if getattr(model, "compiled", False):  # a view of the same layers, without compile state
        return keras.Model(model.inputs, model.outputs, name=model.name)
    copy = keras.models.clone_model(model)  # (a wrapper around a compiled network)
    copy.set_weights(model.get_weights())
    return copy


def count_params(model: Any, kind: str) -> int:
    """Learned numbers: Keras weights, or fitted arrays (and tree nodes) of sklearn steps."""
    if kind == "keras":
        return int(model.count_params())
    total = 0
    steps = [s for _, s in getattr(model, "steps", [("", model)]) if s != "passthrough"]
    for step in steps:
        for est in [step, *getattr(step, "estimators_", [])]:  # a forest's trees too
            for name, value in vars(est).items():
                if name.endswith("_") and isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    total += value.size
                elif name.endswith("_") and hasattr(value, "get_params"):  # PcaUmap's PCA, UMAP
                    total += count_params(value, kind)
            tree = getattr(est, "tree_", None)
            if tree is not None:
                total += int(tree.node_count)
            for round_ in getattr(est, "_predictors", []):  # HistGradientBoosting trees
                total += sum(len(predictor.nodes) for predictor in round_)
    return total


def model_bytes(model: Any, kind: str) -> int:
    """Serialized size: what a user would ship."""
    if kind == "keras":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.keras")
            model.save(path)
            return os.path.getsize(path)
    buf = io.BytesIO()
    pickle.dump(model, buf, protocol=pickle.HIGHEST_PROTOCOL)
    return buf.tell()
