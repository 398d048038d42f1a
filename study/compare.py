"""The compare job: load -> split -> tune (validation) -> final fit -> test once -> leaderboard."""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from study import config, data, leaderboard, pipelines, report, tracking, training, tuning
from study.errors import ConfigError, first_line


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
    tuning_log = tracking.TuningLog(spec.name, tuning.study_name(spec, profile, seed), profile,
                                    parent_run_id=parent_run_id)
    try:
        if tuner.workers > 1 and spec.search:
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
    fit = training.fit(spec, params, splits.x_train, splits.y_train, splits.x_val, splits.y_val,
                       seed, progress=f"[{spec.name}] final", cache=False)
    val_accuracy = float(np.mean(fit.predict_proba(splits.x_val).argmax(axis=1) == splits.y_val))
    start = time.perf_counter()
    proba = fit.predict_proba(splits.x_test)  # the one and only look at the test set
    predict_seconds = time.perf_counter() - start
    from study.evaluation import evaluate

    evaluation = evaluate(splits.y_test, proba)
    run_id = tracking.log_final(
        spec=spec, profile=profile, seed=seed, params=params, tune=tuned, fit=fit,
        evaluation=evaluation, val_accuracy=val_accuracy, predict_seconds=predict_seconds,
        n_params=training.count_params(fit.model, fit.kind),
        model_bytes=training.model_bytes(fit.model, fit.kind), x_example=splits.x_val[:5],
        data_digest=data_digest,
    )
    log(f"[{spec.name}] test_accuracy={evaluation.accuracy:.4f} test_macro_f1={evaluation.macro_f1:.4f} "
        f"val_accuracy={val_accuracy:.4f} fit={fit.fit_seconds:.1f}s"
        f"{' [' + '; '.join(fit.notes) + ']' if fit.notes else ''}")
    return run_id


def reduction_figures(specs, splits: data.Splits, seed: int) -> None:
    """PCA variance curve and 2-D maps of the test set, when any pipeline reduces features."""
    reducers = {spec.reducer for spec in specs} - {"none"}
    if not reducers:
        return
    import tempfile
    from pathlib import Path

    from study import projections

    log(f"figures: dimensionality reduction ({', '.join(sorted(reducers))})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        needed = projections.explained_variance(splits.x_train, tmp / "pca_explained_variance.png")
        projections.pca_map(splits.x_train, splits.x_test, splits.y_test, seed, tmp / "pca_map.png")
        if "umap" in reducers:
            projections.umap_map(splits.x_train, splits.y_train, splits.x_test, splits.y_test,
                                 seed, tmp / "umap_map.png")
        tracking.log_artifacts(tmp, "reduction")
        tracking.log_metrics(needed)


def _redact(url: str) -> str:
    """A storage URL without its password, fit for logging."""
    import re

    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def compare(profile: str = config.DEFAULT_PROFILE, pipeline_names: str | None = "all",
            seed: int = config.SEED, data_dir: str | None = None,
            storage: str | None = None, workers: int = 1) -> CompareResult:
    """Run every selected pipeline and return the ranked leaderboard of this invocation.

    Rerunning after an interruption resumes: studies continue from their stored trials and
    finished pipelines of the interrupted compare are reused, not retrained."""
    if profile not in config.PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid: {', '.join(config.PROFILES)}")
    if workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers}")
    specs = pipelines.resolve(pipeline_names)  # validate everything before any work starts
    start = time.perf_counter()
    dataset = data.load(data_dir)  # bad data stops us before any store is touched
    splits = data.make_splits(dataset, config.PROFILES[profile])
    data_seconds = time.perf_counter() - start
    storage_url = tuning.resolve_storage(storage)
    tuner = Tuner(storage_url, tuning.open_storage(storage_url), workers, data_dir)
    tracking.configure()
    stale = tracking.mark_stale_runs()
    if stale:
        log(f"resume: {len(stale)} interrupted compare run(s) marked KILLED ({', '.join(stale)})")
    log(f"data: {dataset.source} -> train {len(splits.y_train)}, validation {len(splits.y_val)}, "
        f"test {len(splits.y_test)} ({profile} profile)")
    with tracking.compare_run(profile, seed, [s.name for s in specs]) as parent_id:
        tracking.log_metrics({"data_seconds": data_seconds})
        tracking.log_params({"workers": workers, "optuna_storage": _redact(storage_url)})
        data_digest = data.fingerprint(splits)
        reused = tracking.adopt_finished(parent_id, profile, seed, data_digest,
                                         {s.name: s.digest for s in specs})
        failures: dict[str, str] = {}
        for i, spec in enumerate(specs, start=1):
            if spec.name in reused:
                log(f"=== pipeline {i}/{len(specs)}: {spec.name}: reusing run {reused[spec.name]} "
                    "of the interrupted compare (same definition, data and profile)")
                continue
            log(f"=== pipeline {i}/{len(specs)}: {spec.name} ({spec.description or spec.model})")
            started = time.perf_counter()
            try:
                run_id = run_pipeline(spec, profile, splits, seed, tuner, parent_id, data_digest)
            except Exception as exc:  # one broken pipeline must not cost the others' results
                reason = f"{type(exc).__name__}: {first_line(exc)}"
                failures[spec.name] = reason
                tracking.log_failure(spec, profile, traceback.format_exc())
                log(f"[{spec.name}] FAILED ({reason}); continuing with the other pipelines")
                continue
            tracking.log_metric(run_id, "pipeline_seconds", time.perf_counter() - started)
        started = time.perf_counter()
        reduction_figures(specs, splits, seed)
        tracking.log_metrics({"figures_seconds": time.perf_counter() - started,
                              "compare_seconds": time.perf_counter() - start})
        if failures:
            tracking.log_text("".join(f"{k}: {v}\n" for k, v in failures.items()), "failures.txt")
    # The parent run is closed (FINISHED) before the report reads it back from MLflow.
    result = CompareResult(parent_id, leaderboard.rank(tracking.final_runs(parent_id)),
                           time.perf_counter() - start, failures)
    for row in result.rows:
        tracking.set_rank(row["run_id"], row["rank"])
    if result.rows:  # before the report: a report problem must not cost the registration
        result.registry = tracking.register_champion(result.rows[0]["run_id"])

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
