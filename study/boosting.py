"""Boosting by resampling: a network trained where other networks err, as an ensemble member.

Two networks of the `boost.from` pipeline's recipe, each fitted on one stratified half of the
training split, predict the other half (mirror TTA averaged), so every training row gets an
out-of-fold p(true class); the member then trains on the rows repeated 1 + k (1 - p) times
(Freund & Schapire's AdaBoost, by resampling). Validation plays the part it plays for every
network: it keeps each fit's best epoch (and the member's TTA); the test set is not read. Measured in
benchmarks/boosted_member.py (k 6: its test errors overlap other networks' 44-50%, where
second draws of one recipe overlap 62-69%). No tracking here: compare logs the result.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import current_process, get_context
from typing import Any

import numpy as np

from study import config, training
from study.pipelines import PipelineSpec

logger = logging.getLogger(__name__)

SEED_OFFSET = 70  # the out-of-fold pair's seeds: seed + 70 and seed + 71, as measured


def stratified_halves(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask choosing half of every class's rows (the rest is the other half)."""
    half = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        half[rows[:len(rows) // 2]] = True
    return half


def resample(p_true: np.ndarray, k: float, rng: np.random.Generator) -> np.ndarray:
    """Row numbers, each row repeated 1 + k (1 - p) times (the fraction drawn at random)."""
    weight = 1 + k * (1 - np.clip(p_true, 0.0, 1.0))
    copies = np.floor(weight).astype(int) + (rng.random(len(weight)) < weight % 1)
    return np.repeat(np.arange(len(weight)), copies)


def _half_worker() -> None:
    """One TensorFlow thread per out-of-fold fit (set before TF starts): the count changes
    TF's rounding, and the measured member's rows came from fits with one thread each."""
    os.environ["STUDY_TF_THREADS"] = "1"
    from study.logs import configure_logging

    configure_logging()


def _fit_half(source: PipelineSpec, params: dict[str, Any], x_fit, y_fit, x_held, y_held,
              x_val, y_val, seed: int, progress: str) -> tuple[np.ndarray, np.ndarray]:
    """p(true class) of the held-out rows from a network fitted on the other half, and
    whether the network's class was the true one."""
    fit = training.fit(source, params, x_fit, y_fit, x_val, y_val, seed, progress=progress,
                       cache=False)
    p = training.mirror_proba(fit, x_held)
    return p[np.arange(len(y_held)), y_held], p.argmax(axis=1) == y_held


def out_of_fold(source: PipelineSpec, params: dict[str, Any], splits, seed: int,
                rng: np.random.Generator, name: str) -> tuple[np.ndarray, float]:
    """Every training row's out-of-fold p(true class), the two fits side by side in their own
    processes; and the pair's out-of-fold accuracy."""
    x, y = splits.x_train, splits.y_train
    half = stratified_halves(y, rng)
    p_true, right = np.zeros(len(y)), np.zeros(len(y), bool)
    jobs = [(~fit_rows, (source, params, x[fit_rows], y[fit_rows], x[~fit_rows], y[~fit_rows],
                         splits.x_val, splits.y_val, seed + SEED_OFFSET + k,
                         f"[{name}] out of fold {k + 1}/2"))
            for k, fit_rows in enumerate((half, ~half))]
    if current_process().daemon:  # a Dask worker, say: it may not start processes
        logger.warning(f"[{name}] the out-of-fold pair runs in this process, one after the other "
                       "(a daemon process cannot start workers): its thread count, and so the "
                       "rows it repeats, differ from the measured run's")
        for held, args in jobs:
            p_true[held], right[held] = _fit_half(*args)
        return p_true, float(right.mean())
    pools = [ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_half_worker)
             for _ in jobs]
    try:
        futures = [(held, pool.submit(_fit_half, *args)) for (held, args), pool in zip(jobs, pools)]
        for held, future in futures:
            p_true[held], right[held] = future.result()
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)
    return p_true, float(right.mean())


def final_fit(spec: PipelineSpec, params: dict[str, Any], splits, seed: int,
              progress: str | None = None) -> tuple[training.FitResult, np.ndarray]:
    """The member: out-of-fold weights from `spec.boost`'s pipeline, then training.final_fit
    on the resampled training rows (validation and test untouched)."""
    from study import pipelines, tuning

    source = pipelines.load(spec.boost["from"])
    # never longer than the member itself (a smoke run trains for a few steps)
    source_params = {**tuning.final_params(source, source.budget("quick"), {}),
                     "epochs": min(int(spec.boost["epochs"]), int(params.get("epochs", 10**6)))}
    source_params.pop("max_seconds", None)
    rng = np.random.default_rng(config.SEED)  # the halves, then the fractional copies
    start = time.perf_counter()
    p_true, oof_accuracy = out_of_fold(source, source_params, splits, seed, rng, spec.name)
    oof_seconds = time.perf_counter() - start
    rows = resample(p_true, float(spec.boost["k"]), rng)
    resampled = dataclasses.replace(splits, x_train=splits.x_train[rows],
                                    y_train=splits.y_train[rows], train_idx=splits.train_idx[rows])
    fit, val_proba = training.final_fit(spec, params, resampled, seed, progress=progress)
    fit.fit_seconds += oof_seconds  # the pair is part of what this model cost to train
    repeated = float(np.mean(np.bincount(rows, minlength=len(p_true)) > 1))
    fit.notes.append(f"boosted: {len(rows)} training rows ({repeated:.0%} of "
                     f"{len(p_true)} repeated, k {spec.boost['k']:g}) from out-of-fold "
                     f"{spec.boost['from']}")
    fit.info.update(boost_from=spec.boost["from"], boost_k=float(spec.boost["k"]),
                    boost_rows=len(rows), boost_repeated=repeated,
                    boost_oof_seconds=oof_seconds,
                    boost_oof_accuracy=oof_accuracy)
    return fit, val_proba
