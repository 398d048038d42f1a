"""Why parallel tuning workers pop queued trials themselves instead of calling study.optimize.

Several processes share one study whose queue holds the exact budget (N WAITING trials).
With `study.optimize` and MaxTrialsCallback (public APIs only), a worker stops once the
finished and running trials reach N; but when the queue runs dry between its check and its
next `ask`, `optimize` samples a fresh trial: the study ends with more than N trials. Popping
with `tuning.pop_queued_trial` (public storage APIs, an atomic WAITING -> RUNNING) never
creates a trial. This runs both on a journal file, W workers, R repetitions, and prints the
trials each way ended with. Measured 2026-11-29 (2-core host, 4 workers, 40 trials, 8 runs):
optimize [40, 40, 40, 40, 42, 40, 41, 40], pop [40] * 8.

    .venv/bin/python benchmarks/queue_budget.py --workers 4 --trials 40 --repeats 10
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def objective(trial) -> float:
    time.sleep(random.uniform(0.005, 0.03))  # trials of uneven length, like real ones
    return random.random()


def worker(path: str, name: str, total: int, way: str) -> None:
    import optuna

    from study import tuning

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = tuning.open_storage(path)
    study = optuna.load_study(study_name=name, storage=storage)
    if way == "optimize":
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                  optuna.trial.TrialState.RUNNING)
        study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(total, states)])
    else:
        tuning.drain_queue(study, storage, objective, lambda study, frozen: None, 600)


def one(workers: int, trials: int, way: str) -> int:
    import optuna

    from study import tuning

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "journal.log")
        study = optuna.create_study(study_name="q", storage=tuning.open_storage(path))
        tuning.queue_trials(study, trials)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(path, "q", trials, way)) for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return len(study.get_trials(deepcopy=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    for way in ("optimize", "pop"):
        counts = [one(args.workers, args.trials, way) for _ in range(args.repeats)]
        extra = [c - args.trials for c in counts]
        print(f"{way:>8}: {args.workers} workers, {args.trials} queued, {args.repeats} runs: "
              f"trials in the study {counts}; runs with extra trials "
              f"{sum(e > 0 for e in extra)}/{args.repeats}, most extra {max(extra)}")


if __name__ == "__main__":
    main()
