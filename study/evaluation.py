"""Scores and figures of one final model on the test set (computed once per final model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, title: str, path: Path) -> Path:
    """Counts with class names on both axes; the diagonal is what the model got right."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(N_CLASSES), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(N_CLASSES), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(N_CLASSES):
        for j in range(N_CLASSES):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curves(history: dict[str, list[float]], title: str, path: Path) -> Path:
    """Loss and accuracy per epoch, training against validation."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    epochs = range(1, len(history.get("loss", [])) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                ax.plot(epochs, history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_validation_curves(curves: dict[str, dict[str, list[float]]], title: str,
                           path: Path) -> Path:
    """Validation accuracy and loss per epoch, one line per model or setting."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in curves.items():
        for ax, key in zip(axes, ("val_accuracy", "val_loss")):
            if hist.get(key):
                ax.plot(range(1, len(hist[key]) + 1), hist[key], marker=".", label=name)
    for ax, what in zip(axes, ("validation accuracy", "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_title(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
