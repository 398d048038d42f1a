"""The ensemble stage: weights for the final models chosen on validation probabilities only.

Greedy forward selection with replacement (Caruana et al., ICML 2004), the method behind
AutoGluon's WeightedEnsemble and auto-sklearn. Pure numpy: the selection function is given
validation probabilities and labels and nothing else, so it cannot see the test set; the
stage scores the chosen weights on the test set once, afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from study import config
from study.errors import ConfigError

NAME = "ensemble"  # its run's pipeline name and its YAML's stem


@dataclass(frozen=True)
class EnsembleConfig:
    enabled: bool
    rounds: int
    max_members: int
    exclude_families: tuple[str, ...]
    path: Path
    exclude_reducers: tuple[str, ...] = ()


def config_path() -> Path:
    """pipelines/ensemble.yaml of the pipelines folder in use, else the project's own."""
    own = config.pipelines_dir() / f"{NAME}.yaml"
    return own if own.is_file() else config.PIPELINES_DIR / f"{NAME}.yaml"


def load_config(path: Path | None = None) -> EnsembleConfig:
    path = path or config_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the ensemble settings ({str(exc).splitlines()[0]})"
                          ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with enabled, rounds, max_members")
    enabled, rounds, members = raw.get("enabled", True), raw.get("rounds"), raw.get("max_members")
    if not isinstance(enabled, bool):
        raise ConfigError(f"{path}: enabled must be true or false")
    for key, value in (("rounds", rounds), ("max_members", members)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{path}: {key} must be a positive integer, got {value!r}")
    excluded, reducers = raw.get("exclude_families") or [], raw.get("exclude_reducers") or []
    if not isinstance(excluded, list):
        raise ConfigError(f"{path}: exclude_families must be a list of family names")
    if not isinstance(reducers, list):
        raise ConfigError(f"{path}: exclude_reducers must be a list of reducers (none, pca, umap)")
    return EnsembleConfig(enabled, rounds, members, tuple(map(str, excluded)), path,
                          tuple(map(str, reducers)))


@dataclass
class Selection:
    """The chosen mix: weights sum to 1; `counts` says how often each model was added."""

    weights: dict[str, float]
    counts: dict[str, int]
    val_accuracy: float
    val_log_loss: float
    rounds_run: int
    best_round: int  # 1-based round whose mix was kept
    history: list[dict[str, Any]] = field(default_factory=list)  # per round: added, acc, loss
    ties: int = 0  # rounds where more than one model gave the best accuracy
    notes: list[str] = field(default_factory=list)


def accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(proba.argmax(axis=1) == labels))


