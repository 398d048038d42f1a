"""The compare job: load -> split -> tune (validation) -> final fit -> test once -> leaderboard."""

from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator


from study import config, data, leaderboard, pipelines, report, tracking, training, tuning
from study.errors import ConfigError, RegistryError, first_line


@dataclass
class CompareResult:
    run_id: str
    rows: list[dict[str, Any]]
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)  # pipeline -> one-line reason
    report: Any = None  # the report folder
    registry: dict[str, Any] = field(default_factory=dict)  # champion version, alias moved


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Tuner:
    """Where and how the trials run: one Optuna storage, in this process or in N workers."""

    storage_url: str
    storage: Any  # the opened storage, for in-process tuning
    workers: int = 1
    data_dir: str | None = None


def run_pipeline(spec, profile: str, splits: data.Splits, seed: int, tuner: Tuner,
                 parent_run_id: str, data_digest: str) -> str:
    """Tune one pipeline, fit its final model, score it on the test set once, log it."""
    started = time.time()
    tuning_log = tracking.TuningLog(spec.name, tuning.study_name(spec, profile, seed), profile,
                                    parent_run_id=parent_run_id)
    try:
        if tuner.workers > 1 and spec.tunes(profile):
            tuned = tuning.tune_parallel(spec, profile, seed, tuner.storage_url, tuner.workers,
                                         splits, tuner.data_dir, tuning_log.run_id,
                                         log_trial=tuning_log.log_trial)
        else:
            tuned = tuning.tune(spec, profile, splits, seed, tuner.storage,
                                log_trial=tuning_log.log_trial)
    except BaseException:
        tuning_log.finish(None, status="FAILED")
        raise
    tuning_log.finish(tuned)
    params = tuning.final_params(spec, profile, tuned.best_params)
    log(f"[{spec.name}] final fit on {len(splits.y_train)} rows with {tuned.best_params or 'fixed parameters'}")
    fit, val_proba = training.final_fit(spec, params, splits, seed,
                                        progress=f"[{spec.name}] final")
    val_accuracy = training.accuracy(val_proba, splits.y_val)
    start = time.perf_counter()
    proba = fit.predict_proba(splits.x_test)  # the one and only look at the test set
    predict_seconds = time.perf_counter() - start
    from study.evaluation import evaluate

    evaluation = evaluate(splits.y_test, proba)
    run_id = tracking.log_final(
        spec=spec, profile=profile, seed=seed, params=params, tune=tuned, fit=fit,
        evaluation=evaluation, val_accuracy=val_accuracy, val_proba=val_proba,
        predict_seconds=predict_seconds,
        n_params=training.count_params(fit.model, fit.kind),
        model_bytes=training.model_bytes(fit.model, fit.kind), x_example=splits.x_val[:5],
        data_digest=data_digest, parent_run_id=parent_run_id, started=started,
        data_rows=splits.rows(),
    )
    log(f"[{spec.name}] test_accuracy={evaluation.accuracy:.4f} test_macro_f1={evaluation.macro_f1:.4f} "
        f"val_accuracy={val_accuracy:.4f} fit={fit.fit_seconds:.1f}s"
        f"{' [' + '; '.join(fit.notes) + ']' if fit.notes else ''}")
    return run_id


@dataclass
class Outcome:
    """What became of one pipeline: its final run, or the one-line reason it failed."""

    pipeline: str
    run_id: str | None = None
    failure: str | None = None
    trace: str = ""


def attempt(spec, profile: str, splits: data.Splits, seed: int, tuner: Tuner, parent_run_id: str,
            data_digest: str) -> Outcome:
    """run_pipeline, with a failure caught: one broken pipeline must not cost the others."""
    started = time.perf_counter()
    try:
        run_id = run_pipeline(spec, profile, splits, seed, tuner, parent_run_id, data_digest)
    except Exception as exc:
        return _failed(spec.name, exc)
    tracking.log_metric(run_id, "pipeline_seconds", time.perf_counter() - started)
    return Outcome(spec.name, run_id)


def _failed(name: str, exc: Exception) -> Outcome:
    """Call inside the except block: the traceback is the one being handled."""
    return Outcome(name, failure=f"{type(exc).__name__}: {first_line(exc)}",
                   trace=traceback.format_exc())


