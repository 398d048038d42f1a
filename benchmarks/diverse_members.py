"""Issue 14: would other architectures give the ensemble members that err differently?

Two networks built to differ from cnn_modern where an ensemble needs it, trained with the
study's own trainer (study.training.final_fit: the same split, weight average, schedule sizing
and mirror TTA decided on validation) and added to a stored compare's validation/test
probabilities as candidates of the ensemble's greedy selection (study.ensemble.select, chosen
on validation; the test set scores the chosen weights once):
- cnn_resnet: a small pre-activation ResNet (residual blocks, global *average* pooling, ReLU,
  AdamW) with cnn_modern's mirrors and shifts;
- cnn_classic: a plain conv -> pool stack with dropout and a flatten + dense head, Adam, mirrors
  only (no shifts, no weight average): the seed report's style, made stronger;
- cnn_lowres: cnn_modern's recipe on another view of the data, 14x14 images.
For each it prints accuracy, agreement and the Jaccard overlap of its test errors with the
stored models (errors both make / errors either makes), then the ensemble with it. Last, a
diagnostic that never feeds the product: greedy weights chosen *on the test set*, an upper
bound of what any selection of these members could score.

    MLFLOW_TRACKING_URI=sqlite:////tmp/c30/mlflow.db .venv/bin/python \
        benchmarks/diverse_members.py --run-id f9a41e87481941a98a95ea533f068e71

Measured 2026-11-29 on the AVX2 host, against the five-specialist quick compare of stop 30
(ensemble 0.9407, best single cnn_upper_d 0.9385, cnn_modern 0.9363): cnn_resnet (14 epochs,
1,087 s) 0.9315 test, Jaccard 0.58 with cnn_modern; cnn_classic (15 epochs, 1,128 s) 0.9318,
Jaccard 0.54 (same-recipe draws: 0.66-0.72; cnn_modern_b 0.59; classical models 0.27-0.38 at
0.84-0.90). Ensembles: without specialists 0.9379 -> 0.9389 / 0.9391 / 0.9393 (+resnet /
+classic / both; +0.26 / +0.28 / +0.30 over cnn_modern); with cnn_upper and cnn_upper_b
0.9383 / 0.9406 / 0.9393; with all five 0.9395 / 0.9402 / 0.9402 (+0.10 / +0.17 / +0.17).
cnn_lowres (16 epochs, 551 s; measured by the same code as a script) 0.9128 test, Jaccard 0.45,
the most different and too weak to earn weight (0.9379 without specialists, unchanged).
Weights chosen on the test set (the bound): 0.9439 with every model, 0.9402 without the
specialists; geometric instead of arithmetic means changed nothing (0.9376-0.9401).

cnn_resnet and cnn_classic are now optional pipelines and train from their YAML (30 epochs in
quick); the figures above are `--epochs 14` and `--epochs 15`.

Stronger and still different: `--candidate cnn_resnet --candidate cnn_classic --epochs 30 --out
DIR` (2,310 s and 2,226 s here; `--reuse` reads the saved probabilities back) gave 0.9386 and
0.9398 on test, errors shared with cnn_modern 0.55 / 0.55, and ensembles of 0.9428 without
specialists (+0.30 [+0.03, +0.59] over cnn_classic, the best single model), 0.9441 with the
shipped pair cnn_upper + cnn_upper_b (+0.43 [+0.18, +0.70]), 0.9450 with all five (+0.52
[+0.26, +0.80]); bound 0.9468. Brackets: a paired bootstrap over the test images.

Second draws (2026-11-29, stop 33): `--candidate cnn_classic --set seed_offset=21 --tag
cnn_classic_b` and `--candidate cnn_resnet --set erase=0.5 --set seed_offset=12 --tag
cnn_resnet_b` (with --out DIR; run two at a time with STUDY_TF_THREADS=1: 3,245 s, 3,426 s)
scored 0.9379 and 0.9378 on test (0.9442 / 0.9457 validation), errors shared with their first
draws 0.69 / 0.62, with other networks 0.55-0.57. `--saved DIR/cnn_resnet-30ep.npz --saved ...`
(the four networks) reads them back: with the shipped pair, all four give 0.9446 (+0.48
[+0.21, +0.76] over cnn_classic); across the 45 mixes printed the ensemble stays at 0.940-0.945
and the bound at 0.9468, while the gain over the best single model runs from +0.14 to +0.66;
with the shipped pair and two to four networks it is +0.29 to +0.48 where cnn_classic's first
draw (0.9398, the best) is a candidate and +0.51 to +0.66 where it is not.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.models.keras_models import (  # noqa: E402
    _compile, _output, _policy, augmentation, parse_widths, warmup_cosine)

def cnn_lowres(widths: str = "32-64-128", learning_rate: float = 0.1, momentum: float = 0.9,
               weight_decay: float = 5e-4, bn_momentum: float = 0.6, warmup_epochs: float = 1.0,
               steps_per_epoch: int = 188, epochs: int = 16, precision: str = "float32",
               classes: int = 10):
    """cnn_modern's recipe on another view of the data: 14x14 images (2x2 average pooling
    after the augmentation), three stages."""
    import keras
    from keras import layers

    p = _policy(precision)

    def conv(filters: int):
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=p),
                layers.BatchNormalization(momentum=bn_momentum, dtype=p),
                layers.Activation("gelu", dtype=p)]

    stack = [keras.Input(shape=(28, 28, 1)), *augmentation(p, 2), layers.AveragePooling2D(2)]
    for width in parse_widths(widths):
        first = conv(width)
        stack += [first[0], layers.MaxPooling2D(2, padding="same", dtype=p), *first[1:],
                  *conv(width)]
    stack += [layers.GlobalMaxPooling2D(dtype=p), _output(layers, classes)]
    model = keras.Sequential(stack, name="cnn_lowres")
    optimizer = keras.optimizers.SGD(
        learning_rate=warmup_cosine(learning_rate, warmup_epochs, steps_per_epoch, epochs),
        momentum=momentum, nesterov=True, weight_decay=weight_decay)
    return _compile(model, optimizer)


def cnn_attention(stem: str = "32-64", dim: int = 96, blocks: int = 3, heads: int = 4,
                  learning_rate: float = 2e-3, weight_decay: float = 0.05,
                  label_smoothing: float = 0.1, bn_momentum: float = 0.9,
                  warmup_epochs: float = 1.0, steps_per_epoch: int = 188, epochs: int = 16,
                  precision: str = "float32", classes: int = 10):
    """A convolutional stem to 7x7 tokens, then transformer blocks (self-attention over all
    49 positions, a learned position embedding, pre-norm, GELU MLP) and average pooling of the
    tokens: global context from the first block on, where the networks above see the whole
    garment only in their last layers. AdamW with warm-up and cosine decay."""
    import keras
    from keras import layers

    p = _policy(precision)

    class AddPosition(layers.Layer):
        def build(self, shape):
            self.position = self.add_weight(
                shape=(1, shape[1], shape[2]),
                initializer=keras.initializers.RandomNormal(stddev=0.02))

        def call(self, x):
            return x + self.position

    inputs = keras.Input(shape=(28, 28, 1))
    x = inputs
    for layer in augmentation(p, 2):
        x = layer(x)
    for width in parse_widths(stem):
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, dtype=p)(x)
            x = layers.BatchNormalization(momentum=bn_momentum, dtype=p)(x)
            x = layers.Activation("gelu", dtype=p)(x)
        x = layers.MaxPooling2D(2, dtype=p)(x)
    x = layers.Conv2D(dim, 1, dtype=p)(x)
    x = layers.Reshape((x.shape[1] * x.shape[2], dim), dtype=p)(x)
    x = AddPosition(dtype=p)(x)
    for _ in range(blocks):
        h = layers.LayerNormalization(dtype=p)(x)
        h = layers.MultiHeadAttention(heads, dim // heads, dtype=p)(h, h)
        x = layers.Add(dtype=p)([x, h])
        h = layers.LayerNormalization(dtype=p)(x)
        h = layers.Dense(2 * dim, activation="gelu", dtype=p)(h)
        h = layers.Dense(dim, dtype=p)(h)
        x = layers.Add(dtype=p)([x, h])
    x = layers.LayerNormalization(dtype=p)(x)
    x = layers.GlobalAveragePooling1D(dtype=p)(x)
    model = keras.Model(inputs, _output(layers, classes)(x), name="cnn_attention")
    optimizer = keras.optimizers.AdamW(
        learning_rate=warmup_cosine(learning_rate, warmup_epochs, steps_per_epoch, epochs),
        weight_decay=weight_decay)
    return _compile(model, optimizer, label_smoothing)


def cnn_resnet_mixup(mixup: float = 0.2, steps_per_epoch: int = 188, epochs: int = 12,
                     **params):
    """cnn_resnet trained on mixed images (mixup, Zhang et al., ICLR 2018): each batch is
    blended with a shuffled copy of itself by a Beta(a, a) weight and the loss is the same
    blend of the two images' losses, so the network learns smoother boundaries between
    classes than its plain draws, a way to err otherwise. Prediction is unchanged."""
    import keras
    import tensorflow as tf

    from study.models.keras_models import cnn_resnet

    plain = cnn_resnet(steps_per_epoch=steps_per_epoch, epochs=epochs, **params)

    class Mixup(keras.Model):
        def train_step(self, data):
            x, y = data[0], data[1]
            a, b = tf.random.gamma([], mixup), tf.random.gamma([], mixup)
            lam = a / (a + b)
            order = tf.random.shuffle(tf.range(tf.shape(x)[0]))
            mixed = lam * x + (1.0 - lam) * tf.gather(x, order)
            with tf.GradientTape() as tape:
                y_pred = self(mixed, training=True)
                loss = (lam * self._compute_loss(x=mixed, y=y, y_pred=y_pred, training=True)
                        + (1.0 - lam) * self._compute_loss(x=mixed, y=tf.gather(y, order),
                                                           y_pred=y_pred, training=True))
                self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
            grads = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            # training accuracy of the mixed images against their first labels: a trend only
            return self.compute_metrics(x, y, y_pred)

    model = Mixup(plain.input, plain.output, name="cnn_resnet_mixup")
    model.compile(optimizer=plain.optimizer, loss=plain.loss, metrics=["accuracy"])
    return model


# Candidates shipped as (optional) pipelines, trained from their own YAML in pipelines/
SHIPPED = ("cnn_classic", "cnn_resnet")
# name -> (builder, fixed parameters, fit settings) of the ones that are not pipelines
CANDIDATES = {
    "cnn_lowres": (cnn_lowres,
                   {"widths": "32-64-128", "learning_rate": 0.1, "momentum": 0.9,
                    "weight_decay": 5.0e-4, "bn_momentum": 0.6, "warmup_epochs": 1.0},
                   {"batch_size": 256, "epochs": 16, "patience": 1000, "ema": 0.99,
                    "seed_offset": 30}),
    # measured 2026-11-30 (AVX2 host, stop 30's split): 4,451 s, val 0.9394, test 0.9324; adds
    # nothing to the shipped optional set's ensemble (docs/research-log.md, 2026-11-29)
    "cnn_attention": (cnn_attention,
                      {"stem": "32-64", "dim": 96, "blocks": 3, "heads": 4,
                       "learning_rate": 2.0e-3, "weight_decay": 0.05, "label_smoothing": 0.1,
                       "bn_momentum": 0.9, "warmup_epochs": 1.0},
                      {"batch_size": 128, "epochs": 16, "patience": 1000, "ema": 0.99,
                       "seed_offset": 40}),
    # on top of cnn_resnet's shipped settings (BASES); measured 2026-11-30: 2,160 s, val
    # 0.9434, test 0.9385, 63% of its errors shared with cnn_resnet's; adds nothing to the
    # shipped optional set's ensemble (docs/research-log.md)
    "cnn_resnet_mixup": (cnn_resnet_mixup, {"mixup": 0.2}, {"seed_offset": 50}),
}
# candidate -> the shipped pipeline whose params and fit settings it starts from
BASES = {"cnn_resnet_mixup": "cnn_resnet"}


def pipeline_yaml(name: str) -> str:
    """A candidate's pipeline YAML: a network with mirror TTA, its settings, no tuning."""
    import yaml

    from study import pipelines

    _, params, fit = CANDIDATES[name]
    if name in BASES:
        base = pipelines.load(BASES[name])
        params, fit = {**base.params, **params}, {**base.fit, **fit}
    budget = {"n_trials": 0, "timeout": 60}
    return yaml.safe_dump({
        "description": name, "family": "cnn", "reducer": "none", "tta": "mirror",
        "model": name, "params": params, "fit": fit,
        "budget": {"smoke": {**budget, "fit": {"epochs": 1}},
                   "quick": {**budget, "fit": {"epochs": fit["epochs"]}},
                   "full": {**budget, "fit": {"epochs": fit["epochs"]}}}}, sort_keys=False)


