"""Issue 43's acceptance benchmark: does a time budget hold, cover every family, and plan what runs?

Runs the real user path, `mlflow run . -e compare --env-manager local -P budget_minutes=N`,
once per budget, each on its own fresh store by default (`<store>/b<N>/`: the issue asks for a
fresh store, so every budget plans from the YAML costs and this machine's probes, not from the
runs before it; `--no-fresh-each` runs them one after the other into one store instead). Per
budget: the compare's `total_seconds` against the budget, the whole command's wall time, the
families covered and not (and the budget the plan names as covering them), the pipelines
skipped, the champion (chosen on validation) with its test accuracy, and the networks stopped by
their time cap. Then every pipeline: the seconds planned before any work (the compare's
plan.txt) and at its turn (its "=== i/n: name [clock]; ... ~M s" progress line) against what it
took (`pipeline_seconds` of its final run), with the issue's bars as PASS/FAIL.

What each minute buys: with a fresh store per budget each compare's report sees only its own
compare, so the benchmark draws the report's figure (figures.fig_minutes) once more from all the
budgets' compares into `<store>/minutes.png` (right: each budget's champion; left: the largest
budget's compare), beside the tables (`<store>/budget.md`).

    .venv/bin/python benchmarks/budget.py --minutes 10 20 40 [--store DIR] [--no-fresh-each]
        [--profile quick] [--host-speed]

`--least PIPELINE...` instead times sklearn pipelines at their least setting (the fixed params
a budget's coverage runs them with), for their YAML's `cost: quick: least_seconds:`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent  # the project's virtualenv (mlflow run starts `python` on PATH)
# ../shared/bench/host_speed.py beside the clone (or beside the worktrees' folder)
HOST_SPEED = next((path for path in (ROOT.parent / "shared" / "bench" / "host_speed.py",
                                     ROOT.parent.parent / "shared" / "bench" / "host_speed.py")
                   if path.is_file()), ROOT.parent / "shared" / "bench" / "host_speed.py")
EXPERIMENT = "budget"

# the bars
MEDIAN_ERROR, WORST_ERROR, OVERRUN, COVER_ALL_FROM = 0.20, 0.50, 0.05, 20.0

# a plan.txt row: pipeline, share, then "N s allowed: ...; ~M s (source)" or "skip (...)"
PLAN_ROW = re.compile(r"^(\S+)\s+(\d[\d.]*)\s+(.+)$")
# a progress line under a budget (budget_run.run): "=== pipeline 3/16: name [#...] ...; plan"
TURN = re.compile(r"=== (?:pipeline )?(\d+)/(\d+): (\S+) (\[.*?\] [^;]*); (.+)$")
SKIP_TURN = re.compile(r"=== (?:pipeline )?(\d+)/(\d+): (\S+) skipped \((.*)\) \[")
COVERS = re.compile(r"covers (\d+) of (\d+) families")


def seconds_of(plan: str) -> dict[str, float | int | None]:
    """What an allotment's description (timebudget.Allotment.describe) says: allowed and
    expected seconds (expected: the allowance when there is no estimate), its epochs."""
    allowed = re.match(r"(\d+) s allowed", plan)
    guess = re.search(r"; ~(\d+) s \((\w+)\)$", plan)
    epochs = re.search(r"(\d+) epochs", plan)
    return {"allowed": float(allowed.group(1)) if allowed else None,
            "expected": float(guess.group(1)) if guess else (
                float(allowed.group(1)) if allowed else None),
            "source": guess.group(2) if guess else None,
            "epochs": int(epochs.group(1)) if epochs else None}


def parse_plan(text: str) -> dict:
    """budget_run.plan_text's output: {rows: {name: describe()}, covered, families,
    not_covered, covering_minutes}."""
    rows = {}
    for line in text.splitlines()[3:]:  # the head, the table's header and its rule
        match = PLAN_ROW.match(line)
        if not match or line.startswith(("expected:", "covers ")):
            break
        rows[match.group(1)] = match.group(3).strip()
    cover_line = next((line for line in text.splitlines() if COVERS.match(line)), "")
    covers = COVERS.match(cover_line)
    missing = re.search(r"; not covered: ([^;]+)", cover_line)
    need = re.search(r"on this machine is (\d+) min", cover_line)
    return {"rows": rows, "covered": int(covers.group(1)) if covers else None,
            "families": int(covers.group(2)) if covers else None,
            "not_covered": missing.group(1).split(", ") if missing else [],
            "covering_minutes": int(need.group(1)) if need else None}


def parse_turns(log: str) -> dict[str, dict]:
    """The compare's progress lines under a budget: {name: {plan, clock}} of those that ran,
    {name: {skipped}} of those skipped at their turn (one run later in the leftovers wins)."""
    turns: dict[str, dict] = {}
    for line in log.splitlines():
        match = TURN.search(line)
        if match and " skipped (" not in line:
            turns[match.group(3)] = {"plan": match.group(5).strip(), "clock": match.group(4),
                                     "order": len(turns)}
            continue
        match = SKIP_TURN.search(line)
        if match and match.group(3) not in turns:
            turns[match.group(3)] = {"skipped": match.group(4), "order": len(turns)}
    return turns


def host_context(run_host_speed: bool) -> str:
    """This machine's speed: the planner's probe, and ../shared/bench/host_speed.py when asked
    (~20-40 s: it trains a small CNN)."""
    from study import config, timebudget

    lines = [f"timebudget.probe_speed: {timebudget.probe_speed(config.COST_HOST_GFLOPS):.2f}x "
             "the host the YAML costs were measured on (one-thread sgemm)"]
    if run_host_speed and HOST_SPEED.is_file():
        out = subprocess.run([sys.executable, str(HOST_SPEED)], capture_output=True, text=True,
                             timeout=300)
        lines += [f"host_speed.py: {line}" for line in out.stdout.splitlines() if line.strip()]
    elif run_host_speed:
        lines.append(f"host_speed.py: not found at {HOST_SPEED}")
    return "\n".join(lines)


def run_once(minutes: float, store: Path, profile: str) -> dict:
    """One budgeted compare through `mlflow run`; its figures read back from the store and log."""
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "OPTUNA_JOURNAL": str(store / "optuna.journal"),
           "STUDY_REPORTS_DIR": str(store / f"reports-{minutes:g}"), "PYTHONPATH": str(ROOT),
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    log_path = store / f"compare-{minutes:g}.log"  # written as it goes: `tail -f` shows progress
    started = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.run(
            [str(BIN / "mlflow"), "run", str(ROOT), "-e", "compare", "--env-manager", "local",
             "--experiment-name", EXPERIMENT, "-P", f"profile={profile}",
             "-P", f"budget_minutes={minutes:g}"], env=env, cwd=store, stdout=out,
            stderr=subprocess.STDOUT)
    row = {"budget_minutes": minutes, "exit": proc.returncode,
           "wall_seconds": time.perf_counter() - started, "store": str(store), "profile": profile}
    return read_back(row, log_path.read_text())


def read_back(row: dict, log: str) -> dict:
    """A budget's figures from its store (the latest compare of the experiment) and its log."""
    import mlflow

    from study import leaderboard, pipelines, timebudget, tracking

    mlflow.set_tracking_uri(f"sqlite:///{Path(row['store']) / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    parents = client.search_runs([exp.experiment_id], "tags.role = 'compare'",
                                 order_by=["attributes.start_time DESC"], max_results=1) if exp \
        else []
    if not parents:
        said = [line for line in log.splitlines() if line.startswith("error:")] or \
            log.strip().splitlines()[-1:] or ["no compare run"]
        return {**row, "error": said[-1]}
    parent = parents[0]
    pid = parent.info.run_id
    plan = parse_plan(tracking.load_text(pid, "plan.txt") or "")
    turns = parse_turns(log)
    finals = tracking.final_runs(pid)
    champion = leaderboard.select_champion(leaderboard.rank(finals))
    skipped_text = tracking.load_text(pid, "skipped.txt") or ""
    specs = {s.name: s for s in pipelines.resolve("all")}
    ran = [r["pipeline"] for r in finals if r.get("pipeline") in specs]
    wanted = set(timebudget.coverage(list(specs.values()), {}, math.inf).families)
    covered = set().union(*(timebudget.families_of(specs[n]) for n in ran)) & wanted
    per_pipeline = []
    for r in finals:
        name, turn = r.get("pipeline"), turns.get(r.get("pipeline"), {})
        if name not in specs:  # the ensemble: not planned as a pipeline
            continue
        at_turn = seconds_of(turn.get("plan", ""))
        before = seconds_of(plan["rows"].get(name, ""))
        epochs_run = r["metrics"].get("epochs_run")
        limited = r.get("limited_by", "-")
        capped = (r.get("stopped_by_time_cap") == "true" or "time cap" in limited
                  or bool(at_turn["epochs"] and epochs_run and epochs_run < at_turn["epochs"]
                          and "early stopping" not in limited))
        per_pipeline.append({
            "pipeline": name, "planned_before": before["expected"],
            "planned_at_turn": at_turn["expected"], "order": turn.get("order", len(turns)),
            # "none": no estimate (a profile without YAML costs): it was given its allowance
            "source": at_turn["source"] or ("none" if turn.get("plan") else "-"),
            "actual": r["metrics"].get("pipeline_seconds"), "epochs_planned": at_turn["epochs"],
            "epochs_run": int(epochs_run) if epochs_run else None, "limited_by": limited,
            "cap_stopped": capped})
    per_pipeline.sort(key=lambda p: p["order"])  # in the order they ran
    total = parent.data.metrics.get("total_seconds")
    return {**row, "run_id": pid, "total_seconds": total,
            "overrun": total / (60 * row["budget_minutes"]) - 1 if total else None,
            "covered": sorted(covered), "not_covered": sorted(wanted - covered),
            "plan_covered": plan["covered"], "plan_families": plan["families"],
            "plan_not_covered": plan["not_covered"], "covering_minutes": plan["covering_minutes"],
            "skipped": [line.split(":")[0] for line in skipped_text.splitlines() if line],
            "champion": champion["pipeline"] if champion else "-",
            "champion_val": champion["val_accuracy"] if champion else float("nan"),
            "champion_test": champion["test_accuracy"] if champion else float("nan"),
            "cap_stopped": [p["pipeline"] for p in per_pipeline if p["cap_stopped"]],
            "pipelines": per_pipeline}


