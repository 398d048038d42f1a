"""Running one pipeline, and the reduction figures: tune on validation, final fit, the test
set once, logged as a final run; any failure caught as that pipeline's Outcome. What every
engine runs (one at a time, side by side, on a cluster, under a time budget) and the seed
repeats refit; it knows nothing of the compare that orchestrates them."""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import config, data, figures, tracking, training, tuning
from study.errors import ConfigError, first_line

logger = logging.getLogger(__name__)


@dataclass
class TuningSetup:
    """Where and how the trials run: one Optuna storage, in this process or in N workers."""

    storage_url: str
    storage: Any  # the opened storage, for in-process tuning
    workers: int = 1
    data_dir: str | None = None


def tune_pipeline(spec, budget, splits: data.Splits, seed: int, setup: TuningSetup,
                  parent_run_id: str) -> tuning.TuneResult:
    """The pipeline's tuning on validation rows, logged as its tuning run with trial runs."""
    tuning_log = tracking.TuningLog(spec.name, tuning.study_name(spec, budget.profile, seed),
                                    budget.profile, parent_run_id=parent_run_id)
    try:
        if setup.workers > 1 and spec.tunes(budget):
            tuned = tuning.tune_parallel(spec, budget, seed, setup.storage_url, setup.workers,
                                         splits, setup.data_dir, tuning_log.run_id,
                                         log_trial=tuning_log.log_trial)
        else:
            tuned = tuning.tune(spec, budget, splits, seed, setup.storage,
                                log_trial=tuning_log.log_trial)
    except BaseException:
        tuning_log.finish(None, status="FAILED")
        raise
    tuning_log.finish(tuned)
    return tuned


def run_pipeline(spec, profile: config.Profile, splits: data.Splits, seed: int,
                 setup: TuningSetup, parent_run_id: str, data_digest: str,
                 budget=None) -> str:
    """Tune one pipeline, fit its final model, score it on the test set once, log it.
    `budget`: the profile's Budget cut to a time budget's allowance (timebudget.allot)."""
    from study import serving
    from study.evaluation import PLAN_FAILED, evaluate, timed_proba
    from study.evaluation import limited_by as evaluation_limits

    started = time.time()
    recipe = spec.budget(profile)
    budget = budget or recipe
    all_rows = len(splits.y_train)
    if budget.train_fraction:  # a time budget's last resort to cover this family
        splits = data.train_part(splits, budget.train_fraction, seed)
    tuned = tune_pipeline(spec, budget, splits, seed, setup, parent_run_id)
    params = tuning.final_params(spec, budget, tuned.best_params)
    logger.info(f"[{spec.name}] final fit on {len(splits.y_train)} rows with "
                f"{tuned.best_params or 'fixed parameters'}")
    fit, val_proba = final_fit(spec, params, splits, seed, parent_run_id,
                               progress=f"[{spec.name}] final")
    val_accuracy = training.accuracy(val_proba, splits.y_val)
    # against the profile's recipe, not the allotment a time budget cut it to
    fit.info["limited_by"] = evaluation_limits(
        spec, recipe, budget, tuned, fit,
        tuning.final_params(spec, recipe, tuned.best_params).get("epochs"),
        (len(splits.y_train), all_rows))
    # a safety net that bound (a time cap, the recipe's tuning timeout): the plan failed
    stops = [note for note in fit.notes if note.startswith("time limit")]
    if f"tuning timeout: {PLAN_FAILED}" in fit.info["limited_by"]:
        stops.append(f"tuning timeout: {tuned.n_trials} of {recipe.n_trials} trials in "
                     f"{budget.timeout:g} s")
    if stops:
        fit.info["stopped_by_time_cap"] = "true"  # a tag: benchmarks count these
        logger.warning(f"[{spec.name}] {PLAN_FAILED}: {'; '.join(stops)}")
    if len(splits.y_train) < all_rows:  # what its cost on all the rows is estimated from
        fit.info["train_fraction"] = len(splits.y_train) / all_rows
    # the one and only look at the test set, timed as every row's prediction is
    proba, predict_seconds = timed_proba(fit.predict_proba, splits.x_test)
    # the temperature is fitted on the validation probabilities alone (evaluation.calibrate)
    evaluation = evaluate(splits.y_test, proba, val_proba, splits.y_val)
    with tempfile.TemporaryDirectory() as tmp:
        figures.final_model_figures(spec.name, evaluation, fit.history, Path(tmp))
        run_id = tracking.log_final(
            spec=spec, profile=profile.name, seed=seed, params=params, tune=tuned, fit=fit,
            evaluation=evaluation, val_accuracy=val_accuracy, val_proba=val_proba,
            predict_seconds=predict_seconds,
            n_params=training.count_params(fit.model, fit.kind),
            model_bytes=training.model_bytes(fit.model, fit.kind), x_example=splits.x_val[:5],
            figures_dir=Path(tmp), data_digest=data_digest, parent_run_id=parent_run_id,
            started=started, data_rows=splits.rows(), log_classifier=serving.log_model,
        )
    logger.info(f"[{spec.name}] test_accuracy={evaluation.accuracy:.4f} "
                f"test_macro_f1={evaluation.macro_f1:.4f} val_accuracy={val_accuracy:.4f} "
                f"fit={fit.total_seconds:.1f}s"
                f"{' [' + '; '.join(fit.notes) + ']' if fit.notes else ''}")
    return run_id


