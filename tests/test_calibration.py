"""study.calibration: metrics against hand-computed values, the bootstrap's coverage in
simulation, temperature scaling and the unsure threshold."""

from __future__ import annotations

import numpy as np
import pytest

from study import calibration as cal

# Three images, three classes; labels 0, 1, 2. By hand:
# NLL = -(ln 0.7 + ln 0.5 + ln 0.1) / 3 = (0.356675 + 0.693147 + 2.302585) / 3 = 1.117469
# Brier: (0.09 + 0.04 + 0.01) + (0.09 + 0.25 + 0.04) + (0.36 + 0.09 + 0.81) = 0.14 + 0.38 + 1.26
#        = 1.78, / 3 = 0.593333
# ECE, 15 bins of width 1/15: top probabilities 0.7 (right, bin (0.6667, 0.7333]),
#      0.5 (right, bin (0.4667, 0.5333]), 0.6 (wrong, bin (0.5333, 0.6]):
#      (|1 - 0.7| + |1 - 0.5| + |0 - 0.6|) / 3 = 1.4 / 3 = 0.466667
PROBA = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.6, 0.3, 0.1]])
Y = np.array([0, 1, 2])


def test_metrics_match_hand_computed_values():
    assert cal.nll(PROBA, Y) == pytest.approx(1.117469, abs=1e-6)
    assert cal.brier(PROBA, Y) == pytest.approx(0.593333, abs=1e-6)
    assert cal.ece(PROBA, Y) == pytest.approx(0.466667, abs=1e-6)
    # Two bins: [0.7, 0.6] share (0.5, 1] -> |1 - 1.3| = 0.3; 0.5 is in (0, 0.5] -> 0.5.
    assert cal.ece(PROBA, Y, bins=2) == pytest.approx(0.8 / 3, abs=1e-9)
    # A certain right answer costs nothing; a zero probability on the truth is clipped, finite.
    assert cal.nll(np.eye(3), Y) == pytest.approx(0.0, abs=1e-9)
    assert cal.brier(np.eye(3), Y) == 0.0 and cal.ece(np.eye(3), Y) == 0.0
    assert np.isfinite(cal.nll(np.eye(3)[[1, 2, 0]], Y))
    assert cal.brier(np.eye(3)[[1, 2, 0]], Y) == pytest.approx(2.0)


def test_reliability_bins_hold_counts_confidence_and_accuracy():
    bins = cal.reliability(PROBA, Y, bins=2)
    assert [(b.lower, b.upper, b.count) for b in bins] == [(0.0, 0.5, 1), (0.5, 1.0, 2)]
    assert bins[0].confidence == pytest.approx(0.5) and bins[0].accuracy == 1.0
    assert bins[1].confidence == pytest.approx(0.65) and bins[1].accuracy == 0.5
    fifteen = cal.reliability(PROBA, Y)
    assert sum(b.count for b in fifteen) == 3 and np.isnan(fifteen[0].accuracy)


def test_bad_shapes_and_labels_are_refused_in_one_line():
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        cal.nll(PROBA, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match=r"proba must be \(n, classes\)"):
        cal.brier(PROBA[0], Y)
    with pytest.raises(ValueError, match="unknown metric"):
        cal.bootstrap(PROBA, Y, metrics=("accuracy",))


def _draw(rng, n, k=10):
    """A model's true class probabilities for n images, and labels drawn from them."""
    p = np.exp(cal._log_softmax(rng.normal(size=(n, k)) * 2.5))
    y = (p.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1).clip(0, k - 1)
    return p, y


def test_bootstrap_is_the_full_data_value_with_an_interval_around_it():
    rng = np.random.default_rng(3)
    p, y = _draw(rng, 2000)
    out = cal.bootstrap(p, y, n=200, seed=7)
    assert out == cal.bootstrap(p, y, n=200, seed=7)  # a fixed seed, a fixed answer
    for name, fn in (("nll", cal.nll), ("brier", cal.brier), ("ece", cal.ece)):
        assert out[name].value == pytest.approx(fn(p, y), rel=1e-12)
        assert out[name].lo < out[name].value < out[name].hi


def test_bootstrap_resamples_images_in_pairs_as_a_plain_loop_would():
    """Each metric on the same resampled images (the same draws for every metric), computed
    one resample at a time with the plain functions: the vectorised intervals equal these."""
    rng = np.random.default_rng(4)
    p, y = _draw(rng, 300)
    p = cal.apply_temperature(p, 0.7)
    out = cal.bootstrap(p, y, n=60, seed=13)
    draws = cal.resamples(len(y), n=60, seed=13)
    for name, fn in (("nll", cal.nll), ("brier", cal.brier), ("ece", cal.ece)):
        samples = np.array([fn(p[i], y[i]) for i in draws])
        lo, hi = np.percentile(samples, [2.5, 97.5]) - (samples.mean() - fn(p, y))
        lo = max(0.0, lo)
        assert (out[name].lo, out[name].hi) == (pytest.approx(lo, abs=1e-12),
                                                pytest.approx(hi, abs=1e-12)), name


