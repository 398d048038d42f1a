"""What every run writer shares: the role tag, how values become params and timestamps, and
where a logged model keeps its native model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ROLE = "role"  # tag key: compare | final | tuning | trial
NETWORK = "network"  # the artifact key of a single model's native model in its Classifier


def param(key: str, value: Any):
    """An MLflow Param for log_batch, its value cut to what every store accepts."""
    from mlflow.entities import Param

    return Param(key, param_str(value))


PARAM_CHARS = 6000  # the most the SQL stores hold in a param value


def param_str(value: Any) -> str:
    """A param value as MLflow stores it, cut to PARAM_CHARS."""
    return str(value)[:PARAM_CHARS]


def now_ms() -> int:
    """Now, in the milliseconds MLflow timestamps metrics with."""
    return int(time.time() * 1000)


def native_model_path(path: str | Path) -> str:
    """The native (keras or sklearn) MLflow model inside a logged Classifier (serving), or
    `path` itself when it is one already (models logged before the Classifier)."""
    inner = Path(path) / "artifacts" / NETWORK
    return str(inner) if (inner / "MLmodel").is_file() else str(path)
