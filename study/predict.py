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

from study import inputs
from study.config import CHAMPION_ALIAS, CLASS_NAMES, REGISTERED_MODEL
from study.errors import ConfigError
from study.images import (IMAGE_INPUT, ImageError, foreground_found, load_image, preprocess,
                          probabilities)

DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}"


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

