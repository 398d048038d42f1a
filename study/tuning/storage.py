"""Where trials live and how processes share them: the storage (a journal file on one
machine, PostgreSQL or MySQL across machines), trials a dead worker left running, and the
queue that gives workers an exact budget between them."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

from study import config, processes
from study.errors import ConfigError, first_line

logger = logging.getLogger(__name__)

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


def fail_stale_trials(study, storage) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this host is gone (a killed
    compare or worker); trials of live workers, here or on other hosts, are left alone
    (RDB storages fail those through Optuna's heartbeat). `storage`: the study's storage."""
    import optuna

    failed, study_id = [], storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if processes.died_here(host, pid):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_user_attr(trial_id, "failed_because", "worker died")
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


def queue_trials(study, n: int) -> int:
    """Put n trials in the study's queue (WAITING, parameters left to the sampler). Workers
    pop them atomically, so n trials run in all, each once, however fast each worker is."""
    for _ in range(n):
        study.enqueue_trial({}, user_attrs={"queued_by": worker_id()})
    return n


def waiting_trials(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def pop_queued_trial(study, storage):
    """A queued (WAITING) trial of the study, now RUNNING and this process's; None when the
    queue is empty. `set_trial_state_values` is atomic in every storage: of two workers that
    reach for one trial, one gets it and the other tries the next."""
    import optuna

    waiting = optuna.trial.TrialState.WAITING
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(waiting,)):
        # the storage's id of the trial, by public calls (FrozenTrial keeps it private)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING):
                return optuna.trial.Trial(study, trial_id)
        except RuntimeError:  # finished meanwhile (another worker ran it to its end)
            continue
    return None


def drain_queue(study, storage, objective, after_trial, timeout: float) -> int:
    """Pop queued trials and run them until the queue is empty or the timeout has passed.
    Not `study.optimize` with MaxTrialsCallback: when the queue runs dry between its check and
    its next ask, optimize samples a trial of its own, and workers sharing a queue overshoot
    the budget. Measured (benchmarks/queue_budget.py, 4 workers, 40 queued trials, 8 runs):
    optimize ended with 41 or 42 trials in 2 of 8 runs; popping, 40 in all 8."""
    import optuna

    deadline, ran = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        trial = pop_queued_trial(study, storage)
        if trial is None:
            break
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
    else:  # the clock stopped it, not an empty queue: what it left behind must not go unsaid
        left = waiting_trials(study)
        if left:
            logger.warning(f"[{study.study_name}] stopped at the {timeout:g} s timeout with "
                           f"{left} queued trial(s) left for other workers; fix: give "
                           "`tune --timeout` more seconds, or run `tune --n-trials queued` "
                           "again to drain them")
    return ran