def final_fit(spec, params: dict[str, Any], splits: data.Splits, seed: int,
              parent_run_id: str, progress: str | None = None):
    """training.final_fit; a specialist is folded into its generalist's network as the
    compare `parent_run_id` logged it (the generalist ran first: pipelines.resolve orders
    them)."""
    if spec.boost:
        from study import boosting

        return boosting.final_fit(spec, params, splits, seed, progress=progress)
    if not spec.generalist:
        return training.final_fit(spec, params, splits, seed, progress=progress)
    from study import specialists

    general = tracking.final_run_of(parent_run_id, spec.generalist)
    if general is None:
        raise ConfigError(f"{spec.name} folds into {spec.generalist}, which has no final model "
                          "in this compare (it failed?); rerun the compare to retry both")
    training.configure_tensorflow(seed)  # its threads are set before loading starts TF
    fit, val_proba = specialists.final_fit(spec, params, splits, seed,
                                           tracking.load_network(general["run_id"]), progress)
    fit.info["generalist_run_id"] = general["run_id"]
    # its generalist's fit_seconds, with whatever that one is built on
    fit.base_seconds = float(general["metrics"].get("fit_seconds", 0.0))
    return fit, val_proba


@dataclass
class Outcome:
    """What became of one pipeline: its final run, the one-line reason it failed, or why a
    time budget skipped it."""

    pipeline: str
    run_id: str | None = None
    failure: str | None = None
    trace: str = ""
    skipped: str = ""
    where: str = ""  # the cluster worker that ran it


def attempt(spec, profile: config.Profile, splits: data.Splits, seed: int, setup: TuningSetup,
            parent_run_id: str, data_digest: str, budget=None) -> Outcome:
    """run_pipeline, with a failure caught: one broken pipeline must not cost the others."""
    started = time.perf_counter()
    try:
        run_id = run_pipeline(spec, profile, splits, seed, setup, parent_run_id, data_digest,
                              budget)
    except Exception as exc:
        return failed_outcome(spec.name, exc)
    tracking.log_metric(run_id, "pipeline_seconds", time.perf_counter() - started)
    return Outcome(spec.name, run_id)


def failed_outcome(name: str, exc: Exception) -> Outcome:
    """Call inside the except block: the traceback is the one being handled."""
    return Outcome(name, failure=f"{type(exc).__name__}: {first_line(exc)}",
                   trace=traceback.format_exc())


def attempt_reduction_figures(specs, splits: data.Splits, seed: int, run_id: str) -> Outcome:
    """reduction_figures, with a failure caught like a pipeline's."""
    try:
        reduction_figures(specs, splits, seed, run_id)
    except Exception as exc:
        return failed_outcome("figures", exc)
    return Outcome("figures")


def reduction_figures(specs, splits: data.Splits, seed: int, run_id: str) -> None:
    """PCA variance curve and 2-D maps of the test set, when any pipeline reduces features."""
    reducers = {spec.reducer for spec in specs} - {"none"}
    if not reducers:
        return
    from study import projections

    logger.info(f"figures: dimensionality reduction ({', '.join(sorted(reducers))})")
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