def figures(specs, splits: data.Splits, seed: int, run_id: str) -> Outcome:
    """reduction_figures, with a failure caught like a pipeline's."""
    try:
        reduction_figures(specs, splits, seed, run_id)
    except Exception as exc:
        return _failed("figures", exc)
    return Outcome("figures")


@dataclass
class Job:
    """What a pipeline worker process needs to work for one compare run."""

    profile: str
    seed: int
    data_dir: str | None
    storage_url: str
    workers: int
    parent_run_id: str
    data_digest: str


_worker: dict[str, Any] = {}  # per pipeline worker process: its job, data and storage


def _start_worker(job: Job) -> None:
    """Initializer of a pipeline worker: the same data, splits and stores as its compare."""
    tuning.exit_with_parent()
    tracking.configure()
    dataset = data.load(job.data_dir)
    splits = data.make_splits(dataset, config.PROFILES[job.profile])
    if data.fingerprint(splits) != job.data_digest:  # cannot happen unless the files changed
        raise RuntimeError("the data files changed while the compare was running")
    _worker.update(job=job, splits=splits,
                   tuner=Tuner(job.storage_url, tuning.open_storage(job.storage_url),
                               job.workers, job.data_dir))


def _work(name: str, label: str) -> Outcome:
    """One pipeline in a worker process; its final run is a child of the compare run."""
    job, spec = _worker["job"], pipelines.load(name)
    log(f"=== {label}: {spec.name} ({spec.description or spec.model}) in process {os.getpid()}")
    return attempt(spec, job.profile, _worker["splits"], job.seed, _worker["tuner"],
                   job.parent_run_id, job.data_digest)


def _figures(names: list[str]) -> Outcome:
    job = _worker["job"]
    return figures(pipelines.resolve(names), _worker["splits"], job.seed, job.parent_run_id)


@contextmanager
def _child_environment(threads: int) -> Iterator[None]:
    """os.environ as the pool's processes must start with, while they are started."""
    saved, env = dict(os.environ), config.worker_env(threads)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def side_by_side(todo: list[tuple[str, Any]], job: Job, parallel: int,
                 reduced: list[str]) -> Iterator[Outcome]:
    """Run the pipelines `parallel` at a time in worker processes, each with its share of the
    cores, yielding outcomes as they finish. Worth it where libraries use one core (libsvm,
    lbfgs, seeded UMAP): two of them side by side use the machine that one leaves idle."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    n = min(parallel, len(todo) + bool(reduced))
    threads = max(1, config.threads() // n)
    log(f"{len(todo)} pipeline(s) in {n} worker processes, {threads} thread(s) each")
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(job,))
    try:
        with _child_environment(threads):  # the pool starts its processes on submit
            futures = {pool.submit(_work, spec.name, label): spec.name for label, spec in todo}
            if reduced:  # the figures of the reduced pipelines are one more task
                futures[pool.submit(_figures, reduced)] = "figures"
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                outcome = future.result()
            except BrokenProcessPool:  # a worker died (killed, out of memory)
                outcome = Outcome(futures[future], failure="its worker process died (killed or "
                                  "out of memory?); rerun the same command to resume")
            except Exception as exc:  # raised outside the pipeline's own guard (loading it)
                outcome = _failed(futures[future], exc)
            log(f"--- {done}/{len(futures)} done: {outcome.pipeline}"
                f"{' FAILED' if outcome.failure else ''}")
            yield outcome
    except BaseException:  # interrupted: stop the workers now, not after their pipeline
        for process in list((pool._processes or {}).values()):
            process.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def reduction_figures(specs, splits: data.Splits, seed: int, run_id: str) -> None:
    """PCA variance curve and 2-D maps of the test set, when any pipeline reduces features."""
    reducers = {spec.reducer for spec in specs} - {"none"}
    if not reducers:
        return
    import tempfile
    from pathlib import Path

    from study import projections

    log(f"figures: dimensionality reduction ({', '.join(sorted(reducers))})")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        needed = projections.explained_variance(splits.x_train, tmp / "pca_explained_variance.png")
        projections.pca_map(splits.x_train, splits.x_test, splits.y_test, seed, tmp / "pca_map.png")
        if "umap" in reducers:
            projections.umap_map(splits.x_train, splits.y_train, splits.x_test, splits.y_test,
                                 seed, tmp / "umap_map.png")
        tracking.log_artifacts(tmp, "reduction", run_id=run_id)
        tracking.log_metrics({**needed, "figures_seconds": time.perf_counter() - start},
                             run_id=run_id)


def build_ensemble(parent_id: str, profile: str, splits: data.Splits, data_digest: str) -> Outcome:
    """The ensemble stage, after the pipelines and before ranking, with its failure caught:
    the models themselves are logged already and keep their places."""
    from study import ensemble_stage

    started = time.perf_counter()
    log("=== ensemble: weights chosen on the final models' validation probabilities")
    try:
        result = ensemble_stage.run(parent_id, profile, splits.y_val, splits.y_test,
                                    splits.x_test, data_digest, log=log)
    except Exception as exc:
        return _failed(ensemble_stage.NAME, exc)
    log(result.message)
    tracking.log_metrics({"ensemble_seconds": time.perf_counter() - started}, run_id=parent_id)
    return Outcome(ensemble_stage.NAME, result.run_id)


def _record(outcomes, specs, profile: str) -> Iterator[Outcome]:
    """Say how each pipeline ended and keep a failure's traceback in a FAILED child run."""
    by_name = {spec.name: spec for spec in specs}
    for outcome in outcomes:
        if outcome.failure:
            if outcome.pipeline in by_name:
                tracking.log_failure(by_name[outcome.pipeline], profile, outcome.trace)
            else:
                tracking.log_text(outcome.trace, f"{outcome.pipeline}_traceback.txt")
            log(f"[{outcome.pipeline}] FAILED ({outcome.failure}); continuing with the others")
        yield outcome