def test_bootstrap_interval_covers_the_true_value_near_its_nominal_rate():
    """200 datasets of 600 images from a known, overconfident model (reported p^(1/0.6),
    renormalised, labels drawn from p): its true NLL, Brier and ECE are expectations over p,
    computed on 200,000 draws; each 95% interval should cover them ~95% of the time."""
    rng = np.random.default_rng(11)
    big, _ = _draw(rng, 200_000)
    shown = cal.apply_temperature(big, 0.6)
    top, conf = shown.argmax(axis=1), shown.max(axis=1)
    rows = np.arange(len(big))
    index = np.clip(np.ceil(conf * cal.BINS).astype(int) - 1, 0, cal.BINS - 1)
    gap = np.bincount(index, weights=big[rows, top] - conf, minlength=cal.BINS)
    truth = {"nll": float((big * -np.log(shown)).sum(axis=1).mean()),
             "brier": float(((shown ** 2).sum(axis=1) - 2 * (big * shown).sum(axis=1) + 1).mean()),
             "ece": float(np.abs(gap).sum() / len(big))}
    covered = dict.fromkeys(truth, 0)
    for s in range(200):
        p, y = _draw(rng, 600)
        out = cal.bootstrap(cal.apply_temperature(p, 0.6), y, n=200, seed=s)
        for name, value in truth.items():
            covered[name] += out[name].lo <= value <= out[name].hi
    rates = {name: c / 200 for name, c in covered.items()}
    assert all(0.88 <= r <= 0.99 for r in rates.values()), rates


def test_temperature_keeps_every_argmax_and_recovers_a_known_temperature():
    rng = np.random.default_rng(5)
    p, y = _draw(rng, 5000)
    sharp = cal.apply_temperature(p, 0.5)  # as overconfident as softmax(logits * 2)
    fitted = cal.fit_temperature(sharp, y)
    assert fitted == pytest.approx(2.0, rel=0.05)
    assert cal.fit_temperature(p, y) == pytest.approx(1.0, rel=0.05)  # calibrated: T ~ 1
    scaled = cal.apply_temperature(sharp, fitted)
    assert np.array_equal(scaled.argmax(axis=1), sharp.argmax(axis=1))
    assert np.allclose(scaled.sum(axis=1), 1.0)
    assert cal.nll(scaled, y) < cal.nll(sharp, y) and cal.ece(scaled, y) < cal.ece(sharp, y)
    # Exact zeros (a forest's leaves) are clipped, not a log(0) failure; argmax still kept.
    hard = np.where(sharp < 0.05, 0.0, sharp)
    hard /= hard.sum(axis=1, keepdims=True)
    t = cal.fit_temperature(hard, y)
    assert np.isfinite(t) and t > 0
    assert np.array_equal(cal.apply_temperature(hard, t).argmax(axis=1), hard.argmax(axis=1))
    with pytest.raises(ValueError, match="temperature must be positive"):
        cal.apply_temperature(p, 0.0)


def test_temperature_is_fitted_on_the_validation_data_it_is_given_only():
    """Its result is a function of its two arguments: the same validation data after other
    fits on test data of a different temperature gives the same T, and inputs are unchanged."""
    rng = np.random.default_rng(9)
    p_val, y_val = _draw(rng, 3000)
    p_test, y_test = _draw(rng, 3000)
    val = cal.apply_temperature(p_val, 0.5)
    before = val.copy()
    first = cal.fit_temperature(val, y_val)
    on_test = cal.fit_temperature(cal.apply_temperature(p_test, 2.0), y_test)
    assert on_test == pytest.approx(0.5, rel=0.05)  # the test data would say otherwise
    assert cal.fit_temperature(val, y_val) == first
    assert np.array_equal(val, before)
    shuffled = rng.permutation(len(y_val))
    assert cal.fit_temperature(val[shuffled], y_val[shuffled]) == pytest.approx(first, rel=1e-3)


def _top_on_class_0(conf: np.ndarray) -> np.ndarray:
    """Ten classes: `conf` on class 0, the rest shared by the nine others."""
    return np.column_stack([conf] + [(1 - conf) / 9] * 9)


def test_unsure_threshold_is_where_validation_accuracy_falls_under_half():
    # Confidence 0.3 and 0.4: 1 right of 4 each; 0.6: 3 of 4; 0.9: 4 of 4.
    conf = np.repeat([0.3, 0.4, 0.6, 0.9], 4)
    right = np.array([1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=bool)
    proba = _top_on_class_0(conf)
    y = np.where(right, 0, 1)
    assert cal.unsure_threshold(proba, y) == pytest.approx(0.6)
    # Always right: never unsure. Always wrong: everything is.
    assert cal.unsure_threshold(proba, np.zeros(16, int)) == 0.0
    everything = cal.unsure_threshold(proba, np.ones(16, int))
    assert everything > 0.9 and (proba.max(axis=1) < everything).all()
    # A pocket of wrong answers above right ones is pooled (accuracy kept non-decreasing):
    # 0.3 right x3, 0.4 wrong x4 -> pooled 3/7 < 1/2, so both are below the threshold.
    conf2 = np.array([0.3] * 3 + [0.4] * 4 + [0.8] * 2)
    proba2 = _top_on_class_0(conf2)
    y2 = np.array([0] * 3 + [1] * 4 + [0] * 2)
    assert cal.unsure_threshold(proba2, y2) == pytest.approx(0.8)
