"""Classify ordinary image files with a logged model (the registered champion by default).

Each file is decoded and preprocessed into the Fashion-MNIST form by study.images (the one
implementation the served model uses too); the model's answer is read back the same way.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from study.config import CHAMPION_ALIAS, CLASS_NAMES, REGISTERED_MODEL
from study.errors import ConfigError
from study.images import IMAGE_INPUT, ImageError, load_image, preprocess, probabilities

DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}"


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    preprocessed: str | None = None


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


def classify(paths: list[str], model_uri: str = DEFAULT_MODEL_URI, top: int = 3,
             save_preprocessed: str | None = None, model=None) -> list[Prediction]:
    """Top-k classes per file; a bad file gets its error and the others are still classified."""
    results: list[Prediction] = []
    good: list[tuple[Prediction, np.ndarray]] = []
    out_dir = Path(save_preprocessed) if save_preprocessed else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    for path, small in prepared(paths):
        pred = Prediction(str(path))
        results.append(pred)
        if isinstance(small, ImageError):
            pred.error = str(small)
            continue
        if out_dir:
            from PIL import Image

            target = out_dir / f"{path.stem}_28x28.png"
            Image.fromarray(small).save(target)
            pred.preprocessed = str(target)
        good.append((pred, small))
    if good:
        model = model if model is not None else load_model(model_uri)
        proba = probabilities(model.predict(model_input(model, np.stack([g[1] for g in good]))))
        for (pred, _), p in zip(good, proba):
            order = np.argsort(-p)[:top]
            pred.top = [(CLASS_NAMES[i], float(p[i])) for i in order]
    return results


def request_body(paths: list[str], model_uri: str = DEFAULT_MODEL_URI) -> str:
    """The JSON a served model takes for these files: the files themselves, base64-encoded
    under "image" (the model preprocesses them as `classify` does), or for a model logged
    before the study's served models, the preprocessed pixels in its signature's layout."""
    import base64

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
                            "top": [{"class": c, "probability": round(p, 6)} for c, p in r.top]}
                           for r in results], indent=1)
    width = max([len(r.path) for r in results] + [4])
    lines = [f"{'file':{width}s}  top classes (probability)"]
    for r in results:
        if r.error:
            lines.append(f"{r.path:{width}s}  ERROR: {r.error}")
        else:
            lines.append(f"{r.path:{width}s}  " + "  ".join(f"{c} {p:.3f}" for c, p in r.top))
    return "\n".join(lines)

