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
