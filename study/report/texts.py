"""The report's sentences that depend on the results: the verdict under the leaderboard, the
published references set against ours, the champion's most confused class pairs."""

from __future__ import annotations

from typing import Any

import numpy as np

from study.config import CLASS_NAMES
from study.leaderboard import champion_of

# Published references, side by side with ours (the references section).
ZALANDO = [  # Xiao et al. 2017, Table 3 / the repository's benchmark: best of each family
    ("Logistic regression", "linear", 0.842),
    ("Random forest", "random_forest", 0.873),
    ("SVC", "svm", 0.897),
    ("k-NN", "knn", 0.854),
    ("Gradient boosting", "gradient_boosting", 0.880),
    ("MLP", "mlp", 0.871),
]

# (pipeline, published figure, the split it was measured on, its schedule): each is set
# against our figure on the same split, like with like
SEED_CNNS = [("cnn_seed1", 0.8902, "test", "10 epochs"), ("cnn_seed2", 0.918, "validation", "20 epochs"),
             ("cnn_seed3", 0.9178, "test", "50 epochs")]

SMALL_CNN_RANGE = (0.934, 0.939)  # the best small CNNs in Zalando's benchmark table


def verdict(rows: list[dict[str, Any]]) -> str:
    """Two sentences: which model was chosen, on what, and how its test figure compares; what
    the cheaper options cost."""
    champ = champion_of(rows)
    if champ is None:
        return ("No model has a validation accuracy, so no champion was chosen; the table is "
                "ordered by test accuracy, whose maximum is an optimistic figure.")
    others = [r for r in rows if r is not champ]
    top = rows[0]
    first = (f"**{champ['pipeline']}**, chosen on validation accuracy "
             f"({champ['val_accuracy']:.4f}), scores {champ['test_accuracy']:.4f} on test"
             + (f" (95% CI {champ['ci_low']:.4f}-{champ['ci_high']:.4f})"
                if champ.get("ci_low", float("nan")) == champ.get("ci_low") else "")  # not NaN
             + ("; it also has the highest test accuracy" if top is champ else
                f"; the test maximum is {top['pipeline']} at {top['test_accuracy']:.4f}, an "
                "optimistic figure (the best of the table's looks at one test set)")
             + _against_champion(others) + ".")
    classical = [r for r in rows if r.get("kind") == "sklearn" and r["family"] != "baseline"]
    near = [r for r in rows if r["test_accuracy"] >= champ["test_accuracy"] - 0.01]
    fastest = min(near, key=lambda r: r["fit_seconds"]) if near else champ
    second = []
    if classical and classical[0]["run_id"] != champ["run_id"]:
        c = classical[0]
        gap = 100 * (champ["test_accuracy"] - c["test_accuracy"])
        second.append(f"The best classical model, {c['pipeline']}, reaches {c['test_accuracy']:.4f} "
                      f"({abs(gap):.1f} points {'behind' if gap >= 0 else 'ahead on test'}) "
                      f"in {c['fit_seconds']:.0f} s of fitting")
    if fastest["run_id"] != champ["run_id"]:
        second.append(f"{'the' if second else 'The'} cheapest model within one point of the "
                      f"champion is {fastest['pipeline']} ({fastest['fit_seconds']:.0f} s to fit "
                      f"against {champ['fit_seconds']:.0f} s)")
    if not second:
        second.append(f"No cheaper model comes within one point of it; it took "
                      f"{champ['fit_seconds']:.0f} s to fit")
    return first + " " + "; ".join(second) + "."


