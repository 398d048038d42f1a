"""Everything Optuna: storage, studies, search spaces, pruning. Scored on validation rows only.

One study per (pipeline, profile, seed, pipeline definition), kept in persistent storage, so
rerunning compare continues a study: it only runs the trials still missing from the budget.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from study import config, training
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


def open_storage(storage: str | None = None):
    """'local' (default): a journal file beside the tracking store; a URL: an RDB storage;
    any other string: a journal file at that path."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage and "://" in storage:
        try:
            return optuna.storages.RDBStorage(storage)
        except Exception as exc:  # sqlalchemy raises many kinds; the user needs one line
            first = first_line(exc)
            raise ConfigError(f"cannot open Optuna storage {storage} ({first}); "
                              f"check the URL and that the database server is up") from None
    path = Path(storage) if storage and storage != "local" else config.default_optuna_journal()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


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


def tune(spec: PipelineSpec, profile: str, splits: Splits, seed: int, storage=None,
         log_trial: TrialLogger | None = None) -> TuneResult:
    """Run the trials still missing from the profile's budget; return the best parameters."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = spec.budget(profile)
    name = study_name(spec, profile, seed)
    if not spec.search:  # nothing to choose: the fixed parameters are the answer
        return TuneResult(name, {}, None, 0, 0, 0.0)
    study = optuna.create_study(
        study_name=name,
        storage=storage if storage is not None else open_storage(),
        direction="maximize",
        # Small budgets: a third of the trials explore at random, the rest follow TPE.
        sampler=optuna.samplers.TPESampler(seed=seed,
                                           n_startup_trials=min(10, max(2, budget.n_trials // 3))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
        load_if_exists=True,
    )
    study.set_user_attr("pipeline", spec.name)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = budget.n_trials - len(study.get_trials(deepcopy=False, states=finished))
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
        params = {**base, **suggest(trial, spec.search)}
        cbs = [_keras_pruning_callback(trial)] if kind == "keras" else []
        label = f"[{spec.name}] trial {trial.number + 1}/{budget.n_trials}"
        start = time.perf_counter()
        try:
            result = training.fit(spec, params, x_tr, y_tr, x_va, y_va, seed,
                                  callbacks=cbs, progress=label if kind == "keras" else None)
            trial.set_user_attr("fit_seconds", result.fit_seconds)
            if result.notes:
                trial.set_user_attr("notes", result.notes)
            proba = result.predict_proba(x_va)
            return float(np.mean(proba.argmax(axis=1) == y_va))
        finally:  # pruned trials too: their time is part of the tuning cost
            trial.set_user_attr("seconds", time.perf_counter() - start)
            trial.set_user_attr("fit_seconds", trial.user_attrs.get("fit_seconds",
                                                                    time.perf_counter() - start))

    def after_trial(study, frozen) -> None:
        if frozen.state not in finished:
            return
        value = frozen.value if frozen.value is not None else (
            list(frozen.intermediate_values.values())[-1] if frozen.intermediate_values else None)
        entry = {
            "number": frozen.number,
            "state": frozen.state.name,
            "params": dict(frozen.params),
            "val_accuracy": value,
            "fit_seconds": frozen.user_attrs.get("fit_seconds", 0.0),
            "intermediate": dict(frozen.intermediate_values),
        }
        history.append(entry)
        best = study.best_value if any(t.state.name == "COMPLETE" for t in study.trials) else None
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in frozen.params.items())
        print(f"[{spec.name}] trial {frozen.number + 1}/{budget.n_trials} {frozen.state.name.lower()} "
              f"val_accuracy={_fmt(value)} best={_fmt(best)} {shown} "
              f"({frozen.user_attrs.get('seconds', 0.0):.1f}s)"
              f"{' [' + '; '.join(frozen.user_attrs['notes']) + ']' if frozen.user_attrs.get('notes') else ''}",
              file=sys.stderr, flush=True)
        if log_trial is not None:
            log_trial(entry)

    start = time.perf_counter()
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=budget.timeout, callbacks=[after_trial])
    else:
        print(f"[{spec.name}] study {name} already holds {budget.n_trials} trials; reusing it",
              file=sys.stderr, flush=True)
    trials = study.get_trials(deepcopy=False, states=finished)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"pipeline {spec.name}: no tuning trial completed within the "
                          f"{profile} budget ({budget.timeout:.0f}s); raise budget.{profile}.timeout")
    return TuneResult(
        study_name=name,
        best_params=dict(study.best_params),
        best_value=float(study.best_value),
        n_trials=len(trials),
        n_pruned=len(trials) - len(complete),
        seconds=time.perf_counter() - start,
        history=history,
        importances=param_importances(study, seed),
    )


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
