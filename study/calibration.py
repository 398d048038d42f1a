"""Whether a model's "0.9" means nine in ten: NLL, Brier and top-label ECE with paired bootstrap
intervals, temperature scaling fitted on validation, and the confidence below which an answer
is flagged as unsure. Pure numpy/scipy: every result depends only on the arguments given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 15  # equal-width confidence bins for ECE and the reliability diagrams
EPS = 1e-12  # probabilities of exactly 0 are clipped here before any logarithm
METRICS = ("nll", "brier", "ece")
# log T is searched in [1/20, 20]: wide enough for an overconfident network (T ~ 1.5-3) or a
# timid forest (T < 1), narrow enough that a degenerate input cannot run away.
LOG_T_BOUNDS = (float(np.log(1 / 20)), float(np.log(20)))


@dataclass(frozen=True)
class Interval:
    value: float  # on all the images
    lo: float  # 2.5th percentile of the bootstrap resamples
    hi: float  # 97.5th


@dataclass(frozen=True)
class Bin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean top probability in the bin (nan when empty)
    accuracy: float  # share of its images classified right (nan when empty)


def _checked(proba, y) -> tuple[np.ndarray, np.ndarray]:
    proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y).astype(np.intp)
    if proba.ndim != 2 or y.shape != (len(proba),) or not len(y):
        raise ValueError(f"proba must be (n, classes) and y (n,) with n > 0, got {proba.shape} "
                         f"and {y.shape}")
    if y.min() < 0 or y.max() >= proba.shape[1]:
        raise ValueError(f"labels must lie in 0..{proba.shape[1] - 1}")
    return proba, y


def _per_image(proba: np.ndarray, y: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Each image's share of every metric: its NLL and Brier terms, its confidence bin, its
    confidence and whether it is right; every metric is a function of their (per-bin) sums."""
    n = len(y)
    p_true = proba[np.arange(n), y]
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    sq = (proba ** 2).sum(axis=1) - 2 * p_true + 1  # sum_k (p_k - onehot_k)^2
    # Bins are (lower, upper], the first also holding a confidence of exactly 0.
    index = np.clip(np.ceil(confidence * bins).astype(np.intp) - 1, 0, bins - 1)
    return {"nll": -np.log(np.clip(p_true, EPS, 1.0)), "brier": sq, "bin": index,
            "confidence": confidence, "correct": correct}


def nll(proba, y) -> float:
    """Mean negative log-likelihood of the true class (natural log; p clipped at 1e-12)."""
    proba, y = _checked(proba, y)
    return float(_per_image(proba, y, BINS)["nll"].mean())


def brier(proba, y) -> float:
    """Multi-class Brier score: the mean over images of the sum over classes of
    (p_k - 1[k = y])^2, so it ranges 0..2 (not divided by the number of classes)."""
    proba, y = _checked(proba, y)
    return float(_per_image(proba, y, BINS)["brier"].mean())


def ece(proba, y, bins: int = BINS) -> float:
    """Top-label expected calibration error: over `bins` equal-width bins of the top
    probability ((lower, upper]), sum of |accuracy - mean confidence| weighted by bin count."""
    proba, y = _checked(proba, y)
    parts = _per_image(proba, y, bins)
    # sum_b n_b/N |acc_b - conf_b| = sum_b |sum over the bin of (right - confidence)| / N
    gap = np.bincount(parts["bin"], weights=parts["correct"] - parts["confidence"],
                      minlength=bins)
    return float(np.abs(gap).sum() / len(y))


