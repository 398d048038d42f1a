"""Whether a preprocessed 28x28 image looks like the training data, in words, so that an answer
on it can be flagged as uncertain (the flag informs; nothing is refused). Pure numpy.

Thresholds measured on the 10,000 Fashion-MNIST test images, both as stored ("raw") and after
study.predict.preprocess of each saved as an image ("pre"), and on uniform random noise
photos of 28x28 to 1000x700 pixels (grey and colour) after preprocess:
- pixel standard deviation: real >= 18.1 (raw) / 19.3 (pre); blank photos preprocess to 0;
- standard deviation inside the bounding box of non-zero pixels: real >= 18.2 / 19.4; noise
  photos of 300 px and more average out to 1.4-9.9 when shrunk to 28 pixels;
- neighbour variation, the mean squared difference between horizontal and vertical
  neighbours over twice the variance (~1 for independent pixels, small for smooth objects):
  real <= 0.761 (raw) / 0.857 (pre); noise photos of 28-300 px square: 0.90-1.07.
None of the 10,000 test images is flagged, raw or saved as PNG and preprocessed
(tests/test_inputs.py checks a few hundred). Noise photos of 28-100 px square read "random
noise", of 300 px and more "nearly uniform image"; non-square ones (40x28, 60x200), whose
strip is padded with black, fall between the rules and are not flagged: the unsure threshold
on the top probability remains their safety net.
"""

from __future__ import annotations

import numpy as np

BLANK_STD = 1.0  # a constant image, white, black or grey (preprocess makes them all black)
UNIFORM_STD = 12.0  # object box flatter than any real test image (>= 18.2)
NOISE_VARIATION = 0.88  # between real (<= 0.857) and noise (>= 0.90)


def neighbour_variation(image: np.ndarray) -> float:
    """Mean squared difference of horizontal and vertical neighbours over twice the variance:
    ~1 for independent pixels (noise), near 0 for smooth shapes; 0 for a constant image."""
    x = np.asarray(image, dtype=np.float64)
    var = x.var()
    if var == 0:
        return 0.0
    diffs = (np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=0) ** 2).mean()
    return float(diffs / (4 * var))


def _object_std(x: np.ndarray) -> float:
    """Standard deviation inside the bounding box of the non-zero pixels (0 when none)."""
    rows, cols = np.flatnonzero((x > 0).any(axis=1)), np.flatnonzero((x > 0).any(axis=0))
    if not len(rows):
        return 0.0
    return float(x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].std())


def unlike_training(image: np.ndarray, foreground: bool = True) -> str | None:
    """Why this (28, 28) uint8 image is unlike Fashion-MNIST, in words, or None. `foreground`
    is False when preprocessing found no object in the photo (study.predict.foreground_found)."""
    x = np.asarray(image, dtype=np.float64)
    if x.shape != (28, 28):
        raise ValueError(f"expected a 28x28 image, got shape {x.shape}")
    if x.std() < BLANK_STD:
        return "blank image"
    if not foreground:
        return "no foreground found after preprocessing"
    if _object_std(x) < UNIFORM_STD:
        return "nearly uniform image"
    if neighbour_variation(x) > NOISE_VARIATION:
        return "random noise"
    return None


def uncertain(image: np.ndarray, top_probability: float, threshold: float,
              foreground: bool = True) -> str | None:
    """Why an answer on this preprocessed (28, 28) image should not be taken at its word, in
    words, or None: the image is unlike the training data (`unlike_training`), or the top
    probability is below the model's unsure threshold (chosen on validation: below it,
    validation accuracy fell under 50%). `study predict` and the served model both call
    this, so they flag the same answers."""
    reason = unlike_training(image, foreground)
    if reason is None and top_probability < threshold:
        reason = f"top probability {top_probability:.2f} below the model's {threshold:.2f}"
    return reason


def uncertain_all(images: np.ndarray, proba: np.ndarray, threshold: float,
                  foreground=None) -> list[str | None]:
    """`uncertain` for each of a batch: (n, 28, 28) pixels, uint8 or in [0, 1] (rounded to
    0-255 as study.predict's preprocessing makes them), their (n, classes) probabilities and
    whether preprocessing found an object in each (None: all did, e.g. pixels sent as such)."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        x = np.round(np.clip(x.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    x = x.reshape(len(x), 28, 28)
    found = [True] * len(x) if foreground is None else list(foreground)
    top = np.asarray(proba).max(axis=1)
    return [uncertain(image, float(p), threshold, bool(f)) for image, p, f in zip(x, top, found)]
