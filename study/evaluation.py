"""Scores of one final model on the test set (computed once per final model; its figures
are drawn by study.figures), and its calibration: the temperature fitted on validation and
NLL, Brier and ECE with intervals before and after it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from study import calibration
from study.config import CLASS_NAMES, N_CLASSES

BOOTSTRAP_RESAMPLES = 300  # per interval: ~0.5 s for 10,000 test images (calibration.bootstrap)
BOOTSTRAP_SEED = 2020


@dataclass
class Calibrated:
    """A final model's temperature (fitted on validation only; 1.0 when it did not lower
    validation NLL or raised validation ECE), the unsure threshold on its scaled validation
    probabilities, and its metrics in the study's naming (`calibration_metrics`)."""

    temperature: float
    unsure_threshold: float
    note: str  # which temperature was kept and why, in one line (the run's `calibration` tag)
    metrics: dict[str, float] = field(default_factory=dict)

    def carried(self) -> dict[str, float]:
        """What the logged model carries (serving.log_model's keywords)."""
        return {"temperature": self.temperature, "unsure_threshold": self.unsure_threshold}


@dataclass
class Evaluation:
    accuracy: float
    macro_f1: float
    confusion: np.ndarray  # rows: true class, columns: predicted class
    report: dict  # sklearn classification_report(output_dict=True)
    report_text: str
    predictions: np.ndarray
    proba: np.ndarray  # as the model outputs them, before temperature scaling
    calibration: Calibrated | None = None  # when validation probabilities were given
    # the test reliability diagram's bins before and after the temperature (reliability_record)
    reliability: dict | None = None


PREDICT_BATCH = 2048  # test images per call when prediction is timed
# A time cap or a tuning timeout is a safety net: a recipe (or a time budget's plan) sizes the
# epochs and trials to end on their own, so one that stopped a model is a failure of the plan.
PLAN_FAILED = "the plan failed"


def timed_proba(predict, images: np.ndarray) -> tuple[np.ndarray, float]:
    """The study's one way to time prediction (every row's predict_ms_per_1000): `predict`
    (uint8 images -> probabilities; the model as it is logged: a network, a scikit-learn
    pipeline or the ensemble's Classifier over its members) on every test image, in this
    process, PREDICT_BATCH images a call. Returns the probabilities and the seconds."""
    start = time.perf_counter()
    proba = np.concatenate([predict(images[i:i + PREDICT_BATCH])
                            for i in range(0, len(images), PREDICT_BATCH)])
    return proba, time.perf_counter() - start


def evaluate(y_true: np.ndarray, proba: np.ndarray, val_proba: np.ndarray | None = None,
             y_val: np.ndarray | None = None) -> Evaluation:
    """Accuracy, F1 and the confusion matrix on the argmax of `proba` (which no temperature
    changes), and with validation probabilities the calibration (`calibrate`)."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    pred = proba.argmax(axis=1)
    calibrated = None if val_proba is None else calibrate(val_proba, y_val, proba, y_true)
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
        calibration=calibrated,
        reliability=None if calibrated is None else reliability_record(
            proba, y_true, calibrated.temperature),
    )


def stopped_by_time_cap(fit) -> bool:
    """Whether its time cap (max_seconds, study.training) stopped a network's fit early."""
    return any(note.startswith("time limit") for note in fit.notes)


def fitted_temperature(val_proba: np.ndarray, y_val: np.ndarray) -> tuple[float, str]:
    """The temperature a final model keeps, from validation rows only: the fitted T where it
    lowers validation NLL and does not raise validation ECE, else 1.0; and a line saying
    which and why (the run's `calibration` tag). NLL alone is not enough: a k-NN's few
    probability levels (0, 1/k, ..., 1) make one wrong "1.0" cost 27 nats, so the NLL fit
    softens everything (T=5) and its test ECE went 1.9% -> 7.1% (umap_knn 5.4% -> 8.5%) in
    a 20-minute compare."""
    fitted = calibration.fit_temperature(val_proba, y_val)
    scaled_val = calibration.apply_temperature(val_proba, fitted)
    before, after = calibration.nll(val_proba, y_val), calibration.nll(scaled_val, y_val)
    ece_before, ece_after = calibration.ece(val_proba, y_val), calibration.ece(scaled_val, y_val)
    figures = (f"validation NLL {before:.4f} -> {after:.4f}, "
               f"ECE {100 * ece_before:.2f}% -> {100 * ece_after:.2f}%")
    if after >= before:
        return 1.0, f"no temperature (T=1): the fitted T={fitted:.4g} did not lower validation NLL ({figures})"
    if ece_after > ece_before:
        return 1.0, f"no temperature (T=1): the fitted T={fitted:.4g} raised ECE ({figures})"
    return fitted, f"temperature {fitted:.4g} ({figures})"