RUN_STORAGE = "@run"


def resolve_storage(storage: str | None) -> str:
    """tuning.resolve_storage, plus what `mlflow run` needs. MLproject passes `--storage @run`:
    the storage is then that run's own `storage` parameter, because `mlflow run` prints the
    command line it starts and a password typed into -P would be shown. A refused URL with a
    password is also scrubbed from the run's params, which `mlflow run` logged before."""
    if storage == RUN_STORAGE:
        if not os.environ.get("MLFLOW_RUN_ID"):
            raise ConfigError(f"--storage {RUN_STORAGE} reads the storage parameter of the "
                              "`mlflow run` run that starts this command; outside `mlflow run`, "
                              "give the storage itself (local, a journal path or an RDB URL)")
        storage = tracking.project_param("storage")
    try:
        return tuning.resolve_storage(storage)
    except ConfigError:
        if storage and config.carries_secret(storage):
            tracking.scrub_project_run()
        raise


def open_stores(storage_url: str):
    """Check the MLflow store and open the Optuna storage, the one that can fail without
    writing anything first: an unreachable server or database leaves no local file behind
    (a local journal or SQLite store is only created once the remote one has answered)."""
    if "://" in storage_url:  # an RDB URL: it may be down
        storage = tuning.open_storage(storage_url)
        tracking.configure()
        return storage
    tracking.configure()  # a tracking server may be down; the journal is local
    return tuning.open_storage(storage_url)


