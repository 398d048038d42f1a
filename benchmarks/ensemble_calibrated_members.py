"""Issue 44: should the ensemble choose its weights on its members' temperature-scaled
validation probabilities instead of the unscaled ones?

Reads a stored compare's final models (their logged validation and test probabilities and
each one's `temperature` metric) and runs the ensemble's own selection (study.ensemble.select,
pipelines/ensemble.yaml's rounds and member cap) both ways: in-sample (select and score on all
validation rows, the issue's criterion: validation accuracy and log loss), and held out
(select on one half of the validation rows, score on the other, both halvings), the log loss
also after the ensemble's own temperature (fitted on the selecting rows, as the stage does).
The test figures are printed for the record; nothing here selects on them.

    MLFLOW_TRACKING_URI=sqlite:////tmp/calib_ens/mlflow.db .venv/bin/python \\
        benchmarks/ensemble_calibrated_members.py --run-id ff700d5221d9408193996591fe9b98b6

Measured 2026-12-03 (a smoke compare of logreg, knn, pca_svm, rf, hgb, mlp_seed, cnn_seed1,
umap_knn; 300 validation rows): the same in-sample validation accuracy (0.8800 both ways);
validation log loss 0.4848 unscaled, 0.4763 scaled, but 0.4238 against 0.4286 after the
ensemble's own temperature (what it serves); held out, 0.8633 against 0.8600 accuracy and
0.4516 against 0.4569 log loss; test 0.8019 against 0.7994. Decision in docs/ensemble.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study import (calibration, config, data, ensemble, ensemble_stage, evaluation,  # noqa: E402
                   tracking)


def figures(val, test, y_val, y_test, select_rows, score_rows, settings) -> dict:
    """Select on `select_rows` of validation, score on `score_rows` (and the test set)."""
    chosen = ensemble.select({n: v[select_rows] for n, v in val.items()}, y_val[select_rows],
                             settings.rounds, settings.max_members)
    v = ensemble.combine({n: val[n] for n in chosen.weights}, chosen.weights)
    t = ensemble.combine({n: test[n] for n in chosen.weights}, chosen.weights)
    own, _ = evaluation.fitted_temperature(v[select_rows], y_val[select_rows])
    return {"weights": {n: round(w, 3) for n, w in chosen.weights.items()},
            "val_accuracy": ensemble.accuracy(v[score_rows], y_val[score_rows]),
            "val_nll": calibration.nll(v[score_rows], y_val[score_rows]),
            "val_nll_own_t": calibration.nll(evaluation.scaled(v, own)[score_rows],
                                             y_val[score_rows]),
            "test_accuracy": ensemble.accuracy(t, y_test),
            "test_nll_own_t": calibration.nll(evaluation.scaled(t, own), y_test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True, help="a stored compare run")
    args = parser.parse_args()
    tracking.configure()
    parent = tracking.find_compare_run(args.run_id)
    profile = parent.data.tags.get("profile", parent.data.params.get("profile", "quick"))
    splits = data.make_splits(data.load(), config.profile(profile))
    y_val, y_test = splits.y_val, splits.y_test
    settings = ensemble.load_config()
    kept, _ = ensemble.usable(ensemble_stage.candidates(tracking.final_runs(args.run_id)),
                              len(y_val), len(y_test), settings.exclude_families)
    temperature = {c.name: c.metrics.get("temperature", 1.0) for c in kept}
    print(f"{len(kept)} candidates, {len(y_val)} validation rows; temperatures: "
          + ", ".join(f"{n} {t:.3g}" for n, t in sorted(temperature.items())))
    order = np.random.default_rng(config.SEED).permutation(len(y_val))
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    every = np.arange(len(y_val))
    for way in ("unscaled", "scaled"):
        t = {c.name: temperature[c.name] if way == "scaled" else 1.0 for c in kept}
        val = {c.name: evaluation.scaled(c.val_proba.astype(np.float64), t[c.name]) for c in kept}
        test = {c.name: evaluation.scaled(c.test_proba.astype(np.float64), t[c.name])
                for c in kept}
        full = figures(val, test, y_val, y_test, every, every, settings)
        held = [figures(val, test, y_val, y_test, a, b, settings)
                for a, b in (halves, halves[::-1])]
        print(f"{way:8s} in-sample: val accuracy {full['val_accuracy']:.4f}, val log loss "
              f"{full['val_nll']:.4f} ({full['val_nll_own_t']:.4f} after the ensemble's own "
              f"temperature); held out: val accuracy "
              f"{np.mean([h['val_accuracy'] for h in held]):.4f}, log loss "
              f"{np.mean([h['val_nll_own_t'] for h in held]):.4f}; test (for the record) "
              f"{full['test_accuracy']:.4f}, log loss {full['test_nll_own_t']:.4f}; weights "
              f"{full['weights']}")


if __name__ == "__main__":
    main()
