"""Tuning a pipeline: the trials its budget still misses, in this process or in worker
processes that share the study, each with its share of the cores."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager

from study import config
from study.data import Splits
from study.pipelines import Budget, PipelineSpec
from study.tuning.storage import (fail_stale_trials, open_storage, queue_trials, resolve_storage,
                                  waiting_trials)
from study.tuning.studies import (TuneResult, finished_trials, missing_trials, open_study,
                                  study_name, summarize, trial_entry)
from study.tuning.trials import TrialLogger, run_trials

logger = logging.getLogger(__name__)

def _study_for_work(spec: PipelineSpec, budget: Budget, seed: int, storage,
                    worker_index: int | None):
    """The study, with trials that a dead process left RUNNING marked FAIL (and said so)."""
    study = open_study(spec, budget, seed, storage, worker_index)
    stale = fail_stale_trials(study, storage)
    if stale:
        logger.info(f"[{spec.name}] trials {', '.join(str(n + 1) for n in stale)} were left "
                    "running by a process that is gone: marked FAIL, their budget is run again")
    return study


def _say_reused(spec: PipelineSpec, budget: Budget, name: str) -> None:
    logger.info(f"[{spec.name}] study {name} already holds {budget.n_trials} trials; reusing it")


def tune(spec: PipelineSpec, budget: Budget, splits: Splits, seed: int, storage=None,
         log_trial: TrialLogger | None = None, n_trials: int | None = None,
         timeout: float | None = None, worker_index: int | None = None,
         require_best: bool = True, queued: bool = False) -> TuneResult:
    """Run the trials still missing from the budget (or exactly n_trials, or with
    queued=True the study's queued trials) in this process; return the best parameters of
    the whole study."""
    name = study_name(spec, budget.profile, seed)
    # nothing to choose (no search space, or a profile that fixes the parameters and no
    # explicit trial count): the fixed parameters are the answer
    if not spec.search or (n_trials is None and not queued and not spec.tunes(budget)):
        return TuneResult(name, {}, None, 0, 0, 0.0)
    if storage is None or isinstance(storage, str):
        storage = open_storage(storage)
    study = _study_for_work(spec, budget, seed, storage, worker_index)
    todo = missing_trials(budget, study) if n_trials is None else n_trials
    if todo == 0 and not queued:
        _say_reused(spec, budget, name)
    history = run_trials(study, storage, spec, budget, splits, seed, None if queued else todo,
                         timeout, log_trial, of_budget=n_trials is None and not queued)
    return summarize(study, spec, budget, seed, history, require_best)


def tune_parallel(spec: PipelineSpec, budget: Budget, seed: int, storage: str, workers: int,
                  splits: Splits, data_dir: str | None = None, tuning_run_id: str | None = None,
                  log_trial: TrialLogger | None = None, n_trials: int | None = None,
                  timeout: float | None = None) -> TuneResult:
    """Run the missing trials (or exactly n_trials) in `workers` processes that share the
    study: this one and workers-1 children. The trials are queued in the study first, and
    every worker pops from the queue until it is empty: the total is exact, and a worker that
    starts late or draws slow trials simply runs fewer. Each process gets its share of cores."""
    name = study_name(spec, budget.profile, seed)
    if not spec.search:
        return TuneResult(name, {}, None, 0, 0, 0.0)
    storage = resolve_storage(storage)
    opened = open_storage(storage)
    study = _study_for_work(spec, budget, seed, opened, worker_index=0)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    # trials already queued (left by an interrupted run, or put there on purpose) run first
    # and count towards the budget or n_trials
    queued = waiting_trials(study)
    todo = max(0, (missing_trials(budget, study) if n_trials is None else n_trials)
               - queued)
    queue_trials(study, todo)
    queued += todo
    if not queued:
        _say_reused(spec, budget, name)
        return summarize(study, spec, budget, seed, [], require_best=n_trials is None)
    n_workers = min(workers, queued)
    logger.info(f"[{spec.name}] {queued} trials queued for {n_workers} workers")
    threads = max(1, config.threads() // n_workers)
    env = config.worker_env(threads)
    timeout = timeout or budget.timeout
    procs = [subprocess.Popen(
        [sys.executable, "-m", "study", "tune", "--pipeline", spec.name, "--profile", budget.profile,
         "--seed", str(seed), "--storage", storage, "--n-trials", "queued",
         "--timeout", str(timeout), "--worker-index", str(i), "--data-dir", str(data_dir or "auto"),
         "--tuning-run-id", tuning_run_id or "-"],
        env=env) for i in range(1, n_workers)]
    try:
        with _limited_threads(threads):  # worker 0 is this process: its data is loaded already
            run_trials(study, opened, spec, budget, splits, seed, None, timeout, log_trial,
                       of_budget=n_trials is None)
        codes = [p.wait() for p in procs]
    finally:  # interrupted: take the workers down too, their trials are marked stale later
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        raise RuntimeError(f"{sum(1 for c in codes if c)} of {n_workers} tuning workers of "
                           f"{spec.name} failed (exit codes {codes}); their errors are above")
    history = [trial_entry(t) for t in finished_trials(study) if t.number not in before]
    return summarize(study, spec, budget, seed, sorted(history, key=lambda e: e["number"]),
                     require_best=n_trials is None)


@contextmanager
def _limited_threads(n: int):
    """This process's native thread pools and n_jobs held to n while children share the cores."""
    from threadpoolctl import threadpool_limits

    saved = os.environ.get(config.THREADS_ENV)
    os.environ[config.THREADS_ENV] = str(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        if saved is None:
            os.environ.pop(config.THREADS_ENV, None)
        else:
            os.environ[config.THREADS_ENV] = saved


def exit_with_parent() -> None:
    """In a worker: exit as soon as the compare that started it is gone, however it died
    (a watchdog thread; preexec_fn hooks are unsafe in a threaded parent)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(137)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
