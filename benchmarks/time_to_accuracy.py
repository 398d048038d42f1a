"""Benchmark: what each minute of training buys. Trains one neural pipeline through the study's
own training path (`study.training.fit`, its YAML recipe for a profile) on the whole training
split, for up to N minutes, and records after every epoch the training wall time and the
validation and test accuracy, plain and with mirror test-time augmentation.

    .venv/bin/python benchmarks/time_to_accuracy.py --pipeline cnn_modern --profile quick
    .venv/bin/python benchmarks/time_to_accuracy.py --pipeline cnn_modern --profile full --minutes 40

Writes <out>/<pipeline>-<profile>.csv and .png (default out: benchmarks/results/). The test
accuracies here are a benchmark's measurement and select nothing; the study itself scores a
model on the test set once. Evaluation time is not counted in the wall seconds. `--set k=v`
overrides a recipe setting (numbers parsed as YAML), for trying a recipe before writing it
down. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from study import config, data, pipelines, training, tuning  # noqa: E402


def recorder(splits, rows: list[dict], out_csv: Path, started: list[float],
             limit: float | None = None):
    import keras

    class Record(keras.callbacks.Callback):
        """After each epoch: accuracy of the weights the trainer would keep at that point
        (averaged ones when the recipe averages), its evaluation time left out of the clock.
        Stops before an epoch that would end past `limit` seconds of training on that clock
        (the trainer's own max_seconds would count the evaluation too)."""

        def on_train_begin(self, logs=None):
            started.append(time.perf_counter())
            self.excluded = 0.0

        def on_epoch_end(self, epoch, logs=None):
            clock = time.perf_counter()
            row = {"epoch": epoch + 1,
                   "train_seconds": round(clock - started[0] - self.excluded, 1)}
            for split, x, y in (("val", splits.x_val, splits.y_val),
                                ("test", splits.x_test, splits.y_test)):
                images = data.as_image(x)
                plain = self.model.predict(images, batch_size=2048, verbose=0)
                mirror = self.model.predict(images[:, :, ::-1], batch_size=2048, verbose=0)
                row[f"{split}_accuracy"] = round(float(np.mean(plain.argmax(1) == y)), 4)
                row[f"{split}_accuracy_mirror"] = round(
                    float(np.mean((plain + mirror).argmax(1) == y)), 4)
            rows.append(row)
            with out_csv.open("w", newline="") as f:  # rewritten each epoch: a killed run keeps its curve
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(rows)
            print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)
            self.excluded += time.perf_counter() - clock
            last = row["train_seconds"] - (rows[-2]["train_seconds"] if len(rows) > 1 else 0.0)
            if limit and row["train_seconds"] + last > limit:
                self.model.stop_training = True

    return Record()


def plot(rows: list[dict], title: str, path: Path) -> None:
    from study.figures import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    minutes = [r["train_seconds"] / 60 for r in rows]
    for key, style in (("val_accuracy", "-"), ("test_accuracy", "-"),
                       ("test_accuracy_mirror", "--")):
        ax.plot(minutes, [r[key] for r in rows], style, marker="o", ms=3,
                label=key.replace("_", " "))
    ax.set_xlabel("training wall time (minutes, evaluation excluded)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(max(0.8, min(r["test_accuracy"] for r in rows) - 0.01), None)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    save(fig, path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="cnn_modern")
    parser.add_argument("--profile", default="quick", choices=list(config.PROFILES))
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop before an epoch that would end past this (default: the recipe)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting, e.g. --set epochs=20")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--out", default=str(config.PROJECT_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    spec = pipelines.load(args.pipeline)
    params = tuning.final_params(spec, spec.budget(args.profile), {})
    params.pop("max_seconds", None)
    for item in args.set:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    params["patience"] = 10**6  # the whole curve, not the early-stopped part
    splits = data.make_splits(data.load(), config.profile("quick"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.name}-{args.profile}" + "".join(f"-{s.replace('=', '')}" for s in args.set)
    rows: list[dict] = []
    print(f"{spec.name} ({args.profile} recipe): {params}", file=sys.stderr)
    result = training.fit(spec, params, splits.x_train, splits.y_train, splits.x_val,
                          splits.y_val, seed=args.seed,
                          callbacks=[recorder(splits, rows, out / f"{stem}.csv", [],
                                              args.minutes * 60 if args.minutes else None)])
    plot(rows, f"{spec.name}, {args.profile} recipe: accuracy against training time",
         out / f"{stem}.png")
    print(f"{len(rows)} epochs, {rows[-1]['train_seconds']:.0f} s of training; "
          f"{result.info.get('images_per_second', 0):.0f} images/s; params "
          f"{training.count_params(result.model, result.kind):,}", file=sys.stderr)
    end = rows[-1]["train_seconds"] / 60
    marks = [m for m in (5, 10, 20, 40) if m < end] + [end]  # the run's end once, not twice
    for minutes in marks:
        done = [r for r in rows if r["train_seconds"] <= minutes * 60]
        if done:
            r = done[-1]
            print(f"at {minutes:>4.1f} min: epoch {r['epoch']}, val {r['val_accuracy']:.4f}, test "
                  f"{r['test_accuracy']:.4f} ({r['test_accuracy_mirror']:.4f} with mirror TTA)")
    print(f"curve: {out / stem}.csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
