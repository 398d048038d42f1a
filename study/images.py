"""Image files to the model's 28x28 input, and a model's output back to probabilities: the
one implementation that `study predict` and the served model (serving) share.

A product photo is turned into the Fashion-MNIST form the way Zalando made the dataset
(github.com/zalandoresearch/fashion-mnist, "Get the data"): trim the edges that match the
corner colour, resize the longest edge to 28 pixels, sharpen, pad the short edge to 28 with the
object centred, make the object light on a dark background (invert when the background is
light), stretch the brightest pixel to 255 (as 99% of the training images), 8-bit grayscale,
then scale to [0, 1] like the training data. Transparent pixels count as background.
Pure: Pillow and numpy only (no mlflow), so both callers import it from below.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from study.config import CLASS_NAMES

IMAGE_INPUT = "image"  # the input name (JSON key or DataFrame column) for encoded image files
MAX_PIXELS = 40_000_000  # a 40-megapixel photo is plenty; larger is refused before decoding
MAX_BYTES = 200 * 2**20
# Decoding costs per row too: a 1 x 40,000,000 PNG (78 kB) took 2.4 s to decode alone.
MAX_ASPECT = 50
# Decoded images are shrunk (draft, then an integer box reduction) to at most this many pixels
# a side before preprocessing: a 6,324 x 6,324 PNG took 1.6 s and ~500 MB to trim and resize
# at full size. Ordinary photos below it are preprocessed exactly as before.
WORK_SIDE = 1024
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # what Image.open may try
ORDINARY_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
# Edges within 10% of the background are trimmed. Zalando used 5% on clean studio shots; on
# resampled and JPEG-compressed photos the faint halo then widens the box and shrinks the
# object (measured on 100 test images as photos: 94/100 predictions kept at 5%, 97 at 10%).
TRIM_TOLERANCE = 0.10
RESAMPLE = 1  # PIL.Image.Resampling.LANCZOS: antialiased downsampling of large photos


class ImageError(ValueError):
    """One file that cannot be classified, with the reason in one line."""


def load_image(path: Path):
    """Open and fully decode one image file, refusing what is not safe or not an image."""
    if not path.exists():
        raise ImageError("no such file")
    if not os.access(path, os.R_OK) or not path.is_file():
        raise ImageError("not a readable file")
    size = path.stat().st_size
    if size == 0:
        raise ImageError("empty file")
    if size > MAX_BYTES:
        raise ImageError(f"file is {size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
    return decode(path.read_bytes())


def decode(raw: bytes, max_bytes: int = MAX_BYTES):
    """Decode one encoded image (PNG, JPEG, WebP, ...) to at most WORK_SIDE pixels a side,
    refusing what is not safe or not an image: study predict's files and the served model's
    requests share this check (the served model opens every header first: `open_image`)."""
    return load(open_image(raw, max_bytes))


def open_image(raw: bytes, max_bytes: int = MAX_BYTES):
    """An image opened from its header only, its size checked and a JPEG's cheaper scale
    chosen (draft): `decoded_pixels` says what decoding it will cost, `load` decodes it."""
    import io

    from PIL import Image

    if not raw:
        raise ImageError("empty file")
    if len(raw) > max_bytes:
        raise ImageError(f"{len(raw) / 2**20:.1f} MB of image data; the limit is "
                         f"{max_bytes / 2**20:.0f} MB")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb guard at the study's cap
    with _one_line_errors():
        # Only formats that read nothing but the header in open (ICO, for one, decodes a
        # whole embedded PNG there, before any size check).
        image = Image.open(io.BytesIO(raw), formats=FORMATS)
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > MAX_PIXELS:
            raise ImageError(f"{width}x{height} pixels is over the {MAX_PIXELS:,}-pixel limit "
                             "(decompression bomb guard); resize it first")
        if max(width, height) > MAX_ASPECT * min(width, height):
            raise ImageError(f"{width}x{height} pixels is narrower than 1:{MAX_ASPECT} (each "
                             "row costs its own decoding); crop it to the object first")
        if image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale: the cost falls with it
            image.draft(image.mode if image.mode in ("L", "RGB") else "RGB",
                        (WORK_SIDE, WORK_SIDE))
    return image


def decoded_pixels(image) -> int:
    """Pixels that decoding this opened image will produce (a drafted JPEG's smaller size)."""
    return image.size[0] * image.size[1]


def load(image):
    """Decode an opened image, then shrink it (integer box reduction) to at most WORK_SIDE
    pixels a side and an ordinary mode, so that preprocess costs milliseconds whatever the
    size; images already that small are returned as decoded (their preprocessing unchanged)."""
    from PIL import Image

    with _one_line_errors():
        image.load()
        if image.mode not in ORDINARY_MODES:
            image = _ordinary(image)
        factor = -(-max(image.size) // WORK_SIDE)  # ceil: the long side ends <= WORK_SIDE
        if factor > 1:
            if image.mode in ("1", "P"):  # palettes and bits cannot be averaged: nearest
                image = image.resize((max(1, image.width // factor),
                                      max(1, image.height // factor)), Image.Resampling.NEAREST)
            else:
                image = image.reduce(factor)
    return image


def _ordinary(image):
    """A 16-bit, float or other colour space image as 8-bit L or RGB(A)."""
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray((np.clip(values, 0, top) * (255.0 / top)).astype(np.uint8))
    return image.convert("RGBA" if "A" in image.mode else "RGB")


@contextmanager
def _one_line_errors():
    """Whatever Pillow raises while opening or decoding becomes one ImageError line."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image of an accepted format (" + ", ".join(FORMATS)
                         + "); convert it to PNG or JPEG") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise ImageError(f"corrupt or truncated image ({_first_line(exc)}); "
                         "convert it to PNG or JPEG") from None
    except Exception as exc:  # a decoder's own failure on an odd file: never a traceback
        raise ImageError(f"cannot decode this image ({type(exc).__name__}: "
                         f"{_first_line(exc)}); convert it to an 8-bit RGB PNG or JPEG") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _object(image) -> tuple[np.ndarray, float, np.ndarray]:
    """A PIL image as float grayscale with a light object on a dark background, the
    background level and the mask of pixels that differ from it (the object, if any)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent = background
        image = Image.alpha_composite(white, rgba)
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    # Background: the median of the border pixels. A light background means a dark object on
    # it; Fashion-MNIST has light objects on black, so invert.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:
        gray = 255.0 - gray
    background = float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
    return gray, background, np.abs(gray - background) > TRIM_TOLERANCE * 255


def foreground_found(image) -> bool:
    """Whether preprocess finds an object in this PIL image: some pixel differs from the
    border's colour by more than TRIM_TOLERANCE (else it shrinks the whole frame)."""
    return bool(_object(image)[2].any())


def preprocess(image) -> np.ndarray:
    """Any PIL image -> (28, 28) uint8, light object on black, as in Fashion-MNIST."""
    from PIL import Image, ImageFilter

    gray, background, mask = _object(image)
    if mask.any():  # trim to the object's bounding box
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        gray = gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    gray = np.clip(gray - background, 0, 255)  # the background becomes black
    if gray.max() > 0:  # 99% of the training images peak at 254-255: stretch a pale photo to it
        gray = gray * (255.0 / gray.max())
    h, w = gray.shape
    scale = 28.0 / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray(gray.astype(np.uint8)).resize(new, RESAMPLE)
    small = small.filter(ImageFilter.UnsharpMask(radius=1, percent=50, threshold=2))
    # Centre the short edge; an odd margin goes left/top, as in the dataset's own images.
    canvas = np.zeros((28, 28), dtype=np.uint8)
    w, h = small.size
    top, left = (28 - h + 1) // 2, (28 - w + 1) // 2
    canvas[top:top + h, left:left + w] = np.asarray(small, dtype=np.uint8)
    return canvas


def probabilities(output: Any) -> np.ndarray:
    """A model's output as an (n, 10) array: the Classifier's DataFrame, or the bare array of
    a native model logged before it."""
    if hasattr(output, "columns") and CLASS_NAMES[0] in output.columns:
        return output[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    return np.asarray(output, dtype=np.float64)
