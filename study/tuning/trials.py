"""Running trials in this process: the objective (fit on the tuning rows, score validation
accuracy), the line and MLflow run after each trial, in budget order or from the queue."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from study import training
from study.data import Splits, stratified_subsample
from study.errors import first_line
from study.models import get_builder
from study.pipelines import Budget, PipelineSpec
from study.tuning.storage import drain_queue, worker_id
from study.tuning.studies import FINISHED, suggest, trial_entry

logger = logging.getLogger(__name__)

TrialLogger = Callable[[dict[str, Any]], None]


def run_trials(study, storage, spec: PipelineSpec, budget: Budget, splits: Splits, seed: int,
               n_trials: int | None, timeout: float | None = None,
               log_trial: TrialLogger | None = None, of_budget: bool = True) -> list[dict]:
    """Run n_trials trials of the study in this process (fewer if the timeout strikes), or
    with n_trials None pop queued trials until the queue is empty (a parallel worker).
    Progress says "trial 3/5" against the budget, or "trial #3" for a worker's explicit share."""
    label = trial_labels(study, budget.n_trials, of_budget)
    history: list[dict[str, Any]] = []
    objective = _objective(spec, {**spec.params, **spec.fit, **budget.fit, **budget.tune_fit},
                           _tuning_rows(budget, splits, seed), seed, label)
    after_trial = _after_trial(spec, history, log_trial, label)
    if n_trials is None:
        drain_queue(study, storage, objective, after_trial, timeout or budget.timeout)
    elif n_trials > 0:
        # a trial that raises is recorded as FAIL (its reason in user_attrs["error"]) and the
        # study goes on; Ctrl-C and SystemExit still stop it
        study.optimize(objective, n_trials=n_trials, timeout=timeout or budget.timeout,
                       callbacks=[after_trial], catch=(Exception,))
    return history


def _tuning_rows(budget, splits: Splits, seed: int) -> tuple[np.ndarray, ...]:
    """The training and validation rows trials see: the profile's tuning subsamples."""
    rows = stratified_subsample(np.arange(len(splits.y_train)), splits.y_train,
                                budget.tune_subsample, seed)
    vrows = stratified_subsample(np.arange(len(splits.y_val)), splits.y_val,
                                 budget.tune_val_subsample, seed)
    return splits.x_train[rows], splits.y_train[rows], splits.x_val[vrows], splits.y_val[vrows]


def _objective(spec: PipelineSpec, base: dict[str, Any], rows, seed: int, label):
    """A trial: fit with the drawn parameters, score validation accuracy. A failure is kept
    as the trial's reason; a model with non-finite probabilities is a failed trial."""
    import optuna

    x_tr, y_tr, x_va, y_va = rows
    kind = get_builder(spec.model).kind

    def objective(trial) -> float:
        trial.set_user_attr("worker", worker_id())
        params = {**base, **suggest(trial, spec.search)}
        cbs = [keras_pruning_callback(trial)] if kind == "keras" else []
        start = time.perf_counter()
        try:
            result = training.fit(spec, params, x_tr, y_tr, x_va, y_va, seed, callbacks=cbs,
                                  progress=f"[{spec.name}] {label(trial.number)}"
                                  if kind == "keras" else None)
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

    return objective


def _after_trial(spec: PipelineSpec, history: list, log_trial: TrialLogger | None, label):
    """The callback after each trial: progress line, history entry, MLflow trial run."""

    def after_trial(study, frozen) -> None:
        if frozen.state.name == "FAIL":
            entry = trial_entry(frozen)
            history.append(entry)
            logger.warning(f"[{spec.name}] {label(frozen.number)} failed: {entry['error']} "
                           "(the study goes on)")
        elif frozen.state.name in FINISHED:
            entry = trial_entry(frozen)
            history.append(entry)
            best = (study.best_value if any(t.state.name == "COMPLETE" for t in study.trials)
                    else None)
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in frozen.params.items())
            notes = frozen.user_attrs.get("notes")
            logger.info(f"[{spec.name}] {label(frozen.number)} {frozen.state.name.lower()} "
                        f"val_accuracy={_fmt(entry['val_accuracy'])} best={_fmt(best)} {shown} "
                        f"({frozen.user_attrs.get('seconds', 0.0):.1f}s)"
                        f"{' [' + '; '.join(notes) + ']' if notes else ''}")
        else:
            return
        if log_trial is not None:
            log_trial(entry)

    return after_trial


def keras_pruning_callback(trial):
    """Reports validation accuracy each epoch; the pruner stops hopeless trials early."""
    import keras
    import optuna

    class Pruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            trial.report(float(logs["val_accuracy"]), step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch + 1}: val_accuracy {logs['val_accuracy']:.4f}")

    return Pruning()


def trial_labels(study, budget: int, of_budget: bool) -> Callable[[int], str]:
    """Trial number -> "trial 3/5": its place among the trials the budget counts (finished
    ones, then the queued, then new ones), not Optuna's number, which failed trials of an
    earlier run also took (they made a resumed compare print "trial 3/2")."""
    import optuna

    done = len(study.get_trials(deepcopy=False, states=tuple(
        getattr(optuna.trial.TrialState, s) for s in FINISHED)))
    waiting = sorted(t.number for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    first_new = len(study.get_trials(deepcopy=False))

    def label(number: int) -> str:
        place = done + 1 + (waiting.index(number) if number in waiting
                            else len(waiting) + number - first_new)
        if of_budget and done < place <= budget:
            return f"trial {place}/{budget}"
        return f"trial #{number + 1}"

    return label


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
