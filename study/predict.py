"""Classify ordinary image files with a logged model (the registered champion by default).

A product photo is turned into the Fashion-MNIST form the way Zalando made the dataset
(github.com/zalandoresearch/fashion-mnist, "Get the data"): trim the edges that match the
corner colour, resize the longest edge to 28 pixels, sharpen, pad the short edge to 28 with the
object centred, make the object light on a dark background (invert when the background is
light), stretch the brightest pixel to 255 (as 99% of the training images), 8-bit grayscale,
then scale to [0, 1] like the training data. Transparent pixels count as background.
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from study import inputs
from study.config import CHAMPION_ALIAS, CLASS_NAMES, REGISTERED_MODEL
from study.errors import ConfigError

DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}"
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


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    preprocessed: str | None = None
    # why the answer is not to be taken at its word (study.inputs.uncertain), None when it is
    uncertain: str | None = None

    @property
    def probability(self) -> float | None:
        """The top class's probability (None for a file that could not be classified)."""
        return self.top[0][1] if self.top else None


def expand(paths: list[str]) -> list[Path]:
    """Files named directly, image files inside directories, and glob matches, in order."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        elif any(ch in raw for ch in "*?[") and not p.exists():
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=True) if Path(m).is_file())
            out += matches or [p]  # no match: reported as an unreadable path
        else:
            out.append(p)
    return out


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


def model_input(model, images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 -> pixels in [0, 1] in the layout the model takes: any for the
    study's served models (no input schema), else the one in a native model's signature."""
    x = images.astype(np.float32) / 255.0
    schema = model.metadata.get_input_schema()
    if schema is None:
        return x[..., None]
    try:
        shape = schema.inputs[0].shape
    except Exception:  # a column schema: the classical models' flat layout
        shape = (-1, 784)
    return x.reshape(len(x), *shape[1:]) if shape else x.reshape(len(x), -1)


def load_model(uri: str):
    from study import tracking

    return tracking.load_pyfunc(uri, "run `make compare` to register a champion, or pass "
                                     "--model-uri")


def prepared(paths: list[str]) -> list[tuple[Path, np.ndarray | ImageError]]:
    """Each named file with its 28x28 view, or the reason it has none."""
    out: list[tuple[Path, np.ndarray | ImageError]] = []
    for path in expand(paths):
        try:
            out.append((path, preprocess(load_image(path))))
        except ImageError as exc:
            out.append((path, exc))
    return out


def unsure_threshold(model) -> float:
    """The confidence under which the model's answers are flagged uncertain, as logged with
    it (0.0 for a model logged before the study chose one)."""
    meta = getattr(model.metadata, "metadata", None) or {}
    return float(meta.get("unsure_threshold", 0.0))


def classify(paths: list[str], model_uri: str = DEFAULT_MODEL_URI, top: int = 3,
             save_preprocessed: str | None = None, model=None) -> list[Prediction]:
    """Top-k classes per file, each answer flagged when uncertain (`inputs.uncertain`: the
    image unlike the training data, or its top probability under the model's unsure
    threshold); a bad file gets its error and the others are still classified."""
    results: list[Prediction] = []
    good: list[tuple[Prediction, np.ndarray, bool]] = []
    out_dir = Path(save_preprocessed) if save_preprocessed else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    for path in expand(paths):
        pred = Prediction(str(path))
        results.append(pred)
        try:
            image = load_image(path)
            small, found = preprocess(image), foreground_found(image)
        except ImageError as exc:
            pred.error = str(exc)
            continue
        if out_dir:
            from PIL import Image

            target = out_dir / f"{path.stem}_28x28.png"
            Image.fromarray(small).save(target)
            pred.preprocessed = str(target)
        good.append((pred, small, found))
    if good:
        model = model if model is not None else load_model(model_uri)
        from study.serving import probabilities

        images = np.stack([g[1] for g in good])
        proba = probabilities(model.predict(model_input(model, images)))
        why = inputs.uncertain_all(images, proba, unsure_threshold(model), [g[2] for g in good])
        for (pred, _, _), p, reason in zip(good, proba, why):
            order = np.argsort(-p)[:top]
            pred.top = [(CLASS_NAMES[i], float(p[i])) for i in order]
            pred.uncertain = reason
    return results


def request_body(paths: list[str], model_uri: str = DEFAULT_MODEL_URI) -> str:
    """The JSON a served model takes for these files: the files themselves, base64-encoded
    under "image" (the model preprocesses them as `classify` does), or for a model logged
    before the study's served models, the preprocessed pixels in its signature's layout."""
    import base64

    from study.serving import IMAGE_INPUT

    images, files = [], []
    for path, small in prepared(paths):
        if isinstance(small, ImageError):
            raise ConfigError(f"{path}: {small}")
        images.append(small)
        files.append(path)
    if not images:
        raise ConfigError("no image files given")
    model = load_model(model_uri)
    if model.metadata.get_input_schema() is None:
        encoded = [base64.b64encode(f.read_bytes()).decode("ascii") for f in files]
        return json.dumps({"inputs": {IMAGE_INPUT: encoded}})
    return json.dumps({"inputs": np.round(model_input(model, np.stack(images)), 5).tolist()})


def render(results: list[Prediction], as_json: bool = False) -> str:
    if as_json:
        return json.dumps([{"path": r.path, "error": r.error, "preprocessed": r.preprocessed,
                            "top": [{"class": c, "probability": round(p, 6)} for c, p in r.top],
                            "top_probability": None if r.probability is None
                            else round(r.probability, 6), "uncertain": r.uncertain}
                           for r in results], indent=1)
    width = max([len(r.path) for r in results] + [4])
    lines = [f"{'file':{width}s}  top classes (probability)"]
    for r in results:
        if r.error:
            lines.append(f"{r.path:{width}s}  ERROR: {r.error}")
        else:
            lines.append(f"{r.path:{width}s}  " + "  ".join(f"{c} {p:.3f}" for c, p in r.top)
                         + (f"  uncertain: {r.uncertain}" if r.uncertain else ""))
    return "\n".join(lines)

