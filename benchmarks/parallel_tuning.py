"""Benchmark: tuning throughput (trials per minute) with 1 worker against N on this machine.

Each setting runs `study tune --pipeline P --n-trials K --workers W` (the command a parallel
compare and a remote worker use) on a fresh Optuna journal and MLflow store, with the profile's
tuning data. Throughput is counted two ways: over the study's own clock (first trial start to
last trial end: what the workers deliver) and over the command's wall time (start-up included).
Both settings run the same parameter sets, drawn at random once and queued in the study.
Goal (issue 6): 2 workers >= 1.6x the trials per minute of 1 on two cores.

    .venv/bin/python benchmarks/parallel_tuning.py [--pipelines pca_svm] [--trials 8]
        [--workers 1,2] [--profile quick] [--storage postgresql://...]

Time it on a quiet machine: there are only 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(pipeline: str, profile: str, trials: int, workers: int, storage: str | None,
        tmp: Path) -> dict:
    import optuna

    sys.path.insert(0, str(ROOT))
    from study import config, pipelines, tuning

    journal = tmp / f"{pipeline}-{workers}.journal"
    url = storage or str(journal)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow-{pipeline}-{workers}.db",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_RUN_ID", None)
    spec = pipelines.load(pipeline)
    # the same seed, so the same tuning rows; a study of its own per setting on a shared RDB
    seed = config.SEED if storage is None else config.SEED + workers
    # Both settings evaluate the same parameter sets (queued; workers pop each exactly once),
    # so the comparison is of throughput, not of which parameters each sampler happened to draw.
    study = tuning.open_study(spec, spec.budget(profile), seed, tuning.open_storage(url))
    for params in same_params(spec, trials):
        study.enqueue_trial(params)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "study", "tune", "--pipeline", pipeline,
                           "--profile", profile, "--n-trials", str(trials), "--workers",
                           str(workers), "--timeout", "36000", "--storage", url,
                           "--seed", str(seed)],
                          cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{pipeline} with {workers} workers failed:\n{proc.stderr[-2000:]}")
    study = optuna.load_study(study_name=tuning.study_name(spec, profile, seed),
                              storage=tuning.open_storage(url))
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    span = (max(t.datetime_complete for t in done) -
            min(t.datetime_start for t in done)).total_seconds()
    return {"pipeline": pipeline, "workers": workers, "trials": len(done), "span": span,
            "wall": wall, "per_min": 60 * len(done) / span, "per_min_wall": 60 * len(done) / wall,
            "best": study.best_value}


def same_params(spec, n: int) -> list[dict]:
    import optuna

    from study import config, tuning

    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=config.SEED))
    return [tuning.suggest(draw.ask(), spec.search) for _ in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", default="pca_svm")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--storage", default=None, help="an RDB URL (default: a journal file)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    print(f"{os.cpu_count()} cores; {args.trials} trials per setting, {args.profile} profile",
          flush=True)
    print(f"{'pipeline':10s} {'workers':>7s} {'trials':>6s} {'span s':>7s} {'wall s':>7s} "
          f"{'trials/min':>10s} {'(wall)':>7s} {'speed-up':>8s} {'best val':>8s}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline in args.pipelines.split(","):
            base = None
            for workers in counts:
                r = run(pipeline, args.profile, args.trials, workers, args.storage, Path(tmp))
                base = base or r["per_min"]
                print(f"{pipeline:10s} {workers:7d} {r['trials']:6d} {r['span']:7.1f} "
                      f"{r['wall']:7.1f} {r['per_min']:10.2f} {r['per_min_wall']:7.2f} "
                      f"{r['per_min'] / base:7.2f}x {r['best']:8.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
