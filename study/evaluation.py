"""Scores of one final model on the test set (computed once per final model; its figures
are drawn by study.figures)."""

from __future__ import annotations

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


def limited_by(spec, budget, tuned, fit, params: dict) -> str:
    """What bounded a final model, for the leaderboard: its trials (or the tuning timeout),
    its epochs (or early stopping, or a time cap), an iteration cap that stopped a fit."""
    parts = []
    if spec.tunes(budget):
        parts.append(f"{tuned.n_trials}/{budget.n_trials} trials" +
                     (" (tuning timeout)" if tuned.n_trials < budget.n_trials else ""))
    ran, epochs = len(fit.history.get("loss", [])), params.get("epochs")
    if ran and epochs:
        capped = any(note.startswith("time limit") for note in fit.notes)
        why = " (time cap)" if capped else " (early stopping)" if ran < int(epochs) else ""
        parts.append(f"{ran}/{int(epochs)} epochs{why}")
    if any("converge" in note for note in fit.notes):
        parts.append("iteration cap (not converged)")
    return "; ".join(parts) or "-"
