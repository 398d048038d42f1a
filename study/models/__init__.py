"""The builder registry: model names used in pipeline YAMLs -> pure builder functions.

Builders return an unfitted scikit-learn estimator or a compiled Keras model; they never
log or tune. Keras builders import Keras lazily, so listing the registry stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from study.errors import ConfigError
from study.models import keras_models, sklearn_models


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
