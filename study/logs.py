"""The study's one logging set-up, below everything: the command line and the worker processes
it starts (side by side, on a cluster, a boosted member's out-of-fold fits) all call it."""

from __future__ import annotations

import logging
import os
import sys

from study import config
from study.errors import ConfigError


class _Stderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a message comes (tests and callers swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbosity: int = 0) -> None:
    """The study's one logging set-up: its progress lines on stderr, as plain lines. Level:
    -v DEBUG, -q WARNING, else $STUDY_LOG_LEVEL, else INFO. Library modules only log; worker
    processes inherit the level through the environment (config.worker_env)."""
    if verbosity:
        level = "DEBUG" if verbosity > 0 else "WARNING"
    else:
        level = os.environ.get(config.LOG_LEVEL_ENV, "INFO").upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ConfigError(f"{config.LOG_LEVEL_ENV}={level!r} is not a log level; use DEBUG, INFO, "
                          "WARNING or ERROR")
    logger = logging.getLogger("study")
    for handler in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # once, here; not again through the root logger
