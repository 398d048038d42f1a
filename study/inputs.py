"""Whether a preprocessed 28x28 image looks like the training data, in words, so that an answer
on it can be flagged as uncertain (the flag informs; nothing is refused). Pure numpy.

Thresholds measured on the 10,000 Fashion-MNIST test images, both as stored ("raw") and after
study.images.preprocess of each saved as an image ("pre"), and on uniform random noise
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


def _variation(x: np.ndarray) -> np.ndarray:
    """`neighbour_variation` of each of a stack of images (n, h, w) in float64."""
    var = x.var(axis=(1, 2))
    diffs = ((np.diff(x, axis=2) ** 2).mean(axis=(1, 2))
             + (np.diff(x, axis=1) ** 2).mean(axis=(1, 2)))
    return np.divide(diffs, 4 * var, out=np.zeros_like(var), where=var > 0)


def neighbour_variation(image: np.ndarray) -> float:
    """Mean squared difference of horizontal and vertical neighbours over twice the variance:
    ~1 for independent pixels (noise), near 0 for smooth shapes; 0 for a constant image."""
    return float(_variation(np.asarray(image, dtype=np.float64)[None])[0])


def _object_std(x: np.ndarray) -> np.ndarray:
    """Standard deviation inside the bounding box of each image's non-zero pixels (0 when
    none), for a stack (n, h, w): the box as a mask, so a batch costs a few array operations."""
    n, h, w = x.shape
    on_rows, on_cols = (x > 0).any(axis=2), (x > 0).any(axis=1)
    top, bottom = on_rows.argmax(axis=1), h - 1 - on_rows[:, ::-1].argmax(axis=1)
    left, right = on_cols.argmax(axis=1), w - 1 - on_cols[:, ::-1].argmax(axis=1)
    r, c = np.arange(h), np.arange(w)
    box = (((r >= top[:, None]) & (r <= bottom[:, None]))[:, :, None]
           & ((c >= left[:, None]) & (c <= right[:, None]))[:, None, :])
    count = box.sum(axis=(1, 2))
    mean = (x * box).sum(axis=(1, 2)) / count
    std = np.sqrt((((x - mean[:, None, None]) ** 2) * box).sum(axis=(1, 2)) / count)
    return np.where(on_rows.any(axis=1), std, 0.0)


def unlike_training_all(images: np.ndarray, foreground=None) -> list[str | None]:
    """`unlike_training` of each of a stack of (n, 28, 28) uint8 images at once (the served
    model's batches); `foreground` per image, None: found in all."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"expected 28x28 images, got shape {x.shape[1:] or x.shape}")
    found = np.ones(len(x), bool) if foreground is None else np.asarray(foreground, bool)
    blank = x.std(axis=(1, 2)) < BLANK_STD
    flat = _object_std(x) < UNIFORM_STD
    noisy = _variation(x) > NOISE_VARIATION
    return ["blank image" if b else "no foreground found after preprocessing" if not f
            else "nearly uniform image" if u else "random noise" if v else None
            for b, f, u, v in zip(blank, found, flat, noisy)]


def unlike_training(image: np.ndarray, foreground: bool = True) -> str | None:
    """Why this (28, 28) uint8 image is unlike Fashion-MNIST, in words, or None. `foreground`
    is False when preprocessing found no object in the photo (study.images.foreground_found)."""
    x = np.asarray(image, dtype=np.float64)
    if x.shape != (28, 28):
        raise ValueError(f"expected a 28x28 image, got shape {x.shape}")
    return unlike_training_all(x[None], [foreground])[0]


def uncertain(image: np.ndarray, top_probability: float, threshold: float,
              foreground: bool = True) -> str | None:
    """Why an answer on this preprocessed (28, 28) image should not be taken at its word, in
    words, or None: the image is unlike the training data (`unlike_training`), or the top
    probability is below the model's unsure threshold (chosen on validation: below it,
    validation accuracy fell under 50%). `study predict` and the served model both call
    this, so they flag the same answers."""
    reason = unlike_training(image, foreground)
    return reason if reason or top_probability >= threshold else _below(top_probability,
                                                                         threshold)


def _below(top_probability: float, threshold: float) -> str:
    return f"top probability {top_probability:.2f} below the model's {threshold:.2f}"


def uncertain_all(images: np.ndarray, proba: np.ndarray, threshold: float,
                  foreground=None) -> list[str | None]:
    """`uncertain` for each of a batch: (n, 28, 28) pixels, uint8 or in [0, 1] (rounded to
    0-255 as study.predict's preprocessing makes them), their (n, classes) probabilities and
    whether preprocessing found an object in each (None: all did, e.g. pixels sent as such)."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        x = np.round(np.clip(x.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    reasons = unlike_training_all(x.reshape(len(x), 28, 28), foreground)
    top = np.asarray(proba).max(axis=1)
    return [reason if reason or p >= threshold else _below(p, threshold)
            for reason, p in zip(reasons, top)]
