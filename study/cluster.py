"""Pipelines as tasks on a Dask cluster (`--cluster`): one task per pipeline. Its worker loads
and verifies the data itself, tunes against the shared Optuna storage and logs the final run
as a child of the compare run; the compare then ranks, ensembles, registers and reports as
without a cluster. `local:N` starts a LocalCluster of N worker processes on this machine (the
`parallel` of a compare, through the real engine); an address joins a running scheduler whose
workers may be on other machines. The only module that imports Dask."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

from study import config, data, pipelines, tracking, tuning
from study.errors import ConfigError, first_line

logger = logging.getLogger(__name__)

LOCAL = "local:"
# Dask retries a task whose worker died (3 times by default): a pipeline would train again,
# from the start, on another worker. The compare lists it as failed instead; a rerun resumes.
RETRIES = "distributed.scheduler.allowed-failures"
# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to give memory back to the
# OS), which also fixes glibc's mmap threshold at 128 KiB: every larger array becomes an
# mmap and munmap. Measured: hgb's fit 1.65x slower (HistGradientBoostingClassifier, 20,000 x
# 784, one thread: 51.5-51.9 s against 31.2-35.1 s), the whole compare slower than the
# process pool. None unsets it: workers allocate as the pool's and `study` itself do.
MALLOC = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
# Dask's own housekeeping, at its defaults, woke every process every 10-20 ms (the profiler's
# stack samples, the event loop's tick): measured, an idle local:2 cluster used 2.9 s of CPU
# in 20 s (14% of a core), 0.38 s with these; on two cores that is the pipelines' time, and
# the profiler's GIL requests slow a pipeline's Python code. The dashboard keeps its task
# stream, progress and workers' memory; its Profile tab stays empty.
QUIET = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
         "distributed.admin.system-monitor.interval": "2s",
         "distributed.worker.memory.monitor-interval": "1s"}
_ADDRESS = re.compile(r"(?:(tcp|tls)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
# the client's TLS files, from Dask's own configuration (~/.config/dask/*.yaml or the
# DASK_DISTRIBUTED__COMM__TLS__* variables), never from a study parameter
_TLS = ("ca-file", "client.cert", "client.key")


@dataclass(frozen=True)
class Target:
    """Where the pipelines run: N local worker processes, or a scheduler's workers."""

    address: str  # local:N, or the scheduler's tcp:// or tls:// address
    local_workers: int = 0  # N of local:N; 0 for a scheduler
    insecure: bool = False  # --cluster-insecure: plain TCP to another machine is accepted

    @property
    def is_local(self) -> bool:
        return self.local_workers > 0


def parse(text: str | None, insecure: bool = False) -> Target | None:
    """`local:N`, a scheduler address (tcp://host:port, host:port, tls://...), or none."""
    if text is None or text.strip().lower() in ("", "none", "-"):
        return None
    text = text.strip()
    if text.lower().startswith(LOCAL):
        count = text[len(LOCAL):]
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"cluster local:N needs N >= 1 worker processes, got {text!r}")
        return Target(f"{LOCAL}{int(count)}", int(count))
    match = _ADDRESS.fullmatch(text)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise ConfigError(f"cluster must be local:N or a Dask scheduler address such as "
                          f"tls://10.0.0.5:8786, got {text!r}")
    return Target(f"{match.group(1) or 'tcp'}://{match.group(2)}:{int(match.group(3))}",
                  insecure=insecure)


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _loopback(url: str) -> bool:
    host = _host(url)
    try:
        return host in _LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it is not resolved here
        return False


def check_secure(target: Target | None) -> None:
    """Refuse, before anything connects, a scheduler anyone on the network could use: whoever
    can submit to it runs code on its workers (and reads their secrets). Plain TCP is for
    loopback, or --cluster-insecure; tls:// needs the client's certificate in Dask's config."""
    if target is None or target.is_local:
        return
    where = f"cluster {target.address}"
    if target.address.startswith("tcp://"):
        if not (target.insecure or _loopback(target.address)):
            raise ConfigError(
                f"{where} is plain TCP to another machine: anyone who reaches that scheduler "
                "runs code on its workers; start the scheduler with TLS and give its tls:// "
                "address (docs/scaling-out.md), or pass --cluster-insecure on a network you trust")
        return
    import dask

    missing = [k for k in ("ca-file", "client.cert")
               if not dask.config.get(f"distributed.comm.tls.{k}", None)]
    if missing:
        raise ConfigError(
            f"{where}: no TLS set up for this client (distributed.comm.tls.{missing[0]} is "
            "unset); set distributed.comm.tls.ca-file, client.cert and client.key in "
            "~/.config/dask/*.yaml or as DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
            "..._CLIENT__CERT and ..._CLIENT__KEY (docs/scaling-out.md)")
    for key in _TLS:
        path = dask.config.get(f"distributed.comm.tls.{key}", None)
        if path and "\n" not in str(path) and not os.path.isfile(path):
            raise ConfigError(f"{where}: distributed.comm.tls.{key} {path} is not a file; "
                              "give the path of the PEM file (docs/scaling-out.md)")


