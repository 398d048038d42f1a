"""Scores of one final model on the test set (computed once per final model; its figures
are drawn by study.figures)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from study.config import CLASS_NAMES, N_CLASSES


@dataclass
class Evaluation:
    accuracy: float
    macro_f1: float
    confusion: np.ndarray  # rows: true class, columns: predicted class
    report: dict  # sklearn classification_report(output_dict=True)
    report_text: str
    predictions: np.ndarray
    proba: np.ndarray


PREDICT_BATCH = 2048  # test images per call when prediction is timed


def timed_proba(predict, images: np.ndarray) -> tuple[np.ndarray, float]:
    """The study's one way to time prediction (every row's predict_ms_per_1000): `predict`
    (uint8 images -> probabilities; the model as it is logged: a network, a scikit-learn
    pipeline or the ensemble's Classifier over its members) on every test image, in this
    process, PREDICT_BATCH images a call. Returns the probabilities and the seconds."""
    start = time.perf_counter()
    proba = np.concatenate([predict(images[i:i + PREDICT_BATCH])
                            for i in range(0, len(images), PREDICT_BATCH)])
    return proba, time.perf_counter() - start


def evaluate(y_true: np.ndarray, proba: np.ndarray) -> Evaluation:
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    pred = proba.argmax(axis=1)
    labels = list(range(N_CLASSES))
    kw = dict(labels=labels, target_names=list(CLASS_NAMES), zero_division=0)
    return Evaluation(
        accuracy=float(accuracy_score(y_true, pred)),
        macro_f1=float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        confusion=confusion_matrix(y_true, pred, labels=labels),
        report=classification_report(y_true, pred, output_dict=True, digits=4, **kw),
        report_text=classification_report(y_true, pred, digits=4, **kw),
        predictions=pred,
        proba=proba,
    )


def limited_by(spec, recipe, budget, tuned, fit, recipe_epochs: int | None,
               rows: tuple[int, int] | None = None) -> str:
    """What bounded a final model, for the leaderboard, against its profile's recipe
    (`recipe`, the profile's Budget; `recipe_epochs`, the epochs its final fit asks): the
    training rows when a time budget cut them (`rows`: fitted on, of), trials
    and epochs run of the recipe's, "(time budget)" only when a time budget's cut allotment
    (`budget`) made them fewer, "(tuning timeout)" when the timeout did, failed trials said as
    failed; early stopping, a time cap, an iteration cap that stopped a fit."""
    parts = []
    if rows and rows[0] < rows[1]:
        parts.append(f"{rows[0]:,} of {rows[1]:,} rows (time budget)")
    failed = getattr(tuned, "n_failed", 0)
    if spec.tunes(recipe):
        trials = f"{tuned.n_trials}/{recipe.n_trials} trials"
        # failed trials are not missing ones: only trials never run fell short
        if tuned.n_trials + failed < recipe.n_trials:
            cut = budget.n_trials < recipe.n_trials or budget.timeout < recipe.timeout
            trials += " (time budget)" if cut else " (tuning timeout)"
        parts.append(trials + (f"; {failed} failed" if failed else ""))
    ran = len(fit.history.get("loss", []))
    if ran and recipe_epochs:
        allowed, wanted = int(budget.fit.get("epochs", recipe_epochs)), int(recipe_epochs)
        capped = any(note.startswith("time limit") for note in fit.notes)
        cap_cut = (float(budget.fit.get("max_seconds") or math.inf)
                   < float(recipe.fit.get("max_seconds") or math.inf))
        why = ""
        if ran < wanted:
            if capped:
                why = " (time budget)" if cap_cut else " (time cap)"
            elif ran < allowed:
                why = " (early stopping)"
            else:  # it ran every epoch the budget allowed, fewer than the recipe's
                why = " (time budget)"
        parts.append(f"{ran}/{wanted} epochs{why}")
    if any("converge" in note for note in fit.notes):
        parts.append("iteration cap (not converged)")
    return "; ".join(parts) or "-"
