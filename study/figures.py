"""Every figure the study draws (final models, the report, the ablation, the reduction maps),
and the one way they are saved. Plotting lives here, not in the layers that log or rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from study import files
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
    with files.replacing(path) as tmp:  # a report folder never holds half a PNG
        fig.savefig(tmp, **({"dpi": dpi} if dpi else {}))
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
    if evaluation.reliability:
        plot_reliability({name: evaluation.reliability}, folder / "reliability.png")


def plot_reliability(records: dict[str, dict], path: Path) -> Path:
    """Reliability diagrams, one row per model, before and after its temperature: accuracy
    against mean confidence per equal-width bin (bars on the bin, a dot at its mean
    confidence), each bin's image count above it; the diagonal is perfect calibration.
    `records` are evaluation.reliability_record's (the numbers of evaluation/reliability.json)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(records), 2, figsize=(10, 3.6 * len(records)), squeeze=False)
    for row, (name, record) in zip(axes, records.items()):
        for ax, side in zip(row, ("before", "after")):
            bins = [b for b in record[side]["bins"] if b["count"]]
            width = record[side]["bins"][0]["upper"] - record[side]["bins"][0]["lower"]
            lows = [b["lower"] for b in bins]
            accs = [b["accuracy"] for b in bins]
            ax.bar(lows, accs, width=width, align="edge", color="tab:blue", alpha=0.55,
                   edgecolor="tab:blue", label="accuracy")
            ax.plot([b["confidence"] for b in bins], accs, "o", color="crimson", ms=3,
                    label="mean confidence")
            ax.plot([0, 1], [0, 1], "--", color="0.4", lw=1, label="perfect calibration")
            for b in bins:
                ax.text(b["lower"] + width / 2, min(b["accuracy"], 1.0) + 0.02, f"{b['count']:,}",
                        ha="center", va="bottom", fontsize=6, rotation=90)
            t = record["temperature"]
            what = ("as the model outputs them" if side == "before" else
                    f"after T={t:.3g}" if t != 1.0 else "no temperature kept (T=1)")
            ax.set_title(f"{name}: {record.get('split', 'test')}, {what}; "
                         f"ECE {100 * record[side]['ece']:.2f}%", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.2)
            ax.set_xlabel("confidence (top probability)")
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
        row[0].legend(loc="upper left", fontsize=7)
    return save(fig, path, dpi=80)


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


COMPETITIVE_SPAN = 0.15  # accuracy below the best shown; lower models sit on the bottom edge


def fig_cost(rows, key: str, label: str, path: Path) -> Path:
    """Test accuracy against a cost, zoomed to the competitive range: models more than
    COMPETITIVE_SPAN below the best (the baseline at 0.10) are marked on the bottom edge with
    their accuracy, and labels are moved apart so none collide."""
    plt = pyplot()
    named = [r for r in rows if r[key] > 0]
    pts = [(r[key], r["test_accuracy"]) for r in named]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if not named:
        return save(fig, path, dpi=80)
    accs = [a for _, a in pts]
    floor = max(min(accs) - 0.01, max(accs) - COMPETITIVE_SPAN)
    top = max(accs) + 0.12 * (max(accs) - floor)
    families = sorted({r["family"] for r in named})
    cmap = plt.get_cmap("tab10")
    shown = []
    for r, (x, acc) in zip(named, pts):
        below = acc < floor
        y = floor + 0.004 * (top - floor) if below else acc
        ax.scatter(x, y, s=55 if below else 40, marker="v" if below else "o", zorder=3,
                   color=cmap(families.index(r["family"]) % 10), clip_on=False)
        shown.append((x, y, f"{r['pipeline']} ({acc:.3f}, off the scale)" if below
                      else r["pipeline"]))
    front = [pts[i] for i in pareto_front(pts) if pts[i][1] >= floor]
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="crimson",
                lw=1.5, label="Pareto frontier", zorder=2)
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    xs = [x for x, _ in pts]
    ax.set_xlim(min(xs) / 1.5, max(xs) * 3.0)  # room on the right for the last labels
    ax.set_ylim(floor, top)
    _place_labels(ax, shown)
    ax.set_xlabel(f"{label} (log scale)")
    ax.set_ylabel("test accuracy (zoomed: the competitive range)")
    ax.grid(alpha=0.3, which="both")
    return save(fig, path, dpi=80)


def _place_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point, moving a label up (in axes units) until it overlaps no label
    placed before it; a moved label gets a thin line back to its point."""
    import math

    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    to_axes = lambda x, y: ((math.log10(x) - math.log10(x0)) /  # noqa: E731
                            (math.log10(x1) - math.log10(x0)), (y - y0) / (y1 - y0))
    height, char = 0.045, 0.0105  # one 8-point line and one character, in axes fractions
    placed: list[tuple[float, float, float]] = []  # left, bottom, width
    for x, y, text in sorted(points, key=lambda p: (p[1], p[0])):
        ax_x, ax_y = to_axes(x, y)
        left, bottom, width = ax_x + 0.008, ax_y + 0.008, char * len(text)
        while any(abs(bottom - b) < height and left < l + w and l < left + width
                  for l, b, w in placed):
            bottom += height / 3
        placed.append((left, bottom, width))
        moved = bottom - (ax_y + 0.008) > height / 2
        ax.annotate(text, (x, y), xytext=(left, bottom), textcoords="axes fraction",
                    fontsize=8, va="bottom", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if moved else None)


def fig_minutes(timeline: list[tuple[str, float, float]], budgets: list[dict[str, float]],
                path: Path) -> Path:
    """What each minute buys: each model's test accuracy against the minute of the compare at
    which it was done, with the best so far as a step (left); and, from the compares run
    with a time budget in this store (benchmarks/budget.py), the champion's test accuracy
    against the budget (right)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    shown = [(n, m, a) for n, m, a in timeline if a >= 0.5]  # the competitive range
    if shown:
        best, steps = 0.0, []
        for name, minute, acc in shown:
            best = max(best, acc)
            steps.append((minute, best))
        left.step([m for m, _ in steps], [b for _, b in steps], where="post", color="crimson",
                  lw=1.5, label="best model so far")
        left.scatter([m for _, m, _ in shown], [a for _, _, a in shown], s=25, zorder=3)
        for name, minute, acc in shown[-6:]:  # the last ones are the strongest, mostly
            left.annotate(name, (minute, acc), fontsize=7, xytext=(3, -9),
                          textcoords="offset points")
        left.legend(loc="lower right")
    left.set_xlabel("minutes into this compare (when the model was done)")
    left.set_ylabel("test accuracy")
    left.set_title("This compare: accuracy against time spent")
    left.grid(alpha=0.3)
    if budgets:
        xs = [b["budget_minutes"] for b in budgets]
        right.plot(xs, [b["champion_accuracy"] for b in budgets], "o-", color="tab:blue")
        for b in budgets:
            right.annotate(f"{b['minutes']:.1f} min", (b["budget_minutes"],
                                                       b["champion_accuracy"]),
                           fontsize=7, xytext=(4, -10), textcoords="offset points")
        right.set_xscale("log")
        right.set_xticks(xs, [f"{x:g}" for x in xs])
    else:
        right.text(0.5, 0.5, "no compares with a time budget in this store yet:\n"
                   "run benchmarks/budget.py", ha="center", va="center",
                   transform=right.transAxes)
    right.set_xlabel("time budget, minutes (labels: the compare's wall time)")
    right.set_ylabel("champion's test accuracy")
    right.set_title("What each minute buys (compares with --budget-minutes)")
    right.grid(alpha=0.3, which="both")
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
