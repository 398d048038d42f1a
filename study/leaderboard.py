"""Rank final runs and render the leaderboard. Ranking uses test scores of final models only."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("rank", "rank"),
    ("pipeline", "pipeline"),
    ("family", "family"),
    ("reducer", "reducer"),
    ("test_accuracy", "test acc"),
    ("test_macro_f1", "macro F1"),
    ("val_accuracy", "val acc"),
    ("fit_seconds", "fit s"),
    ("n_trials", "trials"),
)


def rank(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ordered by test accuracy, then macro F1, then the faster fit; rank counts from 1."""
    rows = []
    for run in runs:
        m = run.get("metrics", {})
        rows.append({
            "run_id": run["run_id"],
            "pipeline": run.get("pipeline", "?"),
            "family": run.get("family", ""),
            "reducer": run.get("reducer", ""),
            "test_accuracy": m.get("test_accuracy", float("nan")),
            "test_macro_f1": m.get("test_macro_f1", float("nan")),
            "val_accuracy": m.get("val_accuracy", float("nan")),
            "fit_seconds": m.get("fit_seconds", float("nan")),
            "n_trials": int(m.get("n_trials", 0)),
        })
    rows.sort(key=lambda r: (-_num(r["test_accuracy"]), -_num(r["test_macro_f1"]),
                             _num(r["fit_seconds"], worst=float("inf"))))
    for i, row in enumerate(rows, start=1):
        row["rank"] = i
    return rows


def _num(value: float, worst: float = float("-inf")) -> float:
    return worst if value != value else value  # NaN sorts last


def render_text(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table for the terminal."""
    def cell(row, key):
        value = row[key]
        if key in ("test_accuracy", "test_macro_f1", "val_accuracy"):
            return f"{value:.4f}"
        if key == "fit_seconds":
            return f"{value:.1f}"
        return str(value)

    table = [[title for _, title in COLUMNS]] + [[cell(r, k) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.rjust(w) if i in (0, 4, 5, 6, 7, 8) else v.ljust(w)
                       for i, (v, w) in enumerate(zip(line, widths))) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