def check_shared(target: Target | None, tracking_uri: str, storage_url: str) -> None:
    """Refuse, before anything connects, stores that a scheduler's workers cannot share: a
    file on this machine (SQLite, a journal) or a loopback server seen from other machines.
    local:N workers are on this machine and share whatever this process uses. The scheduler's
    own security is checked first (check_secure)."""
    check_secure(target)
    if target is None or target.is_local:
        return
    where = f"cluster {target.address}"
    if not tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"{where}: its workers log to the MLflow store, and {config.redact(tracking_uri)} "
            "is on this machine only; set MLFLOW_TRACKING_URI to a tracking server "
            "(`mlflow server ...`, then http://HOST:5000), or use cluster=local:N")
    if config.carries_secret(tracking_uri):  # the tasks would carry it across the network
        raise ConfigError(
            f"{where}: MLFLOW_TRACKING_URI {config.redact(tracking_uri)} carries a password; "
            "give it without one and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "on every machine instead")
    if "://" not in storage_url or storage_url.startswith("sqlite:"):
        raise ConfigError(
            f"{where}: its workers share each pipeline's Optuna study, and "
            f"{config.redact(storage_url)} is a file on this machine; use "
            "storage=postgresql://USER@HOST/DB (the password in ~/.pgpass), or cluster=local:N")
    if not _loopback(target.address):
        for what, url in (("MLFLOW_TRACKING_URI", tracking_uri), ("storage", storage_url)):
            if _loopback(url):
                raise ConfigError(
                    f"{where}: {what} {config.redact(url)} is a loopback address, which "
                    "workers on other machines cannot reach; give the server's network name")


@contextmanager
def connect(target: Target) -> Iterator[Any]:
    """A distributed.Client for the target, its dashboard's address logged; a LocalCluster is
    started here and stopped on the way out (its worker processes with it)."""
    import dask
    from distributed import Client, LocalCluster, Security

    from study import side_by_side

    check_secure(target)
    cluster = None
    # read by the scheduler and workers started here (remote ones: docs/scaling-out.md)
    with dask.config.set({RETRIES: 0, MALLOC: None, **QUIET}):
        if target.is_local:
            threads = max(1, config.threads() // target.local_workers)
            # the nanny also writes its workers' settings into os.environ: restored after
            with side_by_side.child_environment(threads):
                # env: also for a worker the nanny restarts after one died. Loopback only,
                # and TLS with a certificate made for this cluster (cryptography): another
                # user of this machine cannot submit code to its workers either
                cluster = LocalCluster(n_workers=target.local_workers, threads_per_worker=1,
                                       processes=True, host="127.0.0.1", protocol="tls://",
                                       security=Security.temporary(),
                                       dashboard_address="127.0.0.1:0",
                                       env=config.worker_env(threads))
            client = Client(cluster)
        else:
            if target.insecure and target.address.startswith("tcp://"):
                logger.warning(f"Dask cluster {target.address}: plain TCP (--cluster-insecure): "
                               "whoever reaches its scheduler runs code on its workers")
            try:  # tls://: the client's certificate from Dask's own config (check_secure)
                client = Client(target.address, timeout="15s", security=Security())
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"cannot reach the Dask scheduler at {target.address} "
                                  f"({first_line(exc)[:200]}); start it (`dask scheduler`) or "
                                  "check the address") from None
    try:
        retries = client.run_on_scheduler(_allowed_failures)
        if retries != 0:
            raise ConfigError(
                f"the Dask scheduler at {target.address} retries a task whose worker died "
                f"({RETRIES} = {retries}): a pipeline could train twice; start it with "
                "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0 (docs/scaling-out.md)")
        logger.info(f"Dask cluster {target.address}: dashboard {client.dashboard_link}")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _allowed_failures(dask_scheduler=None) -> int:
    """On the scheduler: how often it retries a task whose worker died."""
    return dask_scheduler.allowed_failures


@dataclass
class Task:
    """What a worker needs to work for one compare: its job, stores and code."""

    job: Any  # side_by_side.Job
    tracking_uri: str
    code_digest: str
    shares: dict[str, int]  # worker address -> threads it may use


def shares(client: Any) -> dict[str, int]:
    """Threads each worker process may use: its machine's cores split between the worker
    processes there (and their task threads)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(os.cpu_count)
    per_host = Counter(w["host"] for w in workers.values())
    return {address: max(1, (cores.get(address) or 1) // per_host[w["host"]]
                         // max(1, w.get("nthreads", 1)))
            for address, w in workers.items()}


def _address() -> str:
    """The Dask worker this runs on (a test calls the worker's checks in its own process)."""
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not in a worker
        return f"process {os.getpid()}"


_ready: dict[tuple, Any] = {}  # per worker process: the splits and storage of a compare


def _prepare(task: Task) -> tuple[Any, Any, str, int]:
    """In a worker: this compare's splits and tuning setup, made once per worker process;
    the worker's address and threads. The data is loaded and checked here, not shipped."""
    from study.logs import configure_logging
    from study.attempts import TuningSetup

    address = _address()
    threads = task.shares.get(address) or config.threads()
    job = task.job
    key = (job.parent_run_id, task.tracking_uri)
    if key not in _ready:
        if os.environ.get("MALLOC_TRIM_THRESHOLD_"):
            logger.warning(f"worker {address} runs with MALLOC_TRIM_THRESHOLD_="
                           f"{os.environ['MALLOC_TRIM_THRESHOLD_']}: large arrays are mapped "
                           "and unmapped each time (hgb 1.65x slower); docs/scaling-out.md says "
                           "how to start workers without it")
        os.environ.update({**config.thread_env(threads), "MLFLOW_TRACKING_URI": task.tracking_uri})
        os.environ.pop("MLFLOW_RUN_ID", None)
        configure_logging()
        if config.code_digest() != task.code_digest:
            raise ConfigError(f"worker {address} runs other study code than the compare; "
                              "install the same version on every worker")
        tracking.configure()
        splits = data.make_splits(data.load(job.data_dir), job.profile)
        digest = data.fingerprint(splits)
        if digest != job.data_digest:
            raise ConfigError(f"worker {address} has other Fashion-MNIST files than the compare "
                              f"(data digest {digest}, expected {job.data_digest}); give every "
                              "worker the same files (FASHION_MNIST_DIR)")
        setup = TuningSetup(job.storage_url, tuning.open_storage(job.storage_url), job.workers,
                            job.data_dir)
        _ready.clear()
        _ready[key] = (splits, setup)
    return (*_ready[key], address, threads)


def _pipeline_task(task: Task, name: str, label: str) -> Any:
    """One pipeline on a worker; its final run is a child of the compare run. Dask runs a
    finished task again when its result died with its worker before the compare fetched it
    (a killed worker that had finished one pipeline and started the next): the run it made
    is returned then, not a second model trained."""
    from threadpoolctl import threadpool_limits

    from study.attempts import Outcome

    splits, setup, address, threads = _prepare(task)
    spec, job = pipelines.load(name), task.job
    done = tracking.final_run_of(job.parent_run_id, spec.name)
    if done:  # a finished task's result lost with a dead worker: Dask runs the task again
        logger.info(f"=== {label}: {spec.name} already trained in this compare (run "
                    f"{done['run_id']}); not trained again after its result was lost with a "
                    "dead worker")
        return Outcome(spec.name, run_id=done["run_id"], where=done.get("dask_worker", address))
    logger.info(f"=== {label}: {spec.name} ({spec.description or spec.model}) on worker "
                f"{address} in process {os.getpid()}, {threads} thread(s)")
    with threadpool_limits(threads):  # BLAS and OpenMP were loaded before the task came
        outcome = job.attempt(spec, job.profile, splits, job.seed, setup, job.parent_run_id,
                              job.data_digest)
    outcome.where = address
    if outcome.run_id:  # the MLflow UI shows where each model was trained
        tracking.set_tags(outcome.run_id, {"dask_worker": address})
    return outcome


def _figures_task(task: Task, names: list[str]) -> Any:
    """The reduction figures on a worker, as one more task beside the pipelines."""
    from threadpoolctl import threadpool_limits

    splits, _, address, threads = _prepare(task)
    with threadpool_limits(threads):
        outcome = task.job.figures(pipelines.resolve(names), splits, task.job.seed,
                                   task.job.parent_run_id)
    outcome.where = address
    return outcome


def run(client: Any, target: Target, todo: list[tuple[str, Any]], job: Any,
        reduced: list[str]) -> Iterator[Any]:
    """Each pipeline (and the reduction figures) as one task on the cluster, in the order
    selected (as side by side), yielding the outcomes as they finish. A worker that dies loses only its pipeline
    (listed as failed, with the worker's address); Ctrl-C cancels the compare's tasks and
    stops their workers."""
    from distributed import as_completed

    task = Task(job, config.tracking_uri(), config.code_digest(), shares(client))
    logger.info(f"{len(todo)} pipeline(s) as tasks on {len(task.shares)} Dask worker(s): "
                + ", ".join(f"{a} ({n} thread(s))" for a, n in sorted(task.shares.items())))
    # in order, not the longest first: which pipelines share the machine's cores changes each
    # one's speed more than the order saves (measured: benchmarks/cluster.py, docs/scaling-out.md)
    waiting = [(spec.name, _pipeline_task, (task, spec.name, label)) for label, spec in todo]
    if reduced:
        waiting.append(("figures", _figures_task, (task, reduced)))
    total, started = len(waiting), time.perf_counter()
    running: dict[Any, str] = {}
    finished = as_completed()
    try:
        _submit(client, waiting, running, finished, job.parent_run_id)
        for done, future in enumerate(finished, start=1):
            outcome = _outcome(running.pop(future), future)
            logger.info(f"--- {done}/{total} done: {outcome.pipeline}"
                        f"{' FAILED' if outcome.failure else ''}"
                        f"{' on ' + outcome.where if outcome.where else ''} "
                        f"({time.perf_counter() - started:.0f} s)")
            yield outcome
            _submit(client, waiting, running, finished, job.parent_run_id)
    except BaseException:  # interrupted: stop our tasks now, not after their pipeline
        _cancel(client, target, list(running))
        raise


def _submit(client: Any, waiting: list, running: dict, finished: Any, parent_id: str) -> None:
    """Hand out as many tasks as the cluster has threads free, no more: Dask assigns a task
    to a worker as soon as it is submitted, and a worker that dies fails every task assigned
    to it, not only the one it was running."""
    threads = sum(w.get("nthreads", 1) for w in
                  client.scheduler_info(n_workers=-1)["workers"].values())
    while waiting and len(running) < max(1, threads):
        name, function, args = waiting.pop(0)
        future = client.submit(function, *args, pure=False, retries=0,
                               key=f"{name}-{parent_id}")
        running[future] = name
        finished.add(future)


def _outcome(name: str, future: Any) -> Any:
    """The task's Outcome; a dead worker or an error outside the pipeline's guard as a
    failure of that pipeline."""
    from distributed.scheduler import KilledWorker

    from study.attempts import Outcome, failed_outcome

    try:
        return future.result()
    except KilledWorker as exc:
        worker = getattr(getattr(exc, "last_worker", None), "address", "?")
        return Outcome(name, failure=f"its Dask worker {worker} died (killed or out of "
                       "memory?); rerun the same command to resume", where=worker)
    except Exception as exc:  # raised outside the pipeline's own guard (its worker's setup)
        return failed_outcome(name, exc)


def _cancel(client: Any, target: Target, futures: list) -> None:
    """Cancel the compare's tasks; a task already running cannot be stopped inside its
    worker, so the workers running one are restarted (a LocalCluster's close stops them)."""
    keys = {f.key for f in futures}
    busy = [] if target.is_local else [
        worker for worker, running in client.processing().items() if keys & set(running)]
    client.cancel(list(futures), force=True)
    if busy:
        logger.warning(f"restarting the Dask worker(s) running this compare's pipelines: "
                       f"{', '.join(busy)}")
        client.restart_workers(busy, raise_for_error=False)