def error(planned: float | None, actual: float | None) -> float | None:
    """Actual against planned seconds, as a signed fraction of the planned (at least 1 s: the
    plans print whole seconds, and a pipeline planned at 0 s that took a minute missed by most)."""
    return actual / max(planned, 1.0) - 1 if planned is not None and actual is not None else None


def verdicts(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's acceptance bars over every budget's row: (bar, passed, the figures)."""
    out = []
    for key, what in (("planned_at_turn", "at its turn"), ("planned_before", "in the plan")):
        errors = [abs(e) for r in rows for p in r.get("pipelines", [])
                  if (e := error(p[key], p["actual"])) is not None]
        if errors:
            median, worst = statistics.median(errors), max(errors)
            out.append((f"planned {what} vs actual: median |error| <= 20%, none > 50%",
                        median <= MEDIAN_ERROR and worst <= WORST_ERROR,
                        f"median {median:.0%}, worst {worst:.0%} of {len(errors)}"))
    for r in rows:
        minutes = r["budget_minutes"]
        if r.get("overrun") is None:
            out.append((f"{minutes:g} min: a compare ran", False, r.get("error", "")))
            continue
        out.append((f"{minutes:g} min: ends within +5% of its budget", r["overrun"] <= OVERRUN,
                    f"{r['total_seconds']:.0f} s, {r['overrun']:+.1%}"))
        if minutes >= COVER_ALL_FROM:
            out.append((f"{minutes:g} min: every family covered", not r["not_covered"],
                        ", ".join(r["not_covered"]) or "all"))
        elif r["not_covered"]:
            named = bool(r["plan_not_covered"] and r["covering_minutes"])
            out.append((f"{minutes:g} min: the plan names what it leaves out and the budget "
                        "that covers it", named,
                        f"{', '.join(r['plan_not_covered']) or '-'}; "
                        f"{r['covering_minutes'] or '?'} min"))
        out.append((f"{minutes:g} min: no network stopped by its time cap",
                    not r["cap_stopped"], ", ".join(r["cap_stopped"]) or "none"))
    return out


def tables(rows: list[dict], host: str) -> str:
    """The summary, every pipeline, and the verdicts, as markdown."""
    from study import tables as text_tables

    summary = [[f"{r['budget_minutes']:g}",
                f"{r['total_seconds']:.0f} ({r['overrun']:+.1%})" if r.get("total_seconds")
                else "-", f"{r['wall_seconds']:.0f}",
                f"{len(r.get('covered', []))}/"
                f"{len(r.get('covered', [])) + len(r.get('not_covered', []))}",
                ", ".join(r.get("not_covered", [])) or "-",
                f"{r['covering_minutes']} min" if r.get("covering_minutes") else "-",
                ", ".join(r.get("skipped", [])) or "-",
                f"{r.get('champion', '-')} (val {r.get('champion_val', math.nan):.4f})",
                f"{r.get('champion_test', math.nan):.4f}",
                ", ".join(r.get("cap_stopped", [])) or "none", str(r["exit"])]
               for r in rows]
    lines = ["# Time budget benchmark (issue 43)", "", "```", host, "```", "",
             text_tables.markdown(
                 ["budget min", "compare s (vs budget)", "wall s", "families", "not covered",
                  "plan: covers all at", "skipped", "champion (on validation)", "its test acc",
                  "stopped by time cap", "exit"], summary), ""]
    detail = []
    for r in rows:
        for p in r.get("pipelines", []):
            e_turn, e_plan = error(p["planned_at_turn"], p["actual"]), error(
                p["planned_before"], p["actual"])
            detail.append([f"{r['budget_minutes']:g}", p["pipeline"],
                           _num(p["planned_before"]), _num(p["planned_at_turn"]),
                           p["source"], _num(p["actual"]),
                           f"{e_plan:+.0%}" if e_plan is not None else "-",
                           f"{e_turn:+.0%}" if e_turn is not None else "-",
                           f"{p['epochs_run'] or '-'}/{p['epochs_planned'] or '-'}",
                           p["limited_by"]])
    lines += [text_tables.markdown(
        ["budget", "pipeline", "plan s", "at turn s", "estimate", "actual s", "error vs plan",
         "error at turn", "epochs run/planned", "limited by"], detail), ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {bar} ({figures})"
              for bar, ok, figures in verdicts(rows)]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def minutes_figure(rows: list[dict], path: Path) -> Path | None:
    """The report's "what each minute buys" figure over every budget's compare (each in its
    own store: the report of one sees only its own)."""
    import mlflow

    from study import figures, tracking
    from study.report.context import _timeline

    budgets, timeline = [], []
    for r in sorted((r for r in rows if r.get("run_id")), key=lambda r: r["budget_minutes"]):
        mlflow.set_tracking_uri(f"sqlite:///{Path(r['store']) / 'mlflow.db'}")
        budgets += [b for b in tracking.budgeted_compares(r["run_id"], r["profile"])
                    if b["run_id"] == r["run_id"]]
        # the left panel: the largest budget's compare, as its report shows it
        timeline = _timeline(mlflow.MlflowClient().get_run(r["run_id"]),
                             tracking.final_runs(r["run_id"]))
    return figures.fig_minutes(timeline, budgets, path) if budgets else None


def least_costs(names: list[str], profile: str, repeats: int = 2) -> list[dict]:
    """Each sklearn pipeline at its least setting (no tuning: its YAML's fixed `params`), fitted
    on the profile's training rows the way the compare's final fit does (training.final_fit,
    then every test image predicted), `repeats` times (the lower counts: the host is shared).
    Per fit its seconds, and the matrix-multiply probe's speed just before it (what YAML costs
    are normalised by: seconds x speed is the cost on the COST_HOST_GFLOPS host). Measure on
    a quiet host: under load the figures are inflated 2-4x."""
    import dataclasses

    from study import config, data, pipelines, timebudget, training, tuning
    from study.evaluation import timed_proba

    prof = config.profile(profile)
    splits = data.make_splits(data.load(), prof)
    out = []
    for name in names:
        spec = pipelines.load(name)
        budget = dataclasses.replace(spec.budget(prof), n_trials=0)
        params = tuning.final_params(spec, budget, {})
        runs = []
        for _ in range(repeats):
            speed = timebudget.probe_speed(config.COST_HOST_GFLOPS)
            got = [cpu_share()]
            start = time.perf_counter()
            fit, _ = training.final_fit(spec, params, splits, config.SEED)
            fitted = time.perf_counter() - start
            timed_proba(fit.predict_proba, splits.x_test)
            seconds = time.perf_counter() - start
            got.append(cpu_share())
            runs.append({"seconds": seconds, "fit_seconds": fitted, "speed": speed,
                         "share": sum(got) / 2, "load": os.getloadavg()[0]})
            print(f"{name}: least fit {fitted:.1f} s, with scoring {seconds:.1f} s, speed "
                  f"{speed:.2f}, CPU share {runs[-1]['share']:.2f}, load "
                  f"{runs[-1]['load']:.1f}", flush=True)
        best = min(runs, key=lambda r: r["seconds"] * r["speed"])
        # on the reference host: what the YAML's `least_seconds` states. Normalised by the
        # sgemm probe alone, as plans scale it: under load that probe drops too (1.57 alone,
        # 0.41 at a load of 14.6 on 2 cores), so the CPU share would count the load twice;
        # it is printed to say how loaded the host was
        out.append({"pipeline": name, "runs": runs, "best": best,
                    "reference_seconds": best["seconds"] * best["speed"]})
    return out


def cpu_share(seconds: float = 2.0) -> float:
    """The part of a core this process gets now (1: alone): the best of repeated one-thread
    matrix products against their mean over `seconds`. timebudget.probe_speed takes the best
    of 7, which finds a free moment on a shared host; the fits there run at this share."""
    import numpy as np

    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((384, 384), dtype=np.float32)
    times = []
    with threadpool_limits(limits=1, user_api="blas"):
        a @ a
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - start)
    return min(times) / (sum(times) / len(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--least", nargs="+", metavar="PIPELINE", default=None,
                        help="instead: time these sklearn pipelines at their least (fixed "
                             "params, no tuning) on the profile's rows, twice each")
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 20, 40])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--store", type=Path, default=None, help="default: a fresh folder")
    parser.add_argument("--fresh-each", action=argparse.BooleanOptionalAction, default=True,
                        help="each budget on its own fresh store (default; the issue's setting)")
    parser.add_argument("--host-speed", action="store_true",
                        help="also run ../shared/bench/host_speed.py (~30 s of CNN training)")
    args = parser.parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # reading plan.txt back
    if args.least:
        for row in least_costs(args.least, args.profile):
            print(f"{row['pipeline']}: least_seconds {row['reference_seconds']:.1f} on the "
                  f"reference host ({row['best']['seconds']:.1f} s here at speed "
                  f"{row['best']['speed']:.2f} and CPU share {row['best']['share']:.2f}, fit "
                  f"{row['best']['fit_seconds']:.1f} s)")
        return 0
    store = (args.store or Path(tempfile.mkdtemp(prefix="budget-"))).resolve()
    if args.fresh_each and store.exists() and any(store.iterdir()) and args.store:
        print(f"--store {store} is not empty: give an empty folder (each budget gets a fresh "
              "store under it) or --no-fresh-each", file=sys.stderr)
        return 2
    store.mkdir(parents=True, exist_ok=True)
    host = host_context(args.host_speed)
    print(host, flush=True)
    rows = []
    for minutes in args.minutes:
        row = run_once(minutes, store / f"b{minutes:g}" if args.fresh_each else store,
                       args.profile)
        rows.append(row)
        print(f"budget {minutes:g} min: exit {row['exit']}, wall {row['wall_seconds']:.0f} s, "
              f"compare {row.get('total_seconds') or float('nan'):.0f} s, champion "
              f"{row.get('champion', '-')} {row.get('champion_test', float('nan')):.4f}",
              flush=True)
    text = tables(rows, host)
    (store / "budget.md").write_text(text)
    figure = minutes_figure(rows, store / "minutes.png")
    print(text)
    print(f"store: {store}; tables: {store / 'budget.md'}; figure: {figure or '-'}")
    return 0 if all(ok for _, ok, _ in verdicts(rows)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
