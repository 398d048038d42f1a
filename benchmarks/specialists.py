"""Issue 14's specialists for the confusable upper-body classes, measured offline.

The compare now trains them itself (pipelines/cnn_upper.yaml, cnn_upper_b.yaml, study/
specialists.py; four outputs instead of this script's ten with the group's kept); this script
remains to try other settings against a stored compare without rerunning it.

A specialist is cnn_modern's recipe trained on T-shirt/top, Pullover, Coat and Shirt only
(19,200 of the 48,000 training images, so an epoch costs 40% of cnn_modern's); its class
probabilities within the group are folded into the generalist's (Hinton et al.'s specialists):
p(c) = p_gen(group) * p_spec(c | group) for c in the group, p_gen(c) elsewhere. Each folded
model is added to a compare's stored validation/test probabilities as one more candidate of
the ensemble's greedy selection (study.ensemble.select, chosen on validation; the test set
scores the chosen weights once). Prints, per setting, the folded model alone and the ensemble
with it, against the best single model (folded ones included).

    MLFLOW_TRACKING_URI=sqlite:////tmp/ci27/mlflow.db .venv/bin/python benchmarks/specialists.py \
        --specialist 16:3 --specialist 24:4      # epochs:seed offset, one per specialist

Measured 2026-11-29 (2-core host), on the quick compares at 33769aa and 3db2b03: without
specialists 0.9399 / 0.9390; with the 16-epoch specialist (196-232 s) 0.9414 / 0.9422; with
both (the 24-epoch one: 329-378 s) 0.9425 / 0.9422, +0.51 / +0.48 points over the best single
model (0.9374, the 16-epoch folded specialist). One run each.

Other groups (`--group`), measured 2026-11-30 on the AVX2 host against stop 30's compare with
the shipped optional members (cnn_upper, cnn_upper_b, 30-epoch cnn_resnet and cnn_classic), by a
rule written before their test figures (the validation-only gain, selecting on one half of the
validation rows and scoring on the other, must rise from +0.40 by 0.10): the upper body with
Dress (0,2,3,4,6; 853 s with one thread beside another run) is 0.8965 within its group and
folded lowers every generalist (0.9411-0.9418 validation); footwear (5,7,9; 540 s) is 0.9822
within its group and folded leaves them where they were. Each folded into cnn_modern, cnn_resnet
and cnn_classic, the six together move that gain to +0.44 (footwear alone +0.43, the five-class
group +0.36): not adopted. Test, for the record: 0.9444 with the six, +0.46. Trained as
`--group 0,2,3,4,6 --specialist 16:7` and `--group 5,7,9 --specialist 16:8`; `--generalist`
folds into another pipeline of the compare. The upper-body specialists folded into the two
30-epoch networks instead of cnn_modern (the within-group probabilities are the folded ones
renormalised over the group): +0.35 for the shipped pair, +0.41 for all five.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GROUP = [0, 2, 4, 6]  # T-shirt/top, Pullover, Coat, Shirt: most of every model's errors


def train_specialist(splits, epochs: int, seed_offset: int,
                     group: list[int] = GROUP) -> tuple[np.ndarray, np.ndarray]:
    """A specialist's within-group probabilities (mirror TTA) on the validation and test sets."""
    from study import config, pipelines, training, tuning

    spec = pipelines.load("cnn_modern")
    params = {**tuning.final_params(spec, spec.budget("quick"), {}), "epochs": epochs}
    params.pop("max_seconds", None)
    remap = np.full(10, -1)
    remap[group] = np.arange(len(group))
    tr, va = np.isin(splits.y_train, group), np.isin(splits.y_val, group)
    fit = training.fit(spec, params, splits.x_train[tr], remap[splits.y_train[tr]],
                       splits.x_val[va], remap[splits.y_val[va]], config.SEED + seed_offset,
                       progress=f"[specialist {epochs}:{seed_offset}]")

    def within(x):
        p = 0.5 * (fit.predict_proba(x) + fit.predict_proba(x[:, :, ::-1]))[:, :len(group)]
        return p / p.sum(axis=1, keepdims=True)

    return within(splits.x_val), within(splits.x_test)


def fold(general: np.ndarray, within: np.ndarray, group: list[int] = GROUP) -> np.ndarray:
    """The generalist's probabilities with the group's mass shared out by the specialist."""
    out = general.copy()
    out[:, group] = general[:, group].sum(axis=1, keepdims=True) * within
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default="latest", help="the compare (default: latest)")
    parser.add_argument("--specialist", action="append", default=[],
                        help="epochs:seed_offset of one specialist (repeatable; default 16:3)")
    parser.add_argument("--generalist", default="cnn_modern")
    parser.add_argument("--group", default=",".join(map(str, GROUP)),
                        help="the specialist's classes, comma-separated (default: the upper body)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    try:
        group = sorted({int(c) for c in args.group.split(",")})
    except ValueError:
        parser.error(f"--group {args.group!r}: give class numbers 0-9, comma-separated")
    if len(group) < 2 or not set(group) <= set(range(10)):
        parser.error(f"--group {args.group!r}: give two or more class numbers 0-9")
    from study import cli, config, data, ensemble, tracking

    cli.configure_logging()
    tracking.configure()
    parent = tracking.find_compare_run(args.run_id)
    runs = [r for r in tracking.final_runs(parent.info.run_id)
            if r["pipeline"] not in (ensemble.NAME, "dummy")]
    val = {r["pipeline"]: tracking.load_npy(r["run_id"], "evaluation/val_proba.npy") for r in runs}
    test = {r["pipeline"]: tracking.load_npy(r["run_id"], "evaluation/test_proba.npy") for r in runs}
    splits = data.make_splits(data.load(), config.profile("quick"))
    yv, yt = splits.y_val, splits.y_test
    acc = lambda p, y: float(np.mean(p.argmax(axis=1) == y))  # noqa: E731

    def ensemble_of(v, t) -> tuple[float, float, dict]:
        sel = ensemble.select(v, yv, 30, 8)
        return (acc(ensemble.combine({n: t[n] for n in sel.weights}, sel.weights), yt),
                max(acc(p, yt) for p in t.values()), sel.weights)

    score, best, _ = ensemble_of(val, test)
    print(f"compare {parent.info.run_id}: ensemble without specialists {score:.4f} "
          f"({100 * (score - best):+.2f} points over the best single model {best:.4f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for setting in args.specialist or ["16:3"]:
        epochs, offset = (int(x) for x in setting.split(":"))
        start = time.perf_counter()
        within_val, within_test = train_specialist(splits, epochs, offset, group)
        seconds = time.perf_counter() - start
        tag = "".join(map(str, group))
        np.savez(out / f"specialist-{tag}-{epochs}-{offset}.npz", val=within_val, test=within_test)
        name = f"specialist_{tag}_{epochs}_{offset}"
        val[name] = fold(val[args.generalist], within_val, group)
        test[name] = fold(test[args.generalist], within_test, group)
        score, best, weights = ensemble_of(val, test)
        print(f"+ {name} ({seconds:.0f} s): alone val {acc(val[name], yv):.4f} test "
              f"{acc(test[name], yt):.4f}; ensemble of everything so far {score:.4f} "
              f"({100 * (score - best):+.2f} over the best single {best:.4f}); weights "
              + ", ".join(f"{n} {w:.2f}" for n, w in weights.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
