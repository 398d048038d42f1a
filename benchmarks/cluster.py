"""Benchmark: the ten classical pipelines of a quick compare one at a time, side by side
(--parallel 2, the local process pool) and as tasks on a Dask LocalCluster (--cluster local:2).

Each mode is a real compare in a fresh store (SQLite tracking, Optuna journal) under one
folder; recorded per mode: the command's wall time, the compare's own `pipelines_seconds`
(the pipelines stage alone) and `total_seconds` (data to written report), and every
pipeline's test accuracy, which must agree across modes (the engine changes where a pipeline
runs, not what it fits; one thread instead of two may reorder float sums). Run it alone on
the machine: the figures are wall time.

    .venv/bin/python benchmarks/cluster.py --out /tmp/cluster-bench     # ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

CLASSICAL = "dummy,hgb,knn,logreg,pca_logreg,pca_rf,pca_svm,rf,umap_knn,umap_svm"
MODES = {"one at a time": [], "parallel=2": ["--parallel", "2"],
         "cluster=local:2": ["--cluster", "local:2"]}


def run_mode(folder: Path, extra: list[str], profile: str, pipelines: str) -> dict:
    """One compare in its own store; its wall time, stage times and accuracies."""
    import mlflow

    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OPTUNA_JOURNAL": str(folder / "o.journal"),
           "STUDY_REPORTS_DIR": str(folder / "reports"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_RUN_ID", None)
    started = time.perf_counter()
    with open(folder / "compare.log", "w") as log:
        code = subprocess.call([sys.executable, "-m", "study", "compare", "--profile", profile,
                                "--pipelines", pipelines, *extra], cwd=folder, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("fashion-mnist")
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    finals = client.search_runs([exp.experiment_id], "tags.role = 'final' and "
                                f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {"exit": code, "wall": wall, "pipelines": parent.data.metrics["pipelines_seconds"],
            "total": parent.data.metrics["total_seconds"],
            "accuracy": {r.data.tags["pipeline"]: r.data.metrics["test_accuracy"] for r in finals}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/cluster-bench", help="a new folder")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--pipelines", default=CLASSICAL)
    parser.add_argument("--only", default=",".join(MODES), help="modes, comma-separated")
    args = parser.parse_args()
    out = Path(args.out)
    results = {}
    for mode in args.only.split(","):
        folder = out / mode.replace("=", "-").replace(":", "").replace(" ", "-")
        print(f"{mode}: compare of {args.pipelines} ({args.profile}) in {folder}", flush=True)
        results[mode] = run_mode(folder, MODES[mode], args.profile, args.pipelines)
        r = results[mode]
        print(f"  exit {r['exit']}, wall {r['wall'] / 60:.2f} min, pipelines stage "
              f"{r['pipelines'] / 60:.2f} min, data to report {r['total'] / 60:.2f} min",
              flush=True)
    first = next(iter(results.values()))
    print("\n| mode | exit | wall (min) | pipelines stage (min) | data to report (min) | "
          "vs one at a time | largest accuracy difference |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for mode, r in results.items():
        diffs = {n: abs(a - first["accuracy"].get(n, float("nan")))
                 for n, a in r["accuracy"].items()}
        worst = max(diffs, key=lambda n: diffs[n])
        print(f"| {mode} | {r['exit']} | {r['wall'] / 60:.2f} | {r['pipelines'] / 60:.2f} | "
              f"{r['total'] / 60:.2f} | {r['pipelines'] / first['pipelines']:.2f}x | "
              f"{diffs[worst]:.4f} ({worst}) |")
    return 0 if all(r["exit"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
