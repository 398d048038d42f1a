"""What every run writer shares: the role tag and how values become params and timestamps."""

from __future__ import annotations

import time
from typing import Any

ROLE = "role"  # tag key: compare | final | tuning | trial


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
