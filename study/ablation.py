"""The seed report's MLP experiments (section 4) as one ablation: one MLflow run per setting.

Experiments, in order, each starting from the best setting found so far (chosen on validation
accuracy only; test accuracy is reported, never used to choose):
  1. learning rate x mini-batch size (SGD, momentum 0.9)
  2. L2 strength, at the best learning rate (batch 128, the seed's)
  3. hidden activation
  4. topology at about the same parameter count
"""

from __future__ import annotations

import logging
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from study import config, data, pipelines, tables, training
from study.errors import ConfigError
from study.figures import plot_validation_curves

logger = logging.getLogger(__name__)

EXPERIMENT = "ablation"
BASE = {"hidden": "50x50", "activation": "tanh", "learning_rate": 1.2e-2, "momentum": 0.9,
        "l2": 1e-4, "batch_size": 128, "precision": "float32"}
# Epoch caps per profile; early stopping (patience 3, best weights kept) usually ends sooner.
BUDGET = {"smoke": {"epochs": 2, "patience": 2}, "quick": {"epochs": 8, "patience": 3},
          "full": {"epochs": 100, "patience": 8}}


@dataclass
class Experiment:
    key: str
    title: str
    vary: str  # the parameter this experiment varies (the figure's legend)
    settings: list[dict[str, Any]]


def experiments() -> list[Experiment]:
    """The four experiments, in order; 2-4 start from the best setting so far (run())."""
    return [
        Experiment("lr_batch", "Learning rate and mini-batch size", "learning_rate, batch_size",
                   [{"learning_rate": lr, "batch_size": bs}
                    for lr in (1e-3, 1.2e-2) for bs in (32, 128, 512)]),
        Experiment("l2", "L2 regularisation", "l2", [{"l2": v} for v in (0.0, 1e-5, 1e-4, 1e-3)]),
        Experiment("activation", "Hidden activation", "activation",
                   [{"activation": a} for a in ("tanh", "sigmoid", "relu", "leaky_relu")]),
        Experiment("topology", "Topology (about 40k parameters each)", "hidden",
                   [{"hidden": h} for h in ("50x50", "50x100", "100x50", "25x50", "50x25", "53",
                                            "47x47x47")]),
    ]


def label(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in setting.items())


def run(profile: config.Profile | str = config.DEFAULT_PROFILE, seed: int = config.SEED,
        data_dir: str | None = None, compare_run_id: str | None = "latest") -> dict[str, Any]:
    """Train every setting, log each as a run of the `ablation` experiment; return the table.
    The ablation belongs to a compare (its report shows it): `compare_run_id`, by default
    the latest finished compare in the store, None for none."""
    from study import tracking

    profile = config.profile(profile)
    tracking.configure()
    splits = data.make_splits(data.load(data_dir), profile)
    spec = pipelines.load("mlp_seed")
    compare_id = None
    if compare_run_id:
        try:
            compare_id = tracking.find_compare_run(compare_run_id).info.run_id
        except ConfigError:
            if compare_run_id != "latest":  # named on purpose: it must exist
                raise
    parent_id = tracking.start_ablation(EXPERIMENT, profile.name, compare_id)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[str, dict[str, list[float]]]]] = {}
    best: dict[str, Any] = {"learning_rate": BASE["learning_rate"],
                            "batch_size": BASE["batch_size"]}
    best_run = None
    try:
        for exp in experiments():
            found = [_run_setting(spec, exp, i, setting, best, BUDGET[profile.name], splits,
                                  seed, parent_id)
                     for i, setting in enumerate(exp.settings, start=1)]
            rows += found
            curves[exp.key] = [(r["setting"], r.pop("history")) for r in found]
            winner = max(found, key=lambda r: r["best_val_accuracy"])  # validation only
            # the full setting the winner was trained with (experiments 2-4 train at the
            # seed's batch 128, whatever batch won experiment 1), so "best" was trained
            best, best_run = dict(winner["params"]), winner["run_id"]
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for exp in experiments():
                plot_validation_curves(dict(curves.get(exp.key, [])), exp.title,
                                       tmp / f"ablation_{exp.key}.png")
            (tmp / "ablation.md").write_text(render_markdown(rows) + "\n")
            (tmp / "ablation.json").write_text(json.dumps(
                {"rows": rows, "best": best, "best_run_id": best_run}, indent=1))
            tracking.finish_ablation(parent_id, tmp, seconds)
    except BaseException:
        tracking.finish_ablation(parent_id, None, None, status="FAILED")
        raise
    return {"rows": rows, "best": best, "best_run_id": best_run, "seconds": seconds,
            "run_id": parent_id, "compare_run_id": compare_id}


def _run_setting(spec, exp: Experiment, i: int, setting: dict[str, Any], best: dict[str, Any],
                 budget: dict[str, Any], splits, seed: int, parent_id: str) -> dict[str, Any]:
    """Train one setting from the best so far, score it, log it as a run; its table row
    (with its curves under "history", which the caller takes out)."""
    from study import tracking

    params = {**BASE, **best_overrides(exp.key, best), **setting, **budget}
    if exp.key != "lr_batch":
        params["batch_size"] = BASE["batch_size"]
    # what is trained, without the epoch budget: the setting a winner carries on
    trained = {k: v for k, v in params.items() if k not in budget}
    fit = training.fit(spec, params, splits.x_train, splits.y_train, splits.x_val,
                       splits.y_val, seed)
    proba = fit.predict_proba(splits.x_test)
    test_acc = float(np.mean(proba.argmax(axis=1) == splits.y_test))
    best_val = float(max(fit.history["val_accuracy"]))
    row = {"experiment": exp.key, "setting": label(setting), "params": trained,
           "best_val_accuracy": best_val, "test_accuracy": test_acc,
           "epochs": len(fit.history["loss"]), "best_epoch": fit.best_epoch,
           "fit_seconds": fit.fit_seconds}
    row["run_id"] = tracking.log_ablation_setting(
        parent_id, f"{exp.key}: {label(setting)}", params, row, fit.history)
    logger.info(f"[ablation] {exp.key} {i}/{len(exp.settings)} {label(setting)}: "
                f"val {best_val:.4f} test {test_acc:.4f} epochs {row['epochs']} "
                f"({fit.fit_seconds:.1f}s)")
    row["history"] = fit.history
    return row


def best_overrides(key: str, best: dict[str, Any]) -> dict[str, Any]:
    """Experiment 1 starts from the seed's setting; later ones from the best so far."""
    return {} if key == "lr_batch" else {k: v for k, v in best.items() if k != "batch_size"}


def render_markdown(rows: list[dict[str, Any]]) -> str:
    return tables.markdown(
        ["experiment", "setting", "best val acc", "test acc", "epochs (best)", "fit s"],
        [[r["experiment"], r["setting"], f"{r['best_val_accuracy']:.4f}", f"{r['test_accuracy']:.4f}",
          f"{r['epochs']} ({r['best_epoch']})", f"{r['fit_seconds']:.1f}"] for r in rows],
        numeric={2, 3, 4, 5})