def train(name: str, splits, folder: Path, epochs: int | None, changes: dict | None = None,
          label: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """A candidate's quick final fit on the compare's split: validation and test probabilities.
    `changes`: parameters or fit settings that replace its own (another draw, another recipe)."""
    from study import config, models, pipelines, training
    from study.tuning import studies

    if name in SHIPPED:
        spec = pipelines.load(name)
    else:  # the documented way to add a model: a builder in the registry, a pipeline YAML
        models.BUILDERS[name] = models.Builder(CANDIDATES[name][0], "keras")
        (folder / f"{name}.yaml").write_text(pipeline_yaml(name))
        spec = pipelines.load(name, folder)
    params = {**studies.final_params(spec, spec.budget("quick"), {}),
              **({"epochs": epochs} if epochs else {}), **(changes or {})}
    start = time.perf_counter()
    fit, val = training.final_fit(spec, params, splits, config.SEED, progress=f"[{label or name}]")
    return val, fit.predict_proba(splits.x_test), time.perf_counter() - start


def stored_compare(run_id: str):
    """A compare's candidates as its ensemble stage takes them (its settings' exclusions):
    the settings, the final runs, validation and test probabilities by pipeline, the splits."""
    from study import cli, config, data, ensemble, tracking

    cli.configure_logging()
    tracking.configure()
    parent = tracking.find_compare_run(run_id)
    settings = ensemble.load_config()
    runs = [r for r in tracking.final_runs(parent.info.run_id)
            if r["pipeline"] != ensemble.NAME and r["family"] not in settings.exclude_families
            and r.get("reducer") not in settings.exclude_reducers]
    val = {r["pipeline"]: tracking.load_npy(r["run_id"], "evaluation/val_proba.npy") for r in runs}
    test = {r["pipeline"]: tracking.load_npy(r["run_id"], "evaluation/test_proba.npy") for r in runs}
    return settings, runs, val, test, data.make_splits(data.load(), config.profile("quick"))


def ensemble_line(tag: str, names: list[str], val: dict, test: dict, yv: np.ndarray,
                  yt: np.ndarray, settings) -> None:
    """Print the ensemble of `names` (selected on validation, scored on test) and its gain
    over the best single model on test, with a paired bootstrap interval over the images."""
    from study import ensemble

    sel = ensemble.select({n: val[n] for n in names}, yv, settings.rounds, settings.max_members)
    mix = ensemble.combine({n: test[n] for n in sel.weights}, sel.weights)
    best = max(names, key=lambda n: ensemble.accuracy(test[n], yt))
    gain = (mix.argmax(axis=1) == yt).astype(float) - (test[best].argmax(axis=1) == yt)
    rows = np.random.default_rng(0).integers(0, len(yt), (2000, len(yt)))
    low, high = 100 * np.percentile(gain[rows].mean(axis=1), [2.5, 97.5])
    print(f"{tag:32s} ensemble {ensemble.accuracy(mix, yt):.4f} ({100 * gain.mean():+.2f} "
          f"[{low:+.2f}, {high:+.2f}] over {best} {ensemble.accuracy(test[best], yt):.4f}): "
          + ", ".join(f"{n} {w:.2f}" for n, w in sel.weights.items()), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default="latest", help="the compare (default: latest)")
    parser.add_argument("--candidate", action="append", choices=sorted([*SHIPPED, *CANDIDATES]),
                        help="repeatable; default: all")
    parser.add_argument("--epochs", type=int, help="override the epochs (a check run)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--reuse", action="store_true",
                        help="load a candidate's probabilities saved by an earlier run "
                             "(same --out and --epochs) instead of training it again")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="repeatable: a parameter or fit setting that replaces the "
                             "candidate's own (e.g. seed_offset=21, erase=0.5); with --tag")
    parser.add_argument("--saved", action="append", default=[], metavar="NPZ",
                        help="repeatable: probabilities saved by an earlier run (val, test), "
                             "added as a candidate named by the file's stem; alone, nothing "
                             "is trained")
    parser.add_argument("--tag", help="the name its probabilities are printed and saved under "
                                      "(default: the candidate's)")
    args = parser.parse_args()
    import yaml

    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. --set seed_offset=21")
        changes[key] = yaml.safe_load(value)
    if changes and not args.tag:
        parser.error("--set makes another model: name it with --tag (e.g. --tag cnn_classic_b)")
    if args.tag and len(args.candidate or []) != 1:
        parser.error("--tag names one model: give exactly one --candidate")
    for path in args.saved:
        if not Path(path).is_file():
            parser.error(f"--saved {path}: no such file (probabilities this benchmark saved "
                         "with --out)")
    from study import ensemble

    settings, _, val, test, splits = stored_compare(args.run_id)
    yv, yt = splits.y_val, splits.y_test
    acc = ensemble.accuracy

    def report(tag: str, names: list[str]) -> None:
        ensemble_line(tag, names, val, test, yv, yt, settings)

    stored = list(val)
    specialists = [n for n in stored if n.startswith("cnn_upper")]
    generalists = [n for n in stored if n not in specialists]
    shipped = [n for n in specialists if n in ("cnn_upper", "cnn_upper_b")]  # in pipelines/
    report("stored, no specialists", generalists)
    report("stored", stored)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    new = []
    # (name, its saved probabilities, the candidate to train when they are not read back)
    jobs = [(Path(f).stem, Path(f), None) for f in args.saved]
    for candidate in args.candidate or ([] if args.saved else sorted([*SHIPPED, *CANDIDATES])):
        name = args.tag or candidate
        jobs.append((name, out / (f"{name}-{args.epochs}ep.npz" if args.epochs
                                  else f"{name}.npz"), candidate))
    with tempfile.TemporaryDirectory() as folder:
        for name, saved, candidate in jobs:
            if candidate is None or args.reuse and saved.is_file():
                with np.load(saved) as stored_run:
                    val[name], test[name], seconds = stored_run["val"], stored_run["test"], None
            else:
                val[name], test[name], seconds = train(candidate, splits, Path(folder),
                                                       args.epochs, changes, name)
                np.savez(saved, val=val[name], test=test[name])
            wrong = test[name].argmax(axis=1) != yt
            took = "saved" if seconds is None else f"{seconds:.0f} s"
            print(f"{name} ({took}): val {acc(val[name], yv):.4f} test "
                  f"{acc(test[name], yt):.4f}", flush=True)
            for other in stored + new:
                theirs = test[other].argmax(axis=1) != yt
                print(f"  with {other:14s} agree {np.mean(~wrong == ~theirs):.3f} "
                      f"errors shared {np.sum(wrong & theirs) / np.sum(wrong | theirs):.2f}")
            new.append(name)
    for k in range(1, len(new) + 1):
        for chosen in itertools.combinations(new, k):
            report("no specialists + " + "+".join(chosen), generalists + list(chosen))
            report("all stored + " + "+".join(chosen), stored + list(chosen))
            if 0 < len(shipped) < len(specialists):
                report("shipped specialists + " + "+".join(chosen),
                       generalists + shipped + list(chosen))
    # Diagnostic only: weights fitted on the test labels bound what any selection could reach.
    for tag, names in (("every model", list(val)), ("no specialists", generalists + new)):
        bound = ensemble.select({n: test[n] for n in names}, yt, 50, 20)
        print(f"bound ({tag}, weights chosen on the test set): {bound.val_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
