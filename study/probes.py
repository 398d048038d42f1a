"""Throughput probes of this machine, for a time budget's estimates on a store with no history:
a network's training and prediction rates (its model built as its final fit builds it, a few
batches timed), cached per host (CPU model, usable cores, library versions) in a JSON file, so
a plan probes once per machine. Nothing here imports TensorFlow or touches the disk at import.

UMAP is not probed: fits of the seeded PCA(50)+UMAP on 300/1,500/3,000/1,500/6,000 real rows
took 18/10/22/7/57 s here (numba compiles per code path; exact neighbours below 4,096 rows,
NN-descent above), so a two-size probe costs minutes and its power law (k ~1.4) extrapolates
to 48,000 rows several times too high: UMAP pipelines keep their scaled YAML cost, with their
least (fixed params, all the rows) measured apart and a process's one-time import and JIT
added to it (budget_run.WARMUP_SECONDS).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from importlib import metadata
from typing import Any, Callable

from study import config

logger = logging.getLogger(__name__)

PROBE_SECONDS = 2.0  # timed training per architecture, after the warm-up batch
PREDICT_ROWS = 4096  # timed prediction per architecture (after a small traced call): fewer
# rows measure the call's own overhead (1,024 rows: half the rate of 4,096 for cnn_seed1)
# parameters that change what a network learns, not what a step computes: left out of the
# probe key, so cnn_modern and cnn_modern_b (same layers) share one probe
RATE_KEYS = {"learning_rate", "label_smoothing", "weight_decay", "momentum", "warmup_epochs",
             "l2"}


def fingerprint() -> dict[str, Any]:
    """What makes a probe's figure this host's: the CPU model, the cores this process uses,
    and the versions of the libraries that do the arithmetic."""
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("numpy", "tensorflow", "tensorflow-cpu", "umap-learn", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": config.threads(), **versions}


def host_key(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _read(path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning(f"probe cache {path} unreadable ({exc}): probing again, it is rewritten")
        return {}


def cached(key: str, measure: Callable[[], dict[str, float]],
           fp: dict[str, Any] | None = None) -> tuple[dict[str, float], bool]:
    """(figures, whether they came from the cache): this host's cached figures for `key`,
    else `measure()`'s, written to the cache (atomically: a killed write leaves the old file)."""
    fp = fp or fingerprint()
    path, host = config.probe_cache_file(), host_key(fp)
    found = _read(path).get(host, {}).get("probes", {}).get(key)
    if isinstance(found, dict):
        return found, True
    figures = measure()
    data = _read(path)  # again: another process may have added figures meanwhile
    entry = data.get(host) if isinstance(data.get(host), dict) else {}
    entry = {"host": fp, "probes": {**(entry.get("probes") or {}), key: figures}}
    data[host] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return figures, False


def network_params(spec, budget) -> dict[str, Any]:
    """The parameters a network's final fit is built from, before tuning (which moves rates
    such as the learning rate, not the architecture)."""
    return {**spec.params, **spec.fit, **budget.fit}


def network_key(spec, budget) -> str:
    """The architecture as the final fit trains it: builder, its parameters, batch size and
    the precision this CPU runs (smoke widths are another architecture)."""
    from study import training

    model_kw, _, fit_kw = training.split_params(spec, network_params(spec, budget))
    model_kw["precision"] = training.resolve_precision(model_kw.get("precision", "float32"))[0]
    model_kw = {k: v for k, v in model_kw.items() if k not in RATE_KEYS}
    return (f"net:{spec.model}:{json.dumps(model_kw, sort_keys=True, default=str)}"
            f":batch={int(fit_kw.get('batch_size', 128))}")


def probe_network(spec, budget, seed: int = config.SEED) -> dict[str, float]:
    """Train the final fit's network on random images (throughput does not depend on them):
    the first batch traces, the next ones are timed for ~PROBE_SECONDS (at least 3); then
    predict PREDICT_ROWS after a small traced call. Its images/s for training and prediction,
    and the seconds a fit pays once (building and tracing)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from study import training

    start = time.perf_counter()
    params = network_params(spec, budget)
    batch = int(params.get("batch_size", 128))
    # the schedule sized as for 48,000 rows: only its shape, not the speed, depends on it
    model, _, _, _ = training.build_network(spec, params, 48_000, seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (4 * batch, *config.IMAGE_SHAPE), dtype=np.uint8)
    y = rng.integers(0, config.N_CLASSES, 4 * batch)
    data = (tf.data.Dataset.from_tensor_slices((training.features("keras", x), y))
            .batch(batch).repeat().prefetch(tf.data.AUTOTUNE))
    ends: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            ends.append(time.perf_counter())
            if len(ends) > 3 and ends[-1] - ends[0] >= PROBE_SECONDS:
                self.model.stop_training = True

    model.fit(data, epochs=1, steps_per_epoch=1000, callbacks=[Timer()], verbose=0,
              shuffle=False)
    train_ips = (len(ends) - 1) * batch / (ends[-1] - ends[0])  # after the traced first batch
    x = rng.integers(0, 256, (PREDICT_ROWS, *config.IMAGE_SHAPE), dtype=np.uint8)
    traced = time.perf_counter()
    training.predict_proba(model, "keras", x[:256])  # tracing
    t = time.perf_counter()
    # what a fit pays once whatever its epochs: building, and tracing the training and the
    # prediction steps (cnn_seed1's first epoch took 70 s against ~20 s for the others)
    setup = (ends[0] - start) + (t - traced)
    training.predict_proba(model, "keras", x)
    predict_ips = PREDICT_ROWS / (time.perf_counter() - t)
    return {"train_images_per_second": train_ips, "predict_images_per_second": predict_ips,
            "batches": len(ends) - 1, "setup_seconds": setup,
            "probe_seconds": time.perf_counter() - start}
