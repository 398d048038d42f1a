"""Every figure the study draws (final models, the report, the ablation, the reduction maps),
and the one way they are saved. Plotting lives here, not in the layers that log or rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from study.config import CLASS_NAMES, N_CLASSES


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: float | None = None) -> Path:
    """Lay out, write and close a figure (an open figure per model would pile up memory)."""
    fig.tight_layout()
    fig.savefig(path, **({"dpi": dpi} if dpi else {}))
    pyplot().close(fig)
    return path


def final_model_figures(name: str, evaluation, history: dict[str, list[float]],
                        folder: Path) -> None:
    """A final model's figures, logged under evaluation/ with its scores: the test confusion
    matrix and, for networks, the learning curves."""
    if history:
        plot_learning_curves(history, f"{name}: learning curves", folder / "learning_curves.png")
    plot_confusion(evaluation.confusion, f"{name}: test confusion matrix",
                   folder / "confusion_matrix.png")


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
    return save(fig, path)


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
    return save(fig, path)


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
    return save(fig, path, dpi=80)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both cost (lower) and accuracy (higher)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def fig_cost(rows, key: str, label: str, path: Path) -> Path:
    plt = pyplot()
    pts = [(r[key], r["test_accuracy"]) for r in rows if r[key] > 0]
    named = [r for r in rows if r[key] > 0]
    fig, ax = plt.subplots(figsize=(8, 5))
    families = sorted({r["family"] for r in named})
    cmap = plt.get_cmap("tab10")
    for r in named:
        ax.scatter(r[key], r["test_accuracy"], s=40, color=cmap(families.index(r["family"]) % 10),
                   zorder=3)
        ax.annotate(r["pipeline"], (r[key], r["test_accuracy"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    front = [pts[i] for i in pareto_front(pts)]
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="crimson",
                lw=1.5, label="Pareto frontier", zorder=2)
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} (log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    return save(fig, path, dpi=80)


def fig_f1_heatmap(names: list[str], f1: np.ndarray, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 2))
    im = ax.imshow(f1, cmap="viridis", vmin=max(0.0, float(np.nanmin(f1)) - 0.02), vmax=1.0,
                   aspect="auto")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(CLASS_NAMES)):
            ax.text(j, i, f"{f1[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if f1[i, j] < 0.8 else "black")
    fig.colorbar(im, ax=ax, label="F1")
    ax.set_title("Per-class F1 on the test set (rows in leaderboard order)")
    return save(fig, path, dpi=80)


def fig_misclassified(images: np.ndarray, y_true, y_pred, confidence, path: Path,
                      n: int = 24) -> Path:
    plt = pyplot()
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:n]  # most confident mistakes
    cols = 8
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.95))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"true {CLASS_NAMES[y_true[i]]}\npred {CLASS_NAMES[y_pred[i]]}\n"
                     f"{confidence[i]:.0%}", fontsize=7)
    return save(fig, path, dpi=80)


def fig_tuning(tunings: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    shown = [t for t in tunings if t["trials"]]
    cols = 4
    rows = max(1, int(np.ceil(len(shown) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 2.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, t in zip(axes.ravel(), shown):
        ax.axis("on")
        xs = [tr["number"] + 1 for tr in t["trials"]]
        ys = [tr["val_accuracy"] if tr["val_accuracy"] is not None else np.nan for tr in t["trials"]]
        pruned = [tr["state"] == "PRUNED" for tr in t["trials"]]
        ax.scatter([x for x, p in zip(xs, pruned) if not p], [y for y, p in zip(ys, pruned) if not p],
                   s=18, label="complete")
        if any(pruned):
            ax.scatter([x for x, p in zip(xs, pruned) if p], [y for y, p in zip(ys, pruned) if p],
                       s=18, marker="x", color="grey", label="pruned")
        best = np.fmax.accumulate(np.where(pruned, np.nan, ys)) if ys else []
        ax.plot(xs, best, color="crimson", lw=1)
        ax.set_title(t["pipeline"], fontsize=9)
        ax.set_xlabel("trial", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Optimisation history: validation accuracy per trial, best so far in red")
    return save(fig, path, dpi=80)