def scaled(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities as the logged model serves them: with its temperature, unless it is 1."""
    return proba if temperature == 1.0 else calibration.apply_temperature(proba, temperature)


def calibration_metrics(split: str, proba: np.ndarray, y: np.ndarray,
                        suffix: str = "") -> dict[str, float]:
    """{split}_{nll,brier,ece}{suffix} with `_lo`/`_hi`, their 95% paired bootstrap interval."""
    out = {}
    for name, iv in calibration.bootstrap(proba, y, n=BOOTSTRAP_RESAMPLES,
                                          seed=BOOTSTRAP_SEED).items():
        key = f"{split}_{name}{suffix}"
        out.update({key: iv.value, f"{key}_lo": iv.lo, f"{key}_hi": iv.hi})
    return out


def calibrate(val_proba: np.ndarray, y_val: np.ndarray, test_proba: np.ndarray,
              y_test: np.ndarray) -> Calibrated:
    """The temperature (validation only: the test rows are scored with it, never fitted on),
    the unsure threshold on the scaled validation probabilities, and NLL, Brier and ECE with
    intervals on validation and test after scaling, and `_unscaled` before."""
    temperature, note = fitted_temperature(val_proba, y_val)
    val_scaled, test_scaled = scaled(val_proba, temperature), scaled(test_proba, temperature)
    metrics = {"temperature": temperature,
               "unsure_threshold": calibration.unsure_threshold(val_scaled, y_val)}
    for split, raw, after, y in (("val", val_proba, val_scaled, y_val),
                                 ("test", test_proba, test_scaled, y_test)):
        metrics.update(calibration_metrics(split, after, y))
        metrics.update(calibration_metrics(split, raw, y, "_unscaled"))
    return Calibrated(temperature, metrics["unsure_threshold"], note, metrics)


def reliability_record(proba: np.ndarray, y: np.ndarray, temperature: float,
                       split: str = "test") -> dict:
    """The reliability diagram's numbers, before and after the temperature: per confidence
    bin (calibration.BINS, equal width) its edges, image count, mean top probability and
    accuracy (None when empty), and the ECE; JSON-ready (each final run's
    evaluation/reliability.json, which the report reads)."""
    def side(p: np.ndarray) -> dict:
        bins = [{"lower": b.lower, "upper": b.upper, "count": b.count,
                 "confidence": None if b.count == 0 else b.confidence,
                 "accuracy": None if b.count == 0 else b.accuracy}
                for b in calibration.reliability(p, y)]
        return {"ece": calibration.ece(p, y), "bins": bins}

    return {"split": split, "images": int(len(y)), "temperature": float(temperature),
            "before": side(proba), "after": side(scaled(proba, temperature))}


def limited_by(spec, recipe, budget, tuned, fit, recipe_epochs: int | None,
               rows: tuple[int, int] | None = None) -> str:
    """What bounded a final model, for the leaderboard, against its profile's recipe
    (`recipe`, the profile's Budget; `recipe_epochs`, the epochs its final fit asks): the
    training rows when a time budget cut them (`rows`: fitted on, of), trials
    and epochs run of the recipe's, "(time budget)" only when a time budget's cut allotment
    (`budget`) made them fewer, failed trials said as failed; early stopping, an iteration cap
    that stopped a fit; a time cap or the recipe's tuning timeout that stopped one as
    PLAN_FAILED (epochs and trials decide where it ends)."""
    parts = []
    if rows and rows[0] < rows[1]:
        parts.append(f"{rows[0]:,} of {rows[1]:,} rows (time budget)")
    failed = getattr(tuned, "n_failed", 0)
    if spec.tunes(recipe):
        trials = f"{tuned.n_trials}/{recipe.n_trials} trials"
        # failed trials are not missing ones: only trials never run fell short
        if tuned.n_trials + failed < recipe.n_trials:
            cut = budget.n_trials < recipe.n_trials or budget.timeout < recipe.timeout
            trials += " (time budget)" if cut else f" (tuning timeout: {PLAN_FAILED})"
        parts.append(trials + (f"; {failed} failed" if failed else ""))
    ran = len(fit.history.get("loss", []))
    if ran and recipe_epochs:
        allowed, wanted = int(budget.fit.get("epochs", recipe_epochs)), int(recipe_epochs)
        why = ""
        if ran < wanted:
            if stopped_by_time_cap(fit):  # under a time budget too: its planner sized the epochs
                planned = f", {allowed} planned" if allowed < wanted else ""
                why = f" (time cap{planned}: {PLAN_FAILED}; the schedule did not finish)"
            elif ran < allowed:
                why = " (early stopping)"
            else:  # it ran every epoch the budget allowed, fewer than the recipe's
                why = " (time budget)"
        parts.append(f"{ran}/{wanted} epochs{why}")
    if any("converge" in note for note in fit.notes):
        parts.append("iteration cap (not converged)")
    return "; ".join(parts) or "-"
