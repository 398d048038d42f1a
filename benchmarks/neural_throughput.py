"""Benchmark: training throughput of the neural pipelines on this machine.

1. cnn_seed1 through the study's training path (`study.training.fit`: tf.data, seeded shuffle,
   early stopping, callbacks) against a bare `model.fit` on the same in-memory data, same
   batch size, same validation each epoch, in the same process. Goal: overhead <= 10%.
2. float32 against Keras' mixed_bfloat16 policy for every neural pipeline (bare fit, so the
   policy is measured even where the study would refuse bf16 on a CPU without bf16 units).

    .venv/bin/python benchmarks/neural_throughput.py [--epochs 3] [--rows 48000] [--bf16-rows 12000]

Throughput is images per second over the measured epochs (the first, graph-tracing epoch of
each configuration is run separately as warm-up and not counted). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from study import config, data, pipelines, training  # noqa: E402
from study.models import get_builder  # noqa: E402

NEURAL = ["mlp_seed", "cnn_seed1", "cnn_seed2", "cnn_seed3", "cnn_modern"]


def bare_fit(spec, params, x, y, xv, yv, epochs, precision="float32") -> float:
    """images/s of a plain model.fit on numpy arrays (after one warm-up epoch)."""
    model_kw, _, fit_kw = training.split_params(spec, params)
    model_kw["precision"] = precision
    build = get_builder(spec.model).build
    import inspect
    import math

    if "steps_per_epoch" in inspect.signature(build).parameters:
        model_kw.update(steps_per_epoch=math.ceil(len(x) / fit_kw["batch_size"]), epochs=epochs + 1)
    model = build(**model_kw)
    xi, xvi = data.as_image(x), data.as_image(xv)
    bs = int(fit_kw["batch_size"])
    model.fit(xi, y, batch_size=bs, epochs=1, validation_data=(xvi, yv), verbose=0)
    start = time.perf_counter()
    model.fit(xi, y, batch_size=bs, epochs=epochs, validation_data=(xvi, yv), verbose=0)
    return len(x) * epochs / (time.perf_counter() - start)


def study_fit(spec, params, x, y, xv, yv, epochs) -> float:
    """images/s through study.training.fit (warm-up run of one epoch first)."""
    training.fit(spec, {**params, "epochs": 1, "patience": 99}, x, y, xv, yv, seed=config.SEED)
    result = training.fit(spec, {**params, "epochs": epochs, "patience": 99}, x, y, xv, yv,
                          seed=config.SEED)
    return len(x) * epochs / result.fit_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=48000)
    parser.add_argument("--bf16-rows", type=int, default=12000)
    parser.add_argument("--pipelines", default=",".join(NEURAL))
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()

    training.configure_tensorflow(config.SEED)
    splits = data.make_splits(data.load(), config.profile("quick"))
    print(f"CPU bf16 instructions: {training.cpu_supports_bf16()}; TF threads: "
          f"intra={os.environ.get('STUDY_TF_THREADS', os.cpu_count())}", flush=True)
    x, y = splits.x_train[: args.rows], splits.y_train[: args.rows]
    xv, yv = splits.x_val, splits.y_val

    if not args.skip_overhead:
        spec = pipelines.load("cnn_seed1")
        params = {**spec.params, **spec.fit}
        # the bare fit runs at the precision the study path resolves to, or the comparison
        # would measure bf16 against float32 instead of the study's overhead
        precision = training.resolve_precision(params.get("precision", "float32"))[0]
        runs = []
        for _ in range(2):  # alternate, so neither side gets a systematically warmer machine
            runs.append((study_fit(spec, params, x, y, xv, yv, args.epochs),
                         bare_fit(spec, params, x, y, xv, yv, args.epochs, precision)))
        s = float(np.median([r[0] for r in runs]))
        b = float(np.median([r[1] for r in runs]))
        print(f"\ncnn_seed1 ({precision}), {len(x)} rows, {args.epochs} epochs, validation on "
              f"{len(xv)} each epoch")
        print(f"  study path : {s:8.0f} images/s   ({[round(r[0]) for r in runs]})")
        print(f"  bare fit   : {b:8.0f} images/s   ({[round(r[1]) for r in runs]})")
        print(f"  overhead   : {100 * (1 - s / b):+.1f}% (goal <= 10%)", flush=True)

    xs, ys = x[: args.bf16_rows], y[: args.bf16_rows]
    xvs, yvs = xv[: args.bf16_rows // 4], yv[: args.bf16_rows // 4]
    print(f"\nprecision, bare fit on {len(xs)} rows, {args.epochs} epochs (images/s)")
    print(f"  {'pipeline':12s} {'float32':>9s} {'bf16':>9s} {'bf16/fp32':>9s}  configured")
    for name in args.pipelines.split(","):
        spec = pipelines.load(name)
        params = {**spec.params, **spec.fit}
        f32 = bare_fit(spec, params, xs, ys, xvs, yvs, args.epochs, "float32")
        b16 = bare_fit(spec, params, xs, ys, xvs, yvs, args.epochs, "mixed_bfloat16")
        print(f"  {name:12s} {f32:9.0f} {b16:9.0f} {b16 / f32:9.2f}  {spec.params.get('precision')}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
