"""Everything Optuna: storage, studies, search spaces, pruning. Scored on validation rows only.

One study per (pipeline, profile, seed, pipeline definition), kept in persistent storage, so
rerunning compare continues a study: it only runs the trials still missing from the budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from study import config, processes, training
from study.data import Splits, stratified_subsample
from study.errors import ConfigError, first_line
from study.models import get_builder
from study.pipelines import PipelineSpec

TrialLogger = Callable[[dict[str, Any]], None]


@dataclass
class TuneResult:
    study_name: str
    best_params: dict[str, Any]  # the searched parameters of the best trial only
    best_value: float | None  # its validation accuracy (None when nothing was searched)
    n_trials: int  # finished trials (complete or pruned) in the study, this run's and earlier
    n_pruned: int
    seconds: float  # tuning wall time of this invocation
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished trial
    importances: dict[str, float] = field(default_factory=dict)  # fANOVA, over all complete trials


# RDB storages: a worker that has not beaten for GRACE seconds is dead, its trial FAILED.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


def resolve_storage(storage: str | None = None) -> str:
    """What workers are told: an RDB URL as given, else the absolute path of a journal file
    ('local' or nothing: the default journal beside the tracking store)."""
    if storage and "://" in storage:
        if config.carries_secret(storage):
            # `mlflow run` logs every -P value as a run parameter, and URLs get printed
            raise ConfigError(
                f"the storage URL {config.redact(storage)} carries a password; give it without "
                "one and let the client library find it (PostgreSQL: PGPASSWORD or ~/.pgpass; "
                "MySQL: ~/.my.cnf)")
        return storage
    path = Path(storage) if storage and storage != "local" else config.default_optuna_journal()
    return str(path.resolve())


def open_storage(storage: str | None = None):
    """A journal file (safe for several processes on one machine) or an RDB storage
    (PostgreSQL, MySQL: for workers on several machines)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    url = resolve_storage(storage)
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    warnings.filterwarnings("ignore", message=".*heartbeat_interval.*experimental",
                            category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:  # sqlalchemy raises many kinds; the user needs one line
            first = first_line(exc)
            # Workers that meet a fresh database at once race on creating its tables.
            if attempt < 3 and ("already exists" in first or "duplicate key" in first):
                time.sleep(0.5 + attempt)
                continue
            raise ConfigError(f"cannot open Optuna storage {config.redact(url)} "
                              f"({config.redact(first)[:200]}); "
                              f"check the URL and that the database server is up") from None


def worker_id() -> str:
    """host:pid, stored on every trial so a later run can tell a dead worker's trial."""
    return processes.this_process()


def fail_stale_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this host is gone (a killed
    compare or worker); trials of live workers, here or on other hosts, are left alone
    (RDB storages fail those through Optuna's heartbeat)."""
    import optuna

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if processes.died_here(host, pid):
            study._storage.set_trial_user_attr(trial._trial_id, "failed_because", "worker died")
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


def study_name(spec: PipelineSpec, profile: str, seed: int) -> str:
    return f"{spec.name}-{profile}-seed{seed}-{spec.digest}"


def suggest(trial, search: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one parameter set from a YAML search space."""
    params = {}
    for name, s in search.items():
        if s["type"] == "float":
            params[name] = trial.suggest_float(name, float(s["low"]), float(s["high"]),
                                               log=bool(s.get("log", False)))
        elif s["type"] == "int":
            params[name] = trial.suggest_int(name, int(s["low"]), int(s["high"]),
                                             step=int(s.get("step", 1)), log=bool(s.get("log", False)))
        else:
            params[name] = trial.suggest_categorical(name, list(s["choices"]))
    return params


def final_params(spec: PipelineSpec, profile: str, best_params: dict[str, Any]) -> dict[str, Any]:
    """Fixed parameters, the profile's fit settings and the best trial's choices, merged."""
    return {**spec.params, **spec.fit, **spec.budget(profile).fit, **best_params}


def _keras_pruning_callback(trial):
    """Reports validation accuracy each epoch; the pruner stops hopeless trials early."""
    import keras
    import optuna

    class Pruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            trial.report(float(logs["val_accuracy"]), step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch + 1}: val_accuracy {logs['val_accuracy']:.4f}")

    return Pruning()


FINISHED = ("COMPLETE", "PRUNED")


def open_study(spec: PipelineSpec, profile: str, seed: int, storage, worker_index: int | None = None):
    """Create or load the pipeline's study. Each parallel worker seeds its sampler apart, so
    workers do not draw the same random start-up trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = spec.budget(profile)
    sampler_seed = seed if worker_index is None else seed + 7919 * (worker_index + 1)
    study = optuna.create_study(
        study_name=study_name(spec, profile, seed),
        storage=storage,
        direction="maximize",
        # Small budgets: a third of the trials explore at random, the rest follow TPE.
        sampler=optuna.samplers.TPESampler(seed=sampler_seed,
                                           n_startup_trials=min(10, max(2, budget.n_trials // 3))),
        pruner=pruner_for(budget),
        load_if_exists=True,
    )
    study.set_user_attr("pipeline", spec.name)
    return study


def pruner_for(budget):
    """Median pruning over epochs, from the middle of a trial's epochs on: a trial that is
    below the median of earlier trials at the same epoch stops there. Judging it after its
    first epoch would stop slow starters (small learning rates, batch norm settling)."""
    import optuna

    epochs = int(budget.tune_fit.get("epochs") or budget.fit.get("epochs") or 2)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, epochs // 2))


def _study_for_work(spec: PipelineSpec, profile: str, seed: int, storage,
                    worker_index: int | None):
    """The study, with trials that a dead process left RUNNING marked FAIL (and said so)."""
    study = open_study(spec, profile, seed, storage, worker_index)
    stale = fail_stale_trials(study)
    if stale:
        _say(f"[{spec.name}] trials {', '.join(str(n + 1) for n in stale)} were left running "
             "by a process that is gone: marked FAIL, their budget is run again")
    return study


def _say_reused(spec: PipelineSpec, profile: str, name: str) -> None:
    _say(f"[{spec.name}] study {name} already holds {spec.budget(profile).n_trials} trials; "
         "reusing it")


def finished_trials(study) -> list:
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    return study.get_trials(deepcopy=False, states=states)


def missing_trials(spec: PipelineSpec, profile: str, study) -> int:
    """How many trials the profile's budget still asks of this study."""
    return max(0, spec.budget(profile).n_trials - len(finished_trials(study)))


def run_trials(study, spec: PipelineSpec, profile: str, splits: Splits, seed: int,
               n_trials: int | None,
               timeout: float | None = None, log_trial: TrialLogger | None = None,
               of_budget: bool = True) -> list[dict]:
    """Run n_trials trials of the study in this process (fewer if the timeout strikes), or
    with n_trials None pop queued trials until the queue is empty (a parallel worker).
    Progress says "trial 3/5" against the budget, or "trial #3" for a worker's explicit share."""
    import optuna

    budget = spec.budget(profile)
    rows = stratified_subsample(np.arange(len(splits.y_train)), splits.y_train,
                                budget.tune_subsample, seed)
    x_tr, y_tr = splits.x_train[rows], splits.y_train[rows]
    vrows = stratified_subsample(np.arange(len(splits.y_val)), splits.y_val,
                                 budget.tune_val_subsample, seed)
    x_va, y_va = splits.x_val[vrows], splits.y_val[vrows]
    kind = get_builder(spec.model).kind
    base = {**spec.params, **spec.fit, **budget.fit, **budget.tune_fit}
    history: list[dict[str, Any]] = []

    def objective(trial) -> float:
        trial.set_user_attr("worker", worker_id())
        params = {**base, **suggest(trial, spec.search)}
        cbs = [_keras_pruning_callback(trial)] if kind == "keras" else []
        label = f"[{spec.name}] {_trial_label(trial.number, budget.n_trials, of_budget)}"
        start = time.perf_counter()
        try:
            result = training.fit(spec, params, x_tr, y_tr, x_va, y_va, seed,
                                  callbacks=cbs, progress=label if kind == "keras" else None)
            trial.set_user_attr("fit_seconds", result.fit_seconds)
            if result.notes:
                trial.set_user_attr("notes", result.notes)
            proba = result.predict_proba(x_va)
            value = float(np.mean(proba.argmax(axis=1) == y_va))
        except Exception as exc:  # recorded as the trial's FAIL reason; the study goes on
            if not isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr("error", f"{type(exc).__name__}: {first_line(exc)}"[:500])
            raise
        else:
            if not np.isfinite(proba).all():  # a diverged model: a failed trial, not a score
                trial.set_user_attr("error", "non-finite class probabilities (diverged)")
                raise FloatingPointError("non-finite class probabilities (diverged)")
            return value
        finally:  # pruned trials too: their time is part of the tuning cost
            trial.set_user_attr("seconds", time.perf_counter() - start)
            trial.set_user_attr("fit_seconds", trial.user_attrs.get("fit_seconds",
                                                                    time.perf_counter() - start))

    def after_trial(study, frozen) -> None:
        if frozen.state.name == "FAIL":
            entry = trial_entry(frozen)
            history.append(entry)
            print(f"[{spec.name}] {_trial_label(frozen.number, budget.n_trials, of_budget)} "
                  f"failed: {entry['error']} (the study goes on)", file=sys.stderr, flush=True)
            if log_trial is not None:
                log_trial(entry)
            return
        if frozen.state.name not in FINISHED:
            return
        entry = trial_entry(frozen)
        history.append(entry)
        best = study.best_value if any(t.state.name == "COMPLETE" for t in study.trials) else None
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in frozen.params.items())
        print(f"[{spec.name}] {_trial_label(frozen.number, budget.n_trials, of_budget)} "
              f"{frozen.state.name.lower()} "
              f"val_accuracy={_fmt(entry['val_accuracy'])} best={_fmt(best)} {shown} "
              f"({frozen.user_attrs.get('seconds', 0.0):.1f}s)"
              f"{' [' + '; '.join(frozen.user_attrs['notes']) + ']' if frozen.user_attrs.get('notes') else ''}",
              file=sys.stderr, flush=True)
        if log_trial is not None:
            log_trial(entry)

    if n_trials is None:
        drain_queue(study, objective, after_trial, timeout or budget.timeout)
    elif n_trials > 0:
        # a trial that raises is recorded as FAIL (its reason in user_attrs["error"]) and the
        # study goes on; Ctrl-C and SystemExit still stop it
        study.optimize(objective, n_trials=n_trials, timeout=timeout or budget.timeout,
                       callbacks=[after_trial], catch=(Exception,))
    return history


def queue_trials(study, n: int) -> int:
    """Put n trials in the study's queue (WAITING, parameters left to the sampler). Workers
    pop them atomically, so n trials run in all, each once, however fast each worker is."""
    for _ in range(n):
        study.enqueue_trial({}, user_attrs={"queued_by": worker_id()})
    return n


def waiting_trials(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def drain_queue(study, objective, after_trial, timeout: float) -> int:
    """Pop queued trials and run them until the queue is empty or the timeout has passed.
    Unlike `optimize`, never creates a trial of its own: the queue holds the exact budget."""
    import optuna

    deadline, ran = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        trial_id = study._pop_waiting_trial_id()  # atomic WAITING -> RUNNING in every storage
        if trial_id is None:
            break
        trial = optuna.Trial(study, trial_id)
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except Exception:  # recorded as FAIL with its reason; the next queued trial runs
            frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            frozen = study.tell(trial, value)
        after_trial(study, frozen)
        ran += 1
    return ran


def trial_entry(frozen) -> dict[str, Any]:
    """One finished trial as the logs and the report see it."""
    value = frozen.value if frozen.value is not None else (
        list(frozen.intermediate_values.values())[-1] if frozen.intermediate_values else None)
    entry = {"number": frozen.number, "state": frozen.state.name, "params": dict(frozen.params),
             "val_accuracy": value, "fit_seconds": frozen.user_attrs.get("fit_seconds", 0.0),
             "intermediate": dict(frozen.intermediate_values)}
    if frozen.state.name == "FAIL":
        entry.update(val_accuracy=None, error=frozen.user_attrs.get("error", "unknown error"))
    return entry


def summarize(study, spec: PipelineSpec, profile: str, seed: int,
              history: list[dict], require_best: bool = True) -> TuneResult:
    """The study's best trial over every worker's trials, this invocation's and earlier ones.
    Its seconds are the trials' durations summed over all of them (failed and pruned ones
    too), so a resumed compare shows what its trials cost, not what the last run added."""
    import optuna

    spent = study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL))
    seconds = float(sum(t.user_attrs.get("seconds", 0.0) for t in spent))
    trials = finished_trials(study)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete and require_best:
        failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if failed and not trials:
            reasons = sorted({t.user_attrs.get("error", "unknown error") for t in failed})
            raise ConfigError(f"pipeline {spec.name}: all {len(failed)} tuning trial(s) failed "
                              f"({reasons[0]}{'; ...' if len(reasons) > 1 else ''}); fix the "
                              f"search space in {spec.path}")
        raise ConfigError(f"pipeline {spec.name}: no tuning trial completed within the "
                          f"{profile} budget ({spec.budget(profile).timeout:.0f}s); "
                          f"raise budget.{profile}.timeout")
    return TuneResult(
        study_name=study.study_name,
        best_params=dict(study.best_params) if complete else {},
        best_value=float(study.best_value) if complete else None,
        n_trials=len(trials),
        n_pruned=len(trials) - len(complete),
        seconds=seconds,
        history=history,
        importances=param_importances(study, seed) if complete else {},
    )


def tune(spec: PipelineSpec, profile: str, splits: Splits, seed: int, storage=None,
         log_trial: TrialLogger | None = None, n_trials: int | None = None,
         timeout: float | None = None, worker_index: int | None = None,
         require_best: bool = True, queued: bool = False) -> TuneResult:
    """Run the trials still missing from the profile's budget (or exactly n_trials, or with
    queued=True the study's queued trials) in this process; return the best parameters of
    the whole study."""
    name = study_name(spec, profile, seed)
    # nothing to choose (no search space, or a profile that fixes the parameters and no
    # explicit trial count): the fixed parameters are the answer
    if not spec.search or (n_trials is None and not queued and not spec.tunes(profile)):
        return TuneResult(name, {}, None, 0, 0, 0.0)
    if storage is None or isinstance(storage, str):
        storage = open_storage(storage)
    study = _study_for_work(spec, profile, seed, storage, worker_index)
    todo = missing_trials(spec, profile, study) if n_trials is None else n_trials
    if todo == 0 and not queued:
        _say_reused(spec, profile, name)
    history = run_trials(study, spec, profile, splits, seed, None if queued else todo, timeout,
                         log_trial, of_budget=n_trials is None and not queued)
    return summarize(study, spec, profile, seed, history, require_best)


def tune_parallel(spec: PipelineSpec, profile: str, seed: int, storage: str, workers: int,
                  splits: Splits, data_dir: str | None = None, tuning_run_id: str | None = None,
                  log_trial: TrialLogger | None = None, n_trials: int | None = None,
                  timeout: float | None = None) -> TuneResult:
    """Run the missing trials (or exactly n_trials) in `workers` processes that share the
    study: this one and workers-1 children. The trials are queued in the study first, and
    every worker pops from the queue until it is empty: the total is exact, and a worker that
    starts late or draws slow trials simply runs fewer. Each process gets its share of cores."""
    name = study_name(spec, profile, seed)
    if not spec.search:
        return TuneResult(name, {}, None, 0, 0, 0.0)
    storage = resolve_storage(storage)
    study = _study_for_work(spec, profile, seed, open_storage(storage), worker_index=0)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    # trials already queued (left by an interrupted run, or put there on purpose) run first
    # and count towards the budget or n_trials
    queued = waiting_trials(study)
    todo = max(0, (missing_trials(spec, profile, study) if n_trials is None else n_trials)
               - queued)
    queue_trials(study, todo)
    queued += todo
    if not queued:
        _say_reused(spec, profile, name)
        return summarize(study, spec, profile, seed, [], require_best=n_trials is None)
    n_workers = min(workers, queued)
    _say(f"[{spec.name}] {queued} trials queued for {n_workers} workers")
    threads = max(1, config.threads() // n_workers)
    env = config.worker_env(threads)
    timeout = timeout or spec.budget(profile).timeout
    procs = [subprocess.Popen(
        [sys.executable, "-m", "study", "tune", "--pipeline", spec.name, "--profile", profile,
         "--seed", str(seed), "--storage", storage, "--n-trials", "queued",
         "--timeout", str(timeout), "--worker-index", str(i), "--data-dir", str(data_dir or "auto"),
         "--tuning-run-id", tuning_run_id or "-"],
        env=env) for i in range(1, n_workers)]
    try:
        with _limited_threads(threads):  # worker 0 is this process: its data is loaded already
            run_trials(study, spec, profile, splits, seed, None, timeout, log_trial,
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
    return summarize(study, spec, profile, seed, sorted(history, key=lambda e: e["number"]),
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


def _trial_label(number: int, budget: int, of_budget: bool) -> str:
    return f"trial {number + 1}/{budget}" if of_budget else f"trial #{number + 1}"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def param_importances(study, seed: int) -> dict[str, float]:
    """fANOVA importance of each searched parameter; empty when the study is too small to say."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return {k: float(v) for k, v in
                optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. no parameter varied
        return {}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
