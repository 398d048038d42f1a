"""Pipelines side by side: a compare's pipelines `parallel` at a time in worker processes,
each with its share of the cores and the same data, splits and stores as its compare. The
work itself is the Job's (`attempt`, `figures`: handed in, attempts' functions)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from study import config, data, pipelines, tracking, tuning
from study.attempts import Outcome, TuningSetup, failed_outcome

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """What a pipeline worker process needs to work for one compare run."""

    profile: config.Profile
    seed: int
    data_dir: str | None
    storage_url: str
    workers: int
    parent_run_id: str
    data_digest: str
    # what a worker runs, handed in by the compare (attempts.attempt and
    # attempts.attempt_reduction_figures: importable functions, so they pickle by name)
    attempt: Callable[..., Outcome]
    figures: Callable[..., Outcome]


_worker: dict[str, Any] = {}  # per pipeline worker process: its job, data and storage


def _start_worker(job: Job) -> None:
    """Initializer of a pipeline worker: the same data, splits and stores as its compare."""
    from study.logs import configure_logging

    configure_logging()  # the level its compare passed in the environment
    tuning.exit_with_parent()
    tracking.configure()
    dataset = data.load(job.data_dir)
    splits = data.make_splits(dataset, job.profile)
    if data.fingerprint(splits) != job.data_digest:  # cannot happen unless the files changed
        raise RuntimeError("the data files changed while the compare was running")
    _worker.update(job=job, splits=splits,
                   setup=TuningSetup(job.storage_url, tuning.open_storage(job.storage_url),
                                     job.workers, job.data_dir))


def _work(name: str, label: str) -> Outcome:
    """One pipeline in a worker process; its final run is a child of the compare run."""
    job, spec = _worker["job"], pipelines.load(name)
    logger.info(f"=== {label}: {spec.name} ({spec.description or spec.model}) in process "
                f"{os.getpid()}")
    return job.attempt(spec, job.profile, _worker["splits"], job.seed, _worker["setup"],
                       job.parent_run_id, job.data_digest)


def _work_reduction_figures(names: list[str]) -> Outcome:
    """The reduction figures in a worker process, as one more task beside the pipelines."""
    job = _worker["job"]
    return job.figures(pipelines.resolve(names), _worker["splits"], job.seed,
                       job.parent_run_id)


@contextmanager
def child_environment(threads: int) -> Iterator[None]:
    """os.environ as a pool's worker processes must start with (config.worker_env), while
    they are started; this process's own environment afterwards, whatever starting wrote."""
    saved, env = dict(os.environ), config.worker_env(threads)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(todo: list[tuple[str, Any]], job: Job, parallel: int,
        reduced: list[str]) -> Iterator[Outcome]:
    """Run the pipelines `parallel` at a time in worker processes, each with its share of the
    cores, yielding outcomes as they finish. Worth it where libraries use one core (libsvm,
    lbfgs, seeded UMAP): two of them side by side use the machine that one leaves idle."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    n = min(parallel, len(todo) + bool(reduced))
    threads = max(1, config.threads() // n)
    logger.info(f"{len(todo)} pipeline(s) in {n} worker processes, {threads} thread(s) each")
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(job,))
    try:
        with child_environment(threads):  # the pool starts its processes on submit
            futures = {pool.submit(_work, spec.name, label): spec.name for label, spec in todo}
            if reduced:  # the figures of the reduced pipelines are one more task
                futures[pool.submit(_work_reduction_figures, reduced)] = "figures"
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                outcome = future.result()
            except BrokenProcessPool:  # a worker died (killed, out of memory)
                outcome = Outcome(futures[future], failure="its worker process died (killed or "
                                  "out of memory?); rerun the same command to resume")
            except Exception as exc:  # raised outside the pipeline's own guard (loading it)
                outcome = failed_outcome(futures[future], exc)
            logger.info(f"--- {done}/{len(futures)} done: {outcome.pipeline}"
                        f"{' FAILED' if outcome.failure else ''}")
            yield outcome
    except BaseException:  # interrupted: stop the workers now, not after their pipeline
        # the pool's workers are this process's only multiprocessing children meanwhile
        for process in multiprocessing.active_children():
            process.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def in_waves(todo, specs, run) -> Iterator[Outcome]:
    """The pipelines through `run(todo, reduced)` (side by side, or on a cluster); specialists
    in a second wave, once the generalists they fold into have logged their models."""
    first = [(label, spec) for label, spec in todo if not spec.generalist]
    reduced = [s.name for s in specs if s.reducer != "none"]
    if first or reduced:
        yield from run(first, reduced)
    later = [(label, spec) for label, spec in todo if spec.generalist]
    if later:
        yield from run(later, [])
