"""Rank final runs and render the leaderboard. The champion is chosen on validation accuracy
(select_champion), never on the test set; the rows are only displayed in test-accuracy order.

Honest ranking: each model's test accuracy carries a 95% Wilson interval, and an exact McNemar
test on the same 10,000 test images says whether it is distinguishable from the champion at 5%,
on Holm-adjusted p-values (one test per model: fourteen raw tests at 5% on a leaderboard of
equals would call some model "worse" by chance one time in two). The reference is fixed before
the test set is looked at: taking the test maximum instead calls some row of 8 equal models
"worse" 12% of the time, and its figure is 0.4 points optimistic (tests/test_leaderboard.py).
Beside accuracy, each row's test ECE and NLL after its temperature scaling, with their paired
bootstrap intervals (evaluation.calibrate): whether its probabilities can be taken at their word.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from study import tables

ALPHA = 0.05

# (key, title) of every rendering: terminal, CSV, Markdown and HTML.
COLUMNS = (
    ("rank", "rank"),
    ("pipeline", "pipeline"),
    ("family", "family"),
    ("reducer", "reducer"),
    ("test_accuracy", "test acc"),
    ("test_ci", "95% CI"),
    ("test_ece", "test ECE (95% CI)"),
    ("test_nll", "test NLL (95% CI)"),
    ("vs_champion", "vs champion (McNemar p, Holm)"),
    ("test_macro_f1", "macro F1"),
    ("val_accuracy", "val acc (selection)"),
    ("fit_seconds", "fit s"),
    ("predict_ms_per_1000", "predict ms/1k"),
    ("size", "params / size"),
    ("n_trials", "trials"),
    ("limited_by", "limited by"),
    ("best_params", "best parameters"),
)
NUMERIC = {"rank", "test_accuracy", "test_ece", "test_nll", "test_macro_f1", "val_accuracy",
           "fit_seconds", "predict_ms_per_1000", "n_trials"}
# Each final run's calibration on test after temperature scaling (evaluation.calibrate), its
# 95% bootstrap interval, and the figures before scaling: NaN for runs logged before them.
CALIBRATION = tuple(f"test_{m}{s}" for m in ("ece", "nll", "brier") for s in ("", "_lo", "_hi")
                    ) + ("test_ece_unscaled", "test_nll_unscaled", "temperature")


def rank(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ordered by test accuracy, then macro F1, then the faster fit; rank counts from 1."""
    rows = []
    for run in runs:
        m = run.get("metrics", {})
        params = run.get("params", {})
        rows.append({
            "run_id": run["run_id"],
            "pipeline": run.get("pipeline", "?"),
            "family": run.get("family", ""),
            "reducer": run.get("reducer", ""),
            "kind": run.get("kind", ""),
            "generalist": run.get("generalist", ""),  # a specialist's: the model it folds into
            "test_accuracy": m.get("test_accuracy", float("nan")),
            "test_macro_f1": m.get("test_macro_f1", float("nan")),
            "val_accuracy": m.get("val_accuracy", float("nan")),
            "fit_seconds": m.get("fit_seconds", float("nan")),
            # its own final fit, without what it is built on (older runs: fit_seconds was that)
            "own_fit_seconds": m.get("own_fit_seconds", m.get("fit_seconds", float("nan"))),
            "predict_ms_per_1000": m.get("predict_ms_per_1000", float("nan")),
            "n_params": int(m.get("n_params", 0)),
            "model_bytes": int(m.get("model_bytes", 0)),
            "n_trials": int(m.get("n_trials", 0)),
            "tuning_seconds": m.get("tuning_seconds", float("nan")),
            "pipeline_seconds": m.get("pipeline_seconds", float("nan")),
            **{key: m.get(key, float("nan")) for key in CALIBRATION},
            "limited_by": run.get("limited_by", "-"),  # runs logged before the tag: "-"
            # an ensemble's "parameters" are its members' weights
            "best_params": {k.split(".", 1)[1]: v for k, v in sorted(params.items())
                            if k.startswith("weight." if run.get("family") == "ensemble"
                                            else "best.")},
        })
    rows.sort(key=lambda r: (-_num(r["test_accuracy"]), -_num(r["test_macro_f1"]),
                             _num(r["fit_seconds"], worst=float("inf"))))
    for i, row in enumerate(rows, start=1):
        row["rank"] = i
    return rows


