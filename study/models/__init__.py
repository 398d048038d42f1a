"""The builder registry: model names used in pipeline YAMLs -> pure builder functions.

Builders return an unfitted scikit-learn estimator or a compiled Keras model; they never
log or tune. Keras builders import Keras lazily, so listing the registry stays cheap.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from study.errors import ConfigError
from study.models import keras_models, reducers, sklearn_models

# Settings consumed by the Keras training loop (study.training); everything else goes to the
# builder. `seed_offset` starts a network from other random numbers than the study seed gives
# (weights, batches, augmentation): a second run of one recipe makes different errors.
KERAS_FIT_KEYS = {"epochs", "batch_size", "patience", "max_seconds", "ema", "seed_offset"}
REDUCER_PREFIX = "reduce__"  # `reduce__n_components` goes to the reducer step, not the model
# What the Keras trainer passes every builder, whatever the YAML says (study.training.build_network)
KERAS_TRAINER_PASSES = ("precision",)


@dataclass(frozen=True)
class Builder:
    build: Callable[..., Any]
    kind: str  # "sklearn" or "keras": decides how the model is fitted, saved and logged


BUILDERS: dict[str, Builder] = {
    "dummy": Builder(sklearn_models.dummy, "sklearn"),
    "logreg": Builder(sklearn_models.logreg, "sklearn"),
    "svc": Builder(sklearn_models.svc, "sklearn"),
    "random_forest": Builder(sklearn_models.random_forest, "sklearn"),
    "knn": Builder(sklearn_models.knn, "sklearn"),
    "hgb": Builder(sklearn_models.hgb, "sklearn"),
    "mlp_seed": Builder(keras_models.mlp_seed, "keras"),
    "cnn_seed1": Builder(keras_models.cnn_seed1, "keras"),
    "cnn_seed2": Builder(keras_models.cnn_seed2, "keras"),
    "cnn_seed3": Builder(keras_models.cnn_seed3, "keras"),
    "cnn_modern": Builder(keras_models.cnn_modern, "keras"),
    "cnn_resnet": Builder(keras_models.cnn_resnet, "keras"),
    "cnn_classic": Builder(keras_models.cnn_classic, "keras"),
}


def get_builder(name: str) -> Builder:
    try:
        return BUILDERS[name]
    except KeyError:
        raise ConfigError(f"unknown model builder {name!r}; valid: {', '.join(sorted(BUILDERS))}") from None


def arguments(function: Callable[..., Any]) -> set[str] | None:
    """The keyword names `function` takes; None when it takes any (**kwargs)."""
    params = inspect.signature(function).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def contract_problem(name: str) -> str | None:
    """What a registered builder lacks of the trainer's contract, or None: a Keras builder
    receives `precision` always, and `epochs` with `steps_per_epoch` when it takes the latter."""
    builder = get_builder(name)
    takes = arguments(builder.build)
    if builder.kind != "keras" or takes is None:
        return None
    wanted = set(KERAS_TRAINER_PASSES)
    if "steps_per_epoch" in takes:  # schedules sized to the run get its length in epochs too
        wanted.add("epochs")
    missing = sorted(wanted - takes)
    if missing:
        return (f"Keras builder {name!r} ({builder.build.__module__}.{builder.build.__name__}) "
                f"must accept {', '.join(missing)}: the trainer passes it "
                f"(docs/writing-a-pipeline.md)")
    return None


def parameter_names(name: str, reducer: str) -> set[str] | None:
    """Every name a pipeline may set for builder `name` after reducer `reducer` (in params:,
    fit:, search: and a budget's fit:/tune_fit:); None when the builder takes any."""
    builder = get_builder(name)
    takes = arguments(builder.build)
    reducer_takes = reducers.reducer_arguments(reducer)
    if takes is None or reducer_takes is None:
        return None
    fit = KERAS_FIT_KEYS if builder.kind == "keras" else set()
    return takes | fit | {REDUCER_PREFIX + n for n in reducer_takes}