def _against_champion(others: list[dict[str, Any]]) -> str:
    """How the other rows fared against the champion on the test images: the same, better (a
    validation choice can miss the test maximum), worse, or untested."""
    def names(rows):
        return ", ".join(r["pipeline"] for r in rows) + (" is" if len(rows) == 1 else " are")

    tested = [r for r in others if r.get("indistinguishable") is not None]
    untested = [r for r in others if r.get("indistinguishable") is None]
    if others and not tested:
        return "; no model could be tested against it (test predictions missing)"
    same = [r for r in tested if r["indistinguishable"]]
    better = [r for r in tested if not r["indistinguishable"] and r.get("better")]
    worse = [r for r in tested if not r["indistinguishable"] and not r.get("better")]
    clauses = []
    if same:
        clauses.append(f"{names(same)} statistically indistinguishable from it")
    if better:
        clauses.append(f"{names(better)} significantly better on test (validation chose "
                       "otherwise)")
    if worse:
        clauses.append("every other model tested is significantly worse" if clauses else
                       "every model tested is significantly worse" if untested else
                       "every other model is significantly worse")
    return ("; " + "; ".join(clauses) + " (exact McNemar, 5%, Holm-adjusted)" if clauses else "") + (
        f"; not tested (predictions missing): {', '.join(r['pipeline'] for r in untested)}"
        if untested else "")


