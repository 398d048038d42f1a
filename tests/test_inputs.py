"""study.inputs.unlike_training: images unlike Fashion-MNIST are named in words, real ones are
not, whether given as stored or as photos through study.predict's preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from study import data, images
from study.inputs import neighbour_variation, unlike_training


def _as_photo(image: Image.Image) -> tuple[np.ndarray, bool]:
    """A PIL image saved as PNG and read back the way `study predict` reads a file."""
    buf = io.BytesIO()
    image.save(buf, "PNG")
    opened = images.load(images.open_image(buf.getvalue()))
    return images.preprocess(opened), images.foreground_found(opened)


@pytest.mark.parametrize("image, reason", [
    (Image.new("L", (300, 200), 255), "blank image"),
    (Image.new("RGB", (200, 200), (0, 0, 0)), "blank image"),
    (Image.new("L", (200, 300), 128), "blank image"),
    (Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "blank image"),  # fully transparent
], ids=["white", "black", "grey", "transparent"])
def test_blank_photos_are_flagged(image, reason):
    assert unlike_training(*_as_photo(image)) == reason


def test_noise_and_objectless_photos_are_flagged():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
    assert unlike_training(*_as_photo(noise)) == "random noise"
    square = Image.fromarray(rng.integers(0, 256, (80, 80), dtype=np.uint8))
    assert unlike_training(*_as_photo(square)) == "random noise"
    # Large noise averages out to a flat grey block once shrunk to 28 pixels.
    big = Image.fromarray(rng.integers(0, 256, (400, 300, 3), dtype=np.uint8))
    assert unlike_training(*_as_photo(big)) == "nearly uniform image"
    # A grey card with faint grain: nothing stands out from the border's colour.
    grain = np.clip(128 + rng.normal(0, 5, (200, 200)), 0, 255).astype(np.uint8)
    pixels, found = _as_photo(Image.fromarray(grain))
    assert not found and pixels.std() > 1  # preprocess stretched the grain, not an object
    assert unlike_training(pixels, found) == "no foreground found after preprocessing"


def test_pixel_arrays_as_served_are_flagged_too():
    rng = np.random.default_rng(1)
    assert unlike_training(np.full((28, 28), 255, np.uint8)) == "blank image"
    assert unlike_training(np.full((28, 28), 128, np.uint8)) == "blank image"
    assert unlike_training(rng.integers(0, 256, (28, 28), dtype=np.uint8)) == "random noise"
    faint = np.zeros((28, 28), np.uint8)
    faint[4:24, 4:24] = 60 + rng.integers(0, 8, (20, 20))
    assert unlike_training(faint) == "nearly uniform image"
    with pytest.raises(ValueError, match="expected a 28x28 image"):
        unlike_training(np.zeros((32, 32), np.uint8))


def test_real_test_images_are_not_flagged(fmnist):
    """300 real test images (30 per class) and the 20 nearest the thresholds, as stored and
    saved as photos: none is flagged (none of all 10,000 either way when measured)."""
    rows = data.stratified_subsample(np.arange(len(fmnist.y_test)), fmnist.y_test, 300)
    # and the ten least contrasted and ten most textured of all 10,000, nearest the thresholds
    every = fmnist.x_test.astype(np.float64)
    flat = np.argsort(every.std(axis=(1, 2)))[:10]
    busy = np.argsort([neighbour_variation(im) for im in fmnist.x_test])[-10:]
    images = fmnist.x_test[np.concatenate([rows, flat, busy])]
    assert [unlike_training(im) for im in images] == [None] * len(images)
    photos = [_as_photo(Image.fromarray(im)) for im in images]
    assert all(found for _, found in photos)
    assert [unlike_training(*p) for p in photos] == [None] * len(images)
    # The noise rule has a margin on these images: they vary smoothly, noise does not.
    assert max(neighbour_variation(im) for im in images[:300]) < 0.8