def log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    picked = proba[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def rank_key(proba: np.ndarray, labels: np.ndarray, name: str) -> tuple[float, float, str]:
    """The order of the selection and of "best member" alike (smallest first): higher
    validation accuracy, then lower log loss, then the name."""
    return -accuracy(proba, labels), log_loss(proba, labels), name


def select(val_proba: dict[str, np.ndarray], y_val: np.ndarray, rounds: int,
           max_members: int) -> Selection:
    """Greedy forward selection with replacement on validation accuracy (log loss, then the
    name, break ties); the best round's mix is kept, so extra rounds never hurt validation."""
    names = sorted(val_proba)
    if not names:
        raise ValueError("no candidate models to select from")
    for name in names:
        if val_proba[name].shape != (len(y_val), config.N_CLASSES):
            raise ValueError(f"{name}: validation probabilities of shape "
                             f"{val_proba[name].shape}, expected ({len(y_val)}, {config.N_CLASSES})")
    probas = {n: np.asarray(val_proba[n], dtype=np.float64) for n in names}
    total = np.zeros((len(y_val), config.N_CLASSES))
    counts: dict[str, int] = {}
    history: list[dict[str, Any]] = []
    best: tuple[float, float, int, dict[str, int]] | None = None
    ties = 0
    for round_ in range(1, rounds + 1):
        pool = names if len(counts) < max_members else sorted(counts)
        scored = []
        for name in pool:
            scored.append(rank_key((total + probas[name]) / round_, y_val, name))
        scored.sort()
        neg_acc, loss, added = scored[0]
        ties += sum(s[0] == neg_acc for s in scored) > 1
        total += probas[added]
        counts[added] = counts.get(added, 0) + 1
        history.append({"round": round_, "added": added, "val_accuracy": -neg_acc,
                        "val_log_loss": loss})
        if best is None or (-neg_acc, -loss) > (best[0], -best[1]):
            best = (-neg_acc, loss, round_, dict(counts))
    acc, loss, best_round, kept = best
    n = sum(kept.values())
    selection = Selection({k: v / n for k, v in sorted(kept.items())}, dict(sorted(kept.items())),
                          acc, loss, rounds, best_round, history, ties)
    if len(names) == 1:
        selection.notes.append(f"one candidate model: the ensemble is {names[0]} alone")
    elif len(kept) == 1:
        selection.notes.append(f"selection put all weight on {next(iter(kept))}: no mix beat it "
                               "on validation, so the ensemble is that model alone")
    if ties:
        selection.notes.append(f"{ties} of {rounds} rounds had several models tied on "
                               "validation accuracy; log loss (then the name) decided")
    return selection


def combine(probas: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The weighted mean of the members' class probabilities."""
    total = sum(weights.values())
    return sum(w * np.asarray(probas[n], dtype=np.float64) for n, w in weights.items()) / total


def agreement(predictions: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Pairwise share of images on which two models predict the same class."""
    names = sorted(predictions)
    matrix = np.array([[float(np.mean(predictions[a] == predictions[b])) for b in names]
                       for a in names])
    return names, matrix


@dataclass
class Candidate:
    """One final model as the ensemble sees it."""

    name: str
    run_id: str
    family: str
    val_proba: np.ndarray | None
    test_proba: np.ndarray | None
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str = ""  # found from run_id by tracking, never read from a run's tag
    kind: str = ""  # keras (images in) or sklearn (flat pixels in)
    data_digest: str = ""  # the train/validation rows it saw
    reducer: str = ""


def usable(candidates: list[Candidate], n_val: int, n_test: int,
           excluded_families: tuple[str, ...] = (), data_digest: str = "",
           excluded_reducers: tuple[str, ...] = ()) -> tuple[list[Candidate], list[str]]:
    """The candidates with validation and test probabilities of the right shape for the same
    rows, and a one-line reason for each one left out."""
    kept, left_out = [], []
    for c in candidates:
        if c.family in excluded_families:
            left_out.append(f"{c.name}: family {c.family} is excluded in the ensemble settings")
        elif c.reducer and c.reducer in excluded_reducers:
            left_out.append(f"{c.name}: reducer {c.reducer} is excluded in the ensemble settings")
        elif c.val_proba is None:
            left_out.append(f"{c.name}: no validation probabilities logged (evaluation/"
                            "val_proba.npy); rerun that pipeline to include it")
        elif c.test_proba is None:
            left_out.append(f"{c.name}: no test probabilities logged (evaluation/test_proba.npy)")
        elif c.val_proba.shape != (n_val, config.N_CLASSES) or \
                c.test_proba.shape != (n_test, config.N_CLASSES):
            left_out.append(f"{c.name}: probabilities for {len(c.val_proba)} validation / "
                            f"{len(c.test_proba)} test rows, expected {n_val} / {n_test}")
        elif data_digest and c.data_digest and c.data_digest != data_digest:
            left_out.append(f"{c.name}: trained on other rows (data digest {c.data_digest}, "
                            f"this compare's {data_digest})")
        elif not c.model_uri:
            left_out.append(f"{c.name}: no logged model to load")
        else:
            kept.append(c)
    return kept, left_out
