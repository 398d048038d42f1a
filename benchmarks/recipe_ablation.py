"""Benchmark: what each choice of a network's recipe is worth, measured on validation. Trains
the pipeline's recipe for a profile (default: cnn_modern, quick) as written, then once per
variant that changes one choice back (no weight averaging, no label smoothing, Keras' batch-norm
momentum, no augmentation, ...), each through the study's own training path on the whole
training split with the same seed, and records validation accuracy (plain and with mirror
test-time augmentation), test accuracy and training seconds.

    .venv/bin/python benchmarks/recipe_ablation.py                      # every variant, ~1 h here
    .venv/bin/python benchmarks/recipe_ablation.py --only recipe,no_ema

Writes <out>/<pipeline>-<profile>-ablation.csv and .md (a row per finished variant, rewritten
after each, so a killed run keeps what it measured) and each variant's validation and test
probabilities (.npz, for ensemble experiments). Validation decides (mirror TTA counted only
where it raises validation accuracy, as the study decides it); the test column is a
benchmark's measurement and selects nothing. Run on a quiet machine: seconds are wall time.
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

from study import config, data, pipelines, training, tuning  # noqa: E402

# One change each against the recipe as written; the keys are the pipeline's own settings.
VARIANTS: dict[str, tuple[str, dict]] = {
    "recipe": ("the recipe as written", {}),
    "no_ema": ("no weight averaging (the last weights)", {"ema": None}),
    "no_label_smoothing": ("label smoothing 0 instead of 0.2", {"label_smoothing": 0.0}),
    "bn_momentum_0.99": ("batch-norm momentum 0.99 (Keras' default) instead of 0.6",
                         {"bn_momentum": 0.99}),
    "no_augment": ("no random mirror images or shifts", {"augment": False}),
    "no_shift": ("mirror images only (no 2-pixel shifts)", {"shift": 0}),
    "erase_0.5": ("adds random erasing (probability 0.5)", {"erase": 0.5}),
}


def run(spec, params: dict, splits, seed: int) -> tuple[dict, dict]:
    """Fit once; accuracies of the kept weights, plain and mirrored, and their probabilities."""
    fit = training.fit(spec, params, splits.x_train, splits.y_train, splits.x_val,
                       splits.y_val, seed=seed, cache=False)
    row = {"fit_seconds": round(fit.fit_seconds, 1), "best_epoch": fit.best_epoch}
    probs = {}
    for split, x, y in (("val", splits.x_val, splits.y_val),
                        ("test", splits.x_test, splits.y_test)):
        plain = fit.predict_proba(x)
        mirrored = 0.5 * (plain + fit.predict_proba(x[:, :, ::-1]))
        row[f"{split}_accuracy"] = round(training.accuracy(plain, y), 4)
        row[f"{split}_accuracy_mirror"] = round(training.accuracy(mirrored, y), 4)
        probs[split], probs[f"{split}_mirror"] = plain, mirrored
    return row, probs


def kept(row: dict) -> tuple[float, float, str]:
    """Validation and test accuracy of the model the study would keep: mirror TTA only where it
    raises validation accuracy (the study's own rule)."""
    if training.keeps_mirror(row["val_accuracy"], row["val_accuracy_mirror"]):
        return row["val_accuracy_mirror"], row["test_accuracy_mirror"], "mirror"
    return row["val_accuracy"], row["test_accuracy"], "none"


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["variant"] == "recipe"), None)
    lines = ["| variant | change | val (plain / mirror) | val, kept | vs recipe | test, kept | "
             "TTA | fit s |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        val, test, tta = kept(r)
        delta = f"{(val - kept(base)[0]) * 100:+.2f} pt" if base and r is not base else ""
        lines.append(f"| {r['variant']} | {r['change']} | {r['val_accuracy']:.4f} / "
                     f"{r['val_accuracy_mirror']:.4f} | {val:.4f} | {delta} | {test:.4f} | {tta} | "
                     f"{float(r['fit_seconds']):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="cnn_modern")
    parser.add_argument("--profile", default="quick", choices=list(config.PROFILES))
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated variants, in order (of {', '.join(VARIANTS)})")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--out", default=str(config.PROJECT_ROOT / "benchmarks" / "results"))
    parser.add_argument("--table", metavar="CSV", help="only print the table of a finished run")
    args = parser.parse_args()
    if args.table:
        with open(args.table, newline="") as f:
            rows = [{k: (float(v) if k.endswith(("accuracy", "accuracy_mirror")) else v)
                     for k, v in r.items()} for r in csv.DictReader(f)]
        print(table(rows))
        return 0

    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    spec = pipelines.load(args.pipeline)
    recipe = tuning.final_params(spec, spec.budget(args.profile), {})
    recipe.pop("max_seconds", None)  # the whole schedule for every variant
    splits = data.make_splits(data.load(), config.profile("quick"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{spec.name}-{args.profile}-ablation"
    rows: list[dict] = []
    print(f"{spec.name} ({args.profile} recipe): {recipe}", file=sys.stderr)
    for i, name in enumerate(names, 1):
        change, overrides = VARIANTS[name]
        params = {**recipe, **overrides}
        started = time.perf_counter()
        print(f"[{i}/{len(names)}] {name}: {change} ...", file=sys.stderr, flush=True)
        row, probs = run(spec, params, splits, args.seed)
        rows.append({"variant": name, "change": change, **row})
        np.savez_compressed(f"{stem}-{name}.npz", **probs)
        with open(f"{stem}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        Path(f"{stem}.md").write_text(table(rows))
        print(f"[{i}/{len(names)}] {name}: val {row['val_accuracy']:.4f} "
              f"({row['val_accuracy_mirror']:.4f} mirror), test {row['test_accuracy']:.4f} "
              f"({row['test_accuracy_mirror']:.4f} mirror), {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    print(table(rows))
    print(f"table: {stem}.md and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
