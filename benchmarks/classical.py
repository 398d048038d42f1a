"""Benchmark: every classical pipeline through the real compare path (quick profile).

Prints per-pipeline tuning, final-fit and total seconds with test accuracy against the
Zalando benchmark's best of the same family, and the total wall time (goal: <= 11 minutes,
PyCaret's compare_models time for 10 untuned models on this machine).

    .venv/bin/python benchmarks/classical.py [--profile quick] [--pipelines a,b] [--workers 2]
        [--parallel 2]

Runs in a temporary MLflow store and Optuna journal, so nothing is reused between runs.
Time it on a quiet machine: there are only 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tempfile
import time

CLASSICAL = ["dummy", "logreg", "pca_logreg", "pca_svm", "rf", "pca_rf", "knn", "hgb",
             "umap_knn", "umap_svm"]
# Xiao et al. 2017, Table 3 (best of each family); PyCaret's best classical here: 0.894.
REFERENCE = {"linear": 0.842, "random_forest": 0.873, "svm": 0.897, "knn": 0.854,
             "gradient_boosting": 0.880, "baseline": 0.100}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--pipelines", default=",".join(CLASSICAL))
    parser.add_argument("--workers", type=int, default=1, help="tuning workers per pipeline")
    parser.add_argument("--parallel", type=int, default=1, help="pipelines side by side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["OPTUNA_JOURNAL"] = f"{tmp}/optuna.journal"
        os.environ["STUDY_REPORTS_DIR"] = f"{tmp}/reports"  # not into the project's reports/
        os.chdir(tmp)
        from study import compare, tracking

        start = time.perf_counter()
        result = compare.compare(args.profile, args.pipelines, workers=args.workers,
                                 parallel=args.parallel)
        wall = time.perf_counter() - start
        runs = {r["pipeline"]: r for r in tracking.final_runs(result.run_id)}
        print(f"\n{'pipeline':12s} {'family':18s} {'tune s':>7s} {'fit s':>7s} {'total s':>8s} "
              f"{'test acc':>8s} {'ref':>6s}  verdict")
        best = {}  # the acceptance is per family: its best pipeline against the reference
        for row in result.rows:
            best.setdefault(row["family"], row["pipeline"])
        for row in result.rows:
            m = runs[row["pipeline"]]["metrics"]
            ref = REFERENCE.get(row["family"])
            verdict = "" if ref is None else ("meets" if m["test_accuracy"] >= ref else "misses")
            if ref is not None and best[row["family"]] == row["pipeline"]:
                verdict = f"family best: {verdict.upper()}"
            print(f"{row['pipeline']:12s} {row['family']:18s} {m['tuning_seconds']:7.1f} "
                  f"{m['fit_seconds']:7.1f} {m.get('pipeline_seconds', float('nan')):8.1f} "
                  f"{m['test_accuracy']:8.4f} {ref if ref else '':>6}  {verdict}")
        for name, reason in result.failures.items():
            print(f"{name:12s} FAILED: {reason}")
        print(f"\ntotal wall time (data, tuning, final fits, tests, logging, figures): "
              f"{wall:.0f} s = {wall / 60:.1f} min (goal <= 11 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
