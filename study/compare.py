"""The compare job: load -> split -> tune (validation) -> final fit -> test once -> leaderboard."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator

from study import config, data, leaderboard, pipelines, report, tracking, tuning
from study.attempts import (Outcome, TuningSetup, attempt, attempt_reduction_figures,
                            failed_outcome)
from study.errors import ConfigError, RegistryError

logger = logging.getLogger(__name__)


@dataclass
class CompareResult:
    run_id: str
    rows: list[dict[str, Any]]
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)  # pipeline -> one-line reason
    report: Any = None  # the report folder
    registry: dict[str, Any] = field(default_factory=dict)  # champion version, alias moved
    skipped: dict[str, str] = field(default_factory=dict)  # pipeline -> why a time budget did


def build_ensemble(parent_id: str, profile: config.Profile, splits: data.Splits,
                   data_digest: str) -> Outcome:
    """The ensemble stage, after the pipelines and before ranking, with its failure caught:
    the models themselves are logged already and keep their places."""
    from study import ensemble_stage

    started = time.perf_counter()
    logger.info("=== ensemble: weights chosen on the final models' validation probabilities")
    try:
        result = ensemble_stage.run(parent_id, profile.name, splits.y_val, splits.y_test,
                                    splits.x_test, data_digest)
    except Exception as exc:
        return failed_outcome(ensemble_stage.NAME, exc)
    logger.info(result.message)
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
            logger.warning(f"[{outcome.pipeline}] FAILED ({outcome.failure}); continuing with the others")
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


def compare(profile: config.Profile | str = config.DEFAULT_PROFILE,
            pipeline_names: str | None = "all", seed: int = config.SEED,
            data_dir: str | None = None, storage: str | None = None, workers: int = 1,
            parallel: int = 1, budget_minutes: float | None = None,
            cluster: str | None = None) -> CompareResult:
    """Run every selected pipeline and return the ranked leaderboard of this invocation.

    Rerunning after an interruption resumes: studies continue from their stored trials and
    finished pipelines of the interrupted compare are reused, not retrained. With
    `budget_minutes`, everything from loading the data to the report ends within that time
    (timebudget, budget_run). With `cluster` (local:N or a Dask scheduler's address) each
    pipeline is a task on a Dask cluster (study.cluster)."""
    from study import cluster as dask_cluster

    profile = config.profile(profile)
    target = cluster if isinstance(cluster, dask_cluster.Target) else dask_cluster.parse(cluster)
    _check_engines(workers, parallel, target, budget_minutes)
    clock = None
    if budget_minutes is not None:  # started now: the budget covers loading the data
        from study import budget_run

        clock = budget_run.start_clock(budget_minutes, parallel)
    specs = pipelines.resolve(pipeline_names)  # validate everything before any work starts
    start = time.perf_counter()
    dataset = data.load(data_dir)  # bad data stops us before any store is touched
    splits = data.make_splits(dataset, profile)
    data_seconds = time.perf_counter() - start
    if clock:
        budget_run.check_room(clock, data_seconds)
    storage_url = resolve_storage(storage)
    # before anything connects: a scheduler's workers cannot share files on this machine
    dask_cluster.check_shared(target, config.tracking_uri(), storage_url)
    setup = TuningSetup(storage_url, open_stores(storage_url), workers, data_dir)
    tracking.check_can_write()  # a READ-only user stops here, before any run or trial
    stale = tracking.mark_stale_runs()
    if stale:
        logger.info(f"resume: {len(stale)} interrupted compare run(s) marked KILLED "
                    f"({', '.join(stale)})")
    logger.info(f"data: {dataset.source} -> train {len(splits.y_train)}, validation "
                f"{len(splits.y_val)}, test {len(splits.y_test)} ({profile.name} profile)")
    engine = contextlib.ExitStack()
    client = engine.enter_context(dask_cluster.connect(target)) if target else None
    with engine, tracking.compare_run(profile.name, seed, [s.name for s in specs]) as parent_id:
        tracking.log_metrics({"data_seconds": data_seconds})
        tracking.log_params({"workers": workers, "parallel": parallel,
                             "cluster": target.address if target else "none",
                             "optuna_storage": config.redact(storage_url)})
        data_digest = data.fingerprint(splits)
        tracking.log_data_inputs(data_digest, splits.rows())
        todo = _not_reused(specs, parent_id, profile, seed, data_digest)
        if clock is None and parallel == 1 and not target:  # a budget prints its own plan
            from study import budget_run

            budget_run.forecast(todo, profile.name, parent_id, data_seconds)
        started = time.perf_counter()
        runner = _runner(todo, specs, profile, splits, seed, setup, parent_id, data_digest,
                         parallel, clock, (target, client))
        outcomes = list(_record(runner, specs, profile.name))
        engine.close()  # the cluster's work is done; the ensemble and report are this process's
        tracking.log_metrics({"pipelines_seconds": time.perf_counter() - started})
        outcomes += _record([build_ensemble(parent_id, profile, splits, data_digest)], specs,
                            profile.name)
        failures = _listed(outcomes, "failure", "failures.txt")
        skipped = _listed(outcomes, "skipped", "skipped.txt")
        if failures:  # the next compare reuses this one's finished models (tracking.resume)
            tracking.set_tags(parent_id, {"resumable": "true"})
        tracking.log_metrics({"compare_seconds": time.perf_counter() - start})
    # The parent run is closed (FINISHED) before the report reads it back from MLflow. The
    # significance is computed here too: the terminal and leaderboard.txt must not depend on
    # the report succeeding.
    rows, _ = tracking.ranked(tracking.final_runs(parent_id), splits.y_test)
    result = CompareResult(parent_id, rows, time.perf_counter() - start, failures,
                           skipped=skipped)
    _rank_register_report(result, splits.y_test, data_dir, start)
    result.seconds = time.perf_counter() - start  # data to written report: what a budget holds
    tracking.log_metrics({"total_seconds": result.seconds}, run_id=parent_id)
    return result


def plan(profile: config.Profile | str = config.DEFAULT_PROFILE,
         pipeline_names: str | None = "all", data_dir: str | None = None,
         storage: str | None = None, workers: int = 1, parallel: int = 1,
         budget_minutes: float | None = None, cluster=None) -> str:
    """The plan `compare` with these arguments would print, checked as it checks them, in
    seconds: no data loaded, no store, run, study or file written (`--plan-only`)."""
    from study import budget_run
    from study import cluster as dask_cluster

    profile = config.profile(profile)
    target = cluster if isinstance(cluster, dask_cluster.Target) else dask_cluster.parse(cluster)
    _check_engines(workers, parallel, target, budget_minutes)
    specs = pipelines.resolve(pipeline_names)
    data.locate(data_dir, download=False)  # the files are there; reading them is the compare's
    resolve_storage(storage)
    return budget_run.plan_only(specs, profile.name, budget_minutes, parallel)


def _check_engines(workers: int, parallel: int, target, budget_minutes: float | None) -> None:
    """How the work is spread: each way on its own, the numbers whole and positive."""
    if workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers}")
    if parallel < 1:
        raise ConfigError(f"parallel must be a whole number >= 1, got {parallel}")
    if target and parallel > 1:
        raise ConfigError("cluster runs the pipelines side by side already; drop parallel "
                          "(local:N is parallel=N through Dask)")
    if target and budget_minutes is not None:
        raise ConfigError("budget_minutes shares the time out one pipeline at a time; drop "
                          "cluster (or the budget)")


def _runner(todo, specs, profile: config.Profile, splits: data.Splits, seed: int,
            setup: TuningSetup, parent_id: str, data_digest: str, parallel: int,
            clock, engine=(None, None)) -> Iterator[Outcome]:
    """The pipelines' outcomes as they finish: under a time budget, on a Dask cluster
    (`engine`: its target and client), side by side, or one at a time."""
    if clock:
        from study import budget_run

        return budget_run.pipelines_within(clock, todo, specs, profile, splits, seed, setup,
                                           parent_id, data_digest)
    target, client = engine
    if (parallel > 1 or target) and todo:
        from study import cluster, side_by_side

        job = side_by_side.Job(profile, seed, setup.data_dir, setup.storage_url, setup.workers,
                               parent_id, data_digest, attempt, attempt_reduction_figures)
        if target:
            return side_by_side.in_waves(
                todo, specs, lambda now, reduced: cluster.run(client, target, now, job, reduced))
        return side_by_side.in_waves(
            todo, specs, lambda now, reduced: side_by_side.run(now, job, parallel, reduced))
    return _one_at_a_time(todo, specs, profile, splits, seed, setup, parent_id, data_digest)


def _listed(outcomes: list[Outcome], what: str, artifact: str) -> dict[str, str]:
    """{pipeline: reason} of the outcomes that failed (or were skipped), also logged as a
    text artifact of the compare run."""
    listed = {o.pipeline: getattr(o, what) for o in outcomes if getattr(o, what)}
    if listed:
        tracking.log_text("".join(f"{k}: {v}\n" for k, v in listed.items()), artifact)
    return listed


def _not_reused(specs, parent_id: str, profile: config.Profile, seed: int,
                data_digest: str) -> list[tuple[str, Any]]:
    """(progress label, spec) of the pipelines to run: the finished models of an earlier
    compare that was interrupted or ended with failures, with the same definition, code,
    data, profile and seed, are adopted instead."""
    refused: list[str] = []
    reused = tracking.adopt_finished(parent_id, profile.name, seed, data_digest,
                                     {s.name: s.digest for s in specs}, refused)
    refused = [n for n in refused if n not in reused]
    if refused:
        logger.info(f"resume: not reusing {', '.join(refused)} of an earlier compare: the "
                    "code in study/ changed since (retrained)")
    todo = []
    for i, spec in enumerate(specs, start=1):
        label = f"pipeline {i}/{len(specs)}"
        if spec.name in reused:
            # an earlier compare that was interrupted or ended with failed pipelines (resumable)
            logger.info(f"=== {label}: {spec.name}: reusing run {reused[spec.name]} of an "
                        "earlier compare (same definition, code, data and profile)")
        else:
            todo.append((label, spec))
    return todo


def _one_at_a_time(todo, specs, profile: config.Profile, splits: data.Splits, seed: int,
                   setup: TuningSetup, parent_id: str, data_digest: str) -> Iterator[Outcome]:
    """The pipelines one after the other in this process, then the reduction figures."""
    for label, spec in todo:
        logger.info(f"=== {label}: {spec.name} ({spec.description or spec.model})")
        yield attempt(spec, profile, splits, seed, setup, parent_id, data_digest)
    yield attempt_reduction_figures(specs, splits, seed, parent_id)


def _rank_register_report(result: CompareResult, y_test, data_dir: str | None,
                          start: float) -> None:
    """Ranks on the final runs, the champion (chosen on validation) registered, the report
    written; a registry or report problem is a failure of its own, never the loss of the
    models. `start`: the compare's perf_counter start, for the time up to the report."""
    parent_id, failures = result.run_id, result.failures
    for row in result.rows:
        tracking.set_rank(row["run_id"], row["rank"])
    champion = leaderboard.champion_of(result.rows)
    if champion:  # before the report: a report problem must not cost the registration
        logger.info(f"champion: {champion['pipeline']} (best validation accuracy "
                    f"{champion['val_accuracy']:.4f}; test {champion['test_accuracy']:.4f})")
        try:
            result.registry = tracking.register_champion(champion["run_id"], y_test)
        except RegistryError as exc:
            failures["registry"] = str(exc)
            logger.warning(f"registry FAILED ({exc})")
    # every stage but the report, which shows it (total_seconds, logged after, includes it)
    tracking.log_metrics({"before_report_seconds": time.perf_counter() - start},
                         run_id=parent_id)
    try:
        built = report.build(parent_id, data_dir=data_dir)
    except Exception as exc:  # every number is in MLflow already; the report can be rebuilt
        failures["report"] = (f"{type(exc).__name__}: {exc}; rebuild it with `mlflow run . -e "
                              f"report -P run_id={parent_id}`")
        tracking.log_text(traceback.format_exc(), "report_traceback.txt", run_id=parent_id)
        logger.warning(f"report FAILED ({failures['report']})")
    else:
        result.rows, result.report = built.rows, built.folder
        logger.info(f"report: {built.html}")
    tracking.log_text(leaderboard.render_text(result.rows, wide=True) + "\n", "leaderboard.txt",
                      run_id=parent_id)