def compare(profile: str = config.DEFAULT_PROFILE, pipeline_names: str | None = "all",
            seed: int = config.SEED, data_dir: str | None = None,
            storage: str | None = None, workers: int = 1, parallel: int = 1) -> CompareResult:
    """Run every selected pipeline and return the ranked leaderboard of this invocation.

    Rerunning after an interruption resumes: studies continue from their stored trials and
    finished pipelines of the interrupted compare are reused, not retrained."""
    if profile not in config.PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid: {', '.join(config.PROFILES)}")
    if workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers}")
    if parallel < 1:
        raise ConfigError(f"parallel must be a whole number >= 1, got {parallel}")
    specs = pipelines.resolve(pipeline_names)  # validate everything before any work starts
    start = time.perf_counter()
    dataset = data.load(data_dir)  # bad data stops us before any store is touched
    splits = data.make_splits(dataset, config.PROFILES[profile])
    data_seconds = time.perf_counter() - start
    storage_url = resolve_storage(storage)
    tuner = Tuner(storage_url, open_stores(storage_url), workers, data_dir)
    tracking.check_can_write()  # a READ-only user stops here, before any run or trial
    stale = tracking.mark_stale_runs()
    if stale:
        log(f"resume: {len(stale)} interrupted compare run(s) marked KILLED ({', '.join(stale)})")
    log(f"data: {dataset.source} -> train {len(splits.y_train)}, validation {len(splits.y_val)}, "
        f"test {len(splits.y_test)} ({profile} profile)")
    with tracking.compare_run(profile, seed, [s.name for s in specs]) as parent_id:
        tracking.log_metrics({"data_seconds": data_seconds})
        tracking.log_params({"workers": workers, "parallel": parallel,
                             "optuna_storage": config.redact(storage_url)})
        data_digest = data.fingerprint(splits)
        tracking.log_data_inputs(data_digest, splits.rows())
        refused: list[str] = []
        reused = tracking.adopt_finished(parent_id, profile, seed, data_digest,
                                         {s.name: s.digest for s in specs}, refused)
        refused = [n for n in refused if n not in reused]
        if refused:
            log(f"resume: not reusing {', '.join(refused)} of the interrupted compare: the code "
                "in study/ changed since (retrained)")
        todo = []
        for i, spec in enumerate(specs, start=1):
            label = f"pipeline {i}/{len(specs)}"
            if spec.name in reused:
                log(f"=== {label}: {spec.name}: reusing run {reused[spec.name]} of the "
                    "interrupted compare (same definition, code, data and profile)")
            else:
                todo.append((label, spec))
        reduced = [s.name for s in specs if s.reducer != "none"]  # they get figures
        started = time.perf_counter()

        def one_at_a_time() -> Iterator[Outcome]:
            for label, spec in todo:
                log(f"=== {label}: {spec.name} ({spec.description or spec.model})")
                yield attempt(spec, profile, splits, seed, tuner, parent_id, data_digest)
            yield figures(specs, splits, seed, parent_id)

        if parallel > 1 and todo:
            job = Job(profile, seed, data_dir, storage_url, workers, parent_id, data_digest)
            runner = side_by_side(todo, job, parallel, reduced)
        else:
            runner = one_at_a_time()
        outcomes = list(_record(runner, specs, profile))
        tracking.log_metrics({"pipelines_seconds": time.perf_counter() - started})
        outcomes += _record([build_ensemble(parent_id, profile, splits, data_digest)], specs,
                            profile)
        failures = {o.pipeline: o.failure for o in outcomes if o.failure}
        tracking.log_metrics({"compare_seconds": time.perf_counter() - start})
        if failures:
            tracking.log_text("".join(f"{k}: {v}\n" for k, v in failures.items()), "failures.txt")
    # The parent run is closed (FINISHED) before the report reads it back from MLflow.
    result = CompareResult(parent_id, leaderboard.rank(tracking.final_runs(parent_id)),
                           time.perf_counter() - start, failures)
    for row in result.rows:
        tracking.set_rank(row["run_id"], row["rank"])
    if result.rows:  # before the report: a report problem must not cost the registration
        try:
            result.registry = tracking.register_champion(result.rows[0]["run_id"], splits.y_test)
        except RegistryError as exc:
            failures["registry"] = str(exc)
            log(f"registry FAILED ({exc})")

    try:
        built = report.build(parent_id, data_dir=data_dir)
    except Exception as exc:  # every number is in MLflow already; the report can be rebuilt
        failures["report"] = (f"{type(exc).__name__}: {exc}; rebuild it with `mlflow run . -e "
                              f"report -P run_id={parent_id}`")
        tracking.log_text(traceback.format_exc(), "report_traceback.txt", run_id=parent_id)
        log(f"report FAILED ({failures['report']})")
    else:
        result.rows, result.report = built.rows, built.folder
        log(f"report: {built.html}")
    tracking.log_text(leaderboard.render_text(result.rows, wide=True) + "\n", "leaderboard.txt",
                      run_id=parent_id)
    return result