def select_champion(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The champion: the highest validation accuracy among the final models (the ensemble
    included), ties to the faster fit, then the name; never a test figure. Marks every row's
    `selected`; None when no row has a validation score."""
    scored = [r for r in rows if _num(r.get("val_accuracy", float("nan"))) > float("-inf")]
    champion = min(scored, default=None, key=lambda r: (
        -r["val_accuracy"], _num(r.get("fit_seconds", float("nan")), worst=float("inf")),
        str(r.get("pipeline", ""))))
    for row in rows:
        row["selected"] = row is champion
    return champion


def champion_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row select_champion marked (selecting it now if no row is marked yet)."""
    if not any("selected" in r for r in rows):
        return select_champion(rows)
    return next((r for r in rows if r.get("selected")), None)


def _num(value: float, worst: float = float("-inf")) -> float:
    return worst if value != value else value  # NaN sorts last


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sound near 0 and 1, unlike the normal one."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: b images only model A got
    right, c only model B. Under H0 each discordant image is a fair coin: p = 2 P(X <= min)."""
    n = b + c
    if n == 0:
        return 1.0
    from scipy.stats import binom  # exact tail, stable for thousands of discordant images

    return float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))


def mcnemar_one_sided(gained: int, lost: int) -> float:
    """One-sided exact McNemar p-value that a new model is right more often than the old one:
    P(X >= gained), X ~ Binomial(gained + lost, 1/2), from the images only the new one got
    right (`gained`) and only the old one (`lost`)."""
    n = gained + lost
    if n == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, binom.sf(gained - 1, n, 0.5)))


def format_p(p: float, label: str = "p") -> str:
    """A p-value with three significant digits ("p=0.0496": two would print 0.05 beside
    "worse"); an underflow is "p < 1e-300", never "p=0"."""
    return f"{label} < 1e-300" if p < 1e-300 else f"{label}={p:.3g}"


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given): the i-th
    smallest is multiplied by (m - i + 1), kept monotone, capped at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - step) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def add_significance(rows: list[dict[str, Any]], predictions: dict[str, np.ndarray],
                     y_true: np.ndarray) -> list[dict[str, Any]]:
    """Wilson interval per row and McNemar against the champion chosen on validation
    (champion_of), a reference fixed before the test set is looked at, on the same test
    images; "same" or "worse" is decided on Holm-adjusted p-values over the other rows. Without
    the champion's predictions no comparison is made: p-values are NaN ("n/a"), never a
    favourable default."""
    if not rows:
        return rows
    selected = champion_of(rows)
    champion = predictions.get(selected["run_id"]) if selected else None
    if champion is not None and len(champion) != len(y_true):
        champion = None
    tested = []
    for row in rows:
        row.update(ci_low=float("nan"), ci_high=float("nan"), p_value=float("nan"),
                   p_holm=float("nan"), b=0, c=0, indistinguishable=None)
        pred = predictions.get(row["run_id"])
        if pred is None or len(pred) != len(y_true):
            continue
        right = pred == y_true
        row["ci_low"], row["ci_high"] = wilson_interval(int(right.sum()), len(y_true))
        if row is selected or champion is None:
            continue
        champ_right = champion == y_true
        b = int(np.sum(champ_right & ~right))  # only the champion right
        c = int(np.sum(~champ_right & right))  # only this model right
        row.update(p_value=mcnemar_exact(b, c), b=b, c=c)
        tested.append(row)
    for row, adjusted in zip(tested, holm([r["p_value"] for r in tested])):
        # the champion was chosen on validation, not as the test maximum: a row can beat it
        row.update(p_holm=adjusted, indistinguishable=adjusted >= ALPHA,
                   better=adjusted < ALPHA and row["c"] > row["b"])
    return rows


def _size(row: dict[str, Any]) -> str:
    n, size = row.get("n_params", 0), row.get("model_bytes", 0)
    parts = []
    if n:
        parts.append(f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))
    if size:
        parts.append(f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} kB")
    return " / ".join(parts) or "-"


def cell(row: dict[str, Any], key: str) -> str:
    """The text of one leaderboard cell, the same in every rendering."""
    value = row.get(key)
    if key in ("test_accuracy", "test_macro_f1", "val_accuracy"):
        return "-" if value is None or value != value else f"{value:.4f}"
    if key == "test_ci":
        lo, hi = row.get("ci_low"), row.get("ci_high")
        return "-" if lo is None or lo != lo else f"{lo:.4f}-{hi:.4f}"
    if key in ("test_ece", "test_nll"):  # "1.2% (0.9-1.5)", "0.312 (0.301-0.325)"
        lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
        if value is None or value != value or lo is None or lo != lo:
            return "-"
        if key == "test_ece":
            return f"{100 * value:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})"
        return f"{value:.3f} ({lo:.3f}-{hi:.3f})"
    if key == "vs_champion":
        if row.get("selected"):
            return "champion (best val acc)"
        p, adjusted = row.get("p_value"), row.get("p_holm")
        if p is None or p != p:
            return "n/a (test predictions missing)"
        verdict = ("same" if row.get("indistinguishable") else
                   "better" if row.get("better") else "worse")
        return (f"{verdict} "
                f"({format_p(p)}, {format_p(adjusted, 'Holm p')})")
    if key in ("fit_seconds", "predict_ms_per_1000"):
        return "-" if value is None or value != value else f"{value:.1f}"
    if key == "size":
        return _size(row)
    if key == "best_params":
        return ", ".join(f"{k}={_short(v)}" for k, v in (value or {}).items()) or "fixed"
    return str(value)


def _short(value: str) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() else f"{number:.4g}"


def _table(rows: list[dict[str, Any]], columns) -> tuple[list[str], list[list[str]], set[int]]:
    """Header, cells and numeric column positions of the leaderboard for `columns`."""
    return ([title for _, title in columns], [[cell(r, k) for k, _ in columns] for r in rows],
            {i for i, (k, _) in enumerate(columns) if k in NUMERIC})


def render_text(rows: list[dict[str, Any]], wide: bool = False) -> str:
    """A fixed-width table for the terminal (best parameters only when `wide`)."""
    return tables.text(*_table(rows, [c for c in COLUMNS if wide or c[0] != "best_params"]))


def render_csv(rows: list[dict[str, Any]]) -> str:
    """Raw numbers (not rounded) for spreadsheets, plus the run id of each model."""
    out = io.StringIO()
    fields = ["rank", "pipeline", "family", "reducer", "test_accuracy", "test_ci_low",
              "test_ci_high", "mcnemar_p_vs_champion", "mcnemar_p_holm",
              "indistinguishable_from_champion", "champion", *CALIBRATION,
              "test_macro_f1", "val_accuracy", "fit_seconds", "predict_ms_per_1000", "n_params",
              "model_bytes", "n_trials", "best_params", "run_id"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({
            **{k: r.get(k) for k in fields if k in r},
            "test_ci_low": r.get("ci_low"), "test_ci_high": r.get("ci_high"),
            "mcnemar_p_vs_champion": r.get("p_value"), "mcnemar_p_holm": r.get("p_holm"),
            "indistinguishable_from_champion": r.get("indistinguishable"),
            "champion": bool(r.get("selected")), "best_params": cell(r, "best_params"),
        })
    return out.getvalue()


def render_markdown(rows: list[dict[str, Any]]) -> str:
    return tables.markdown(*_table(rows, COLUMNS))


def render_html(rows: list[dict[str, Any]]) -> str:
    """The leaderboard with the champion's row and those indistinguishable from it marked."""
    head, body, numeric = _table(rows, COLUMNS)
    classes = ["champion" if r.get("selected") else ("same" if r.get("indistinguishable") else "")
               for r in rows]
    return tables.html(head, body, numeric, classes, table_class="leaderboard")