def reliability(proba, y, bins: int = BINS) -> list[Bin]:
    """Per confidence bin: its edges, image count, mean confidence and accuracy (the
    reliability diagram's points; empty bins have nan confidence and accuracy)."""
    proba, y = _checked(proba, y)
    parts = _per_image(proba, y, bins)
    counts = np.bincount(parts["bin"], minlength=bins)
    conf = np.bincount(parts["bin"], weights=parts["confidence"], minlength=bins)
    acc = np.bincount(parts["bin"], weights=parts["correct"], minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf, acc = conf / counts, acc / counts
    edges = np.linspace(0.0, 1.0, bins + 1)
    return [Bin(float(edges[b]), float(edges[b + 1]), int(counts[b]), float(conf[b]),
                float(acc[b])) for b in range(bins)]


def resamples(size: int, n: int = 300, seed: int = 2020) -> np.ndarray:
    """The (n, size) image indices of `bootstrap`'s resamples, drawn with replacement."""
    return np.random.default_rng(seed).integers(0, size, size=(n, size))


def bootstrap(proba, y, metrics=METRICS, n: int = 300, seed: int = 2020,
              bins: int = BINS) -> dict[str, Interval]:
    """Each metric on all images with its 95% bias-corrected percentile interval (shifted by
    the resamples' mean less the value, floored at 0) over `n` paired resamples of the images
    (one resample serves every metric). Vectorised: a resample is a vector of counts per image, and each metric a function of count-weighted per-image sums."""
    proba, y = _checked(proba, y)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    parts = _per_image(proba, y, bins)
    size = len(y)
    draws = resamples(size, n, seed) + (np.arange(n) * size)[:, None]
    weights = np.bincount(draws.ravel(), minlength=n * size).reshape(n, size).astype(np.float64)
    full = np.ones((1, size))
    # Per-bin sums by images sorted by bin (np.add.reduceat): a matrix product with the
    # one-hot bins took 10 ms a call under load (BLAS threads on 2 busy cores).
    order = np.argsort(parts["bin"], kind="stable")
    starts = np.flatnonzero(np.diff(parts["bin"][order], prepend=-1))  # each non-empty bin
    gap = (parts["correct"] - parts["confidence"])[order]
    out = {}
    for name in metrics:
        if name == "ece":
            def value(w):
                per_bin = np.add.reduceat(w[:, order] * gap, starts, axis=1)
                return np.abs(per_bin).sum(axis=1) / size
        else:
            def value(w, terms=parts[name]):
                return w @ terms / size
        samples, point = value(weights), float(value(full)[0])
        # centred on the value: ECE's plug-in figure is biased upward, and its resamples more
        # so (a perfectly calibrated model still scores > 0), which put a plain percentile
        # interval wholly above its own value in 3-7 of 40 simulated sets; shifting by the
        # bootstrap's bias estimate (mean of the resamples less the value) corrects that, and
        # moves NLL and Brier (means: no bias) by nothing to speak of
        lo, hi = np.percentile(samples, [2.5, 97.5]) - (samples.mean() - point)
        out[name] = Interval(point, max(0.0, float(lo)), float(hi))
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens, T < 1 sharpens; the argmax never changes."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), EPS, 1.0))
    return np.exp(_log_softmax(logits / temperature))


def fit_temperature(val_proba, y_val) -> float:
    """The one T minimising validation NLL of softmax(log p / T): a bounded 1-D search on log T
    (1/20..20). Uses only its arguments (no state), so it cannot see the test set."""
    from scipy.optimize import minimize_scalar

    proba, y = _checked(val_proba, y_val)
    logits = np.log(np.clip(proba, EPS, 1.0))
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-_log_softmax(logits / np.exp(log_t))[rows, y].mean())

    best = minimize_scalar(loss, bounds=LOG_T_BOUNDS, method="bounded",
                           options={"xatol": 1e-4})
    return float(np.exp(best.x))


def unsure_threshold(val_proba, y_val) -> float:
    """The confidence below which an answer is flagged unsure: validation accuracy as a
    non-decreasing function of the top probability (isotonic regression of right/wrong on
    it, ties pooled) is below 50% exactly for the images under the returned value. Answers
    with top probability < threshold are unsure; 0.0 when that accuracy never falls below 50%."""
    from scipy.optimize import isotonic_regression

    proba, y = _checked(val_proba, y_val)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    levels, inverse, counts = np.unique(confidence, return_inverse=True, return_counts=True)
    accuracy = np.bincount(inverse, weights=correct) / counts
    fitted = isotonic_regression(accuracy, weights=counts.astype(np.float64)).x
    at_least_half = np.flatnonzero(fitted >= 0.5)
    if not len(at_least_half):  # wrong more often than right everywhere: everything unsure
        return float(np.nextafter(levels[-1], np.inf))
    first = at_least_half[0]
    return 0.0 if first == 0 else float(levels[first])
