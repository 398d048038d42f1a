"""Issue 20: does `-P budget_minutes=N` hold, and what does each minute buy?

Runs the real user path, `mlflow run . -e compare --env-manager local -P budget_minutes=N`,
once per budget, one after the other into one store (default: a fresh folder), and records
for each: the wall time of the whole command and the compare's own time (data to report,
what the budget covers) against the budget, the pipelines skipped, and the champion's test
accuracy. The first run estimates costs from the pipelines' YAML (scaled by a probe of this
machine), later ones from the runs before them in the store. The report of any compare in that
store then shows the champion's accuracy against the budget. Alone on the machine: the
networks' epochs are cut by measured time.

    .venv/bin/python benchmarks/budget.py --minutes 5 10 20 [--store /tmp/budget]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_once(minutes: float, store: Path, profile: str) -> dict:
    """One budgeted compare through `mlflow run`; its figures read back from the store."""
    import mlflow

    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OPTUNA_JOURNAL": str(store / "optuna.journal"),
           "STUDY_REPORTS_DIR": str(store / "reports"),
           "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mlflow"), "run", str(ROOT), "-e", "compare",
         "--env-manager", "local", "--experiment-name", "budget", "-P", f"profile={profile}",
         "-P", f"budget_minutes={minutes:g}"], env=env, cwd=store, capture_output=True,
        text=True)
    wall = time.perf_counter() - started
    (store / f"compare-{minutes:g}.log").write_text(proc.stdout + proc.stderr)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("budget")
    parent = client.search_runs([exp.experiment_id], "tags.role = 'compare'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    finals = client.search_runs([exp.experiment_id], (
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.role = 'final'"))
    best = max(finals, key=lambda r: r.data.metrics.get("test_accuracy", 0.0), default=None)
    skipped_file = Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="", dst_path=tempfile.mkdtemp())) / "skipped.txt"
    skipped = ([line.split(":")[0] for line in skipped_file.read_text().splitlines()]
               if skipped_file.is_file() else [])
    return {"budget_minutes": minutes, "exit": proc.returncode, "wall_minutes": wall / 60,
            # data loading to the written report: what the budget holds
            "compare_minutes": parent.data.metrics.get("total_seconds", float("nan")) / 60,
            "within_5pct": parent.data.metrics.get("total_seconds", 1e9) / 60 <= 1.05 * minutes,
            "champion": best.data.tags.get("pipeline") if best else "-",
            "champion_accuracy": best.data.metrics.get("test_accuracy") if best else float("nan"),
            "models": len(finals), "skipped": " ".join(skipped) or "-",
            "run_id": parent.info.run_id}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--store", type=Path, default=None, help="default: a fresh folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="budget-"))
    store.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for minutes in args.minutes:
        row = run_once(minutes, store, args.profile)
        rows.append(row)
        print(f"budget {minutes:g} min: exit {row['exit']}, wall {row['wall_minutes']:.2f} min "
              f"(compare {row['compare_minutes']:.2f}), within +5%: {row['within_5pct']}, "
              f"champion {row['champion']} {row['champion_accuracy']:.4f}, "
              f"{row['models']} models, skipped: {row['skipped']}", flush=True)
    with open(args.out / "budget.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"store: {store} (reports under {store / 'reports'}); table: {args.out / 'budget.csv'}")
    return 0 if all(r["exit"] == 0 and r["within_5pct"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