def references(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Each published figure against our best model of its family, on the same split."""
    def best(pred) -> dict[str, Any] | None:
        found = [r for r in rows if pred(r)]
        return max(found, key=lambda r: r["test_accuracy"]) if found else None

    def line(label, ref, ours, split="test"):
        ref_text = f"{ref[0]:.3f}-{ref[1]:.3f}" if isinstance(ref, tuple) else f"{ref:.4f}"
        if ours is None:
            return [label, ref_text, "not in this run", "-"]
        value = ours.get({"test": "test_accuracy", "validation": "val_accuracy"}[split],
                         float("nan"))
        if value != value:  # NaN: no figure on that split to set against it
            return [label, ref_text, f"no {split} figure ({ours['pipeline']})", "-"]
        return [label, ref_text,
                f"{value:.4f}{'' if split == 'test' else ' ' + split} ({ours['pipeline']})",
                against(value, ref)]

    out = [line(f"Zalando benchmark: {label}", ref, best(lambda r, f=fam: r["family"] == f))
           for label, fam, ref in ZALANDO]
    for name, ref, split, schedule in SEED_CNNS:
        out.append(line(f"Seed report: {name} ({split}, {schedule})", ref,
                        best(lambda r, n=name: r["pipeline"] == n), split=split))
    out.append(line("Published small CNNs (Zalando table)", SMALL_CNN_RANGE,
                    best(lambda r: r["family"] == "cnn")))
    out.append(line("Published small CNNs, against our ensemble", SMALL_CNN_RANGE,
                    best(lambda r: r["family"] == "ensemble")))
    return out


def against(value: float, ref: float | tuple[float, float]) -> str:
    """Our figure against a published one, or against a published range: within it, or the
    distance to both of its ends (never to one end only, which reads as a margin)."""
    if not isinstance(ref, tuple):
        return f"{100 * (value - ref):+.1f} points"
    low, high = ref
    if low <= value <= high:
        return f"within the range ({low:.3f} to {high:.3f})"
    ends = (f"{100 * (value - high):+.1f} points from the top, "
            f"{100 * (value - low):+.1f} from the bottom")
    return (f"above the range ({ends})" if value > high else f"below the range ({ends})")


def confused_pairs(cm: np.ndarray, top: int = 5) -> list[tuple[str, str, int]]:
    """Class pairs the model mixes up most, both directions counted together."""
    pairs = []
    for i in range(len(cm)):
        for j in range(i + 1, len(cm)):
            pairs.append((CLASS_NAMES[i], CLASS_NAMES[j], int(cm[i, j] + cm[j, i])))
    return sorted(pairs, key=lambda p: -p[2])[:top]


def _interval(m: dict[str, float], key: str, percent: bool = False) -> str:
    """A logged metric with its 95% interval ("1.23% (0.91-1.60)", "0.312 (0.301-0.325)")."""
    value, lo, hi = (m.get(k, float("nan")) for k in (key, f"{key}_lo", f"{key}_hi"))
    if value != value:
        return "-"
    if percent:
        return f"{100 * value:.2f}% ({100 * lo:.2f}-{100 * hi:.2f})"
    return f"{value:.3f} ({lo:.3f}-{hi:.3f})"


def calibration_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The calibration table: per model its temperature, test NLL, Brier and ECE with 95%
    intervals before and after it, and the unsure threshold."""
    out = []
    for e in entries:
        m = e["metrics"]
        t = m.get("temperature", 1.0)
        out.append([e["pipeline"] + (" (champion)" if e["champion"] else ""),
                    f"{t:.3g}" if t != 1.0 else "1 (none kept)",
                    _interval(m, "test_nll_unscaled"), _interval(m, "test_nll"),
                    _interval(m, "test_brier_unscaled"), _interval(m, "test_brier"),
                    _interval(m, "test_ece_unscaled", True), _interval(m, "test_ece", True),
                    "-" if "unsure_threshold" not in m else f"{m['unsure_threshold']:.3f}"
                    if m["unsure_threshold"] > 0 else "0 (never unsure)"])
    return out


def calibration_verdict(entries: list[dict[str, Any]]) -> str:
    """Two sentences from the figures: the champion's calibration before and after its
    temperature (or why it kept none), then what scaling did across the models."""
    if not entries:
        return "No final run of this compare logged calibration metrics."
    champ = next((e for e in entries if e["champion"]), entries[0])
    m, name = champ["metrics"], champ["pipeline"]
    ece, ece0 = m["test_ece"], m.get("test_ece_unscaled", m["test_ece"])
    nll, nll0 = m["test_nll"], m.get("test_nll_unscaled", m["test_nll"])
    if m.get("temperature", 1.0) != 1.0:
        first = (f"The {'champion' if champ['champion'] else 'top model'}, {name}, is scaled "
                 f"by T={m['temperature']:.3g}: its test ECE goes from {100 * ece0:.2f}% to "
                 f"{100 * ece:.2f}% (95% CI {100 * m['test_ece_lo']:.2f}-"
                 f"{100 * m['test_ece_hi']:.2f}%) and its test NLL from {nll0:.3f} to "
                 f"{nll:.3f} ({'lower' if nll < nll0 else 'not lower'} after scaling); "
                 f"the ECE is {'within' if ece <= 0.015 else 'above'} the study's 1.5% aim")
    else:
        why = champ["note"].split(": ", 1)[-1] if champ["note"] else "no temperature logged"
        first = (f"The {'champion' if champ['champion'] else 'top model'}, {name}, keeps no "
                 f"temperature ({why}); its test ECE is {100 * ece:.2f}% (95% CI "
                 f"{100 * m['test_ece_lo']:.2f}-{100 * m['test_ece_hi']:.2f}%) and test NLL "
                 f"{nll:.3f}")
    scaled = [e for e in entries if e["metrics"].get("temperature", 1.0) != 1.0]
    kept_one = [e["pipeline"] for e in entries if e not in scaled]
    better = [e for e in scaled
              if e["metrics"]["test_ece"] < e["metrics"].get("test_ece_unscaled", float("inf"))]
    best = min(entries, key=lambda e: e["metrics"]["test_ece"])
    if scaled:
        changes = [100 * (e["metrics"]["test_ece"] - e["metrics"]["test_ece_unscaled"])
                   for e in scaled if "test_ece_unscaled" in e["metrics"]]
        second = (f"Scaling lowered test ECE for {len(better)} of the {len(scaled)} models that "
                  f"kept a temperature (median change {np.median(changes):+.2f} points)"
                  if changes else f"{len(scaled)} models kept a temperature")
    else:
        second = "No model kept a temperature"
    second += (f"; {len(kept_one)} kept T=1 ({', '.join(kept_one)}): on validation the fitted "
               "temperature did not lower log loss, or lowered it only by raising ECE"
               if kept_one else "")
    second += (f"; the best calibrated on test is {best['pipeline']} "
               f"({100 * best['metrics']['test_ece']:.2f}% ECE)")
    return first + ". " + second + "."
