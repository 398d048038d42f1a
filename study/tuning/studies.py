"""One Optuna study per (pipeline, profile, seed, pipeline definition): its name, sampler and
pruner, the search space, and what a study's trials add up to (best parameters, cost,
parameter importance)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from study.errors import ConfigError
from study.pipelines import Budget, PipelineSpec

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
    n_failed: int = 0  # trials that raised (state FAIL) in the study: not in n_trials


FINISHED = ("COMPLETE", "PRUNED")


def study_name(spec: PipelineSpec, profile: str, seed: int) -> str:
    return f"{spec.name}-{profile}-seed{seed}-{spec.digest}"


def open_study(spec: PipelineSpec, budget: Budget, seed: int, storage,
               worker_index: int | None = None):
    """Create or load the pipeline's study. Each parallel worker seeds its sampler apart, so
    workers do not draw the same random start-up trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_seed = seed if worker_index is None else seed + 7919 * (worker_index + 1)
    study = optuna.create_study(
        study_name=study_name(spec, budget.profile, seed),
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


def final_params(spec: PipelineSpec, budget: Budget, best_params: dict[str, Any]) -> dict[str, Any]:
    """Fixed parameters, the budget's fit settings and the best trial's choices, merged."""
    return {**spec.params, **spec.fit, **budget.fit, **best_params}


def finished_trials(study) -> list:
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    return study.get_trials(deepcopy=False, states=states)


def missing_trials(budget: Budget, study) -> int:
    """How many trials the budget still asks of this study."""
    return max(0, budget.n_trials - len(finished_trials(study)))


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


def summarize(study, spec: PipelineSpec, budget: Budget, seed: int,
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
                          f"{budget.profile} budget ({budget.timeout:.0f}s); "
                          f"raise budget.{budget.profile}.timeout")
    return TuneResult(
        study_name=study.study_name,
        best_params=dict(study.best_params) if complete else {},
        best_value=float(study.best_value) if complete else None,
        n_trials=len(trials),
        n_pruned=len(trials) - len(complete),
        seconds=seconds,
        history=history,
        importances=param_importances(study, seed) if complete else {},
        n_failed=len(spent) - len(trials),
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
