"""The ensemble stage of a compare, and the MLflow model that serves the ensemble.

Reads every final model's logged validation and test probabilities (nothing is retrained or
re-predicted), chooses weights on validation (study.ensemble.select), scores them on the test
set once and logs a final run like the others (family `ensemble`). Its model is a pyfunc that
holds its members' logged models and returns the weighted mean of their probabilities, so
`study predict` and `mlflow models serve` use it like any single model. Run by compare after
the pipelines, and by report for a compare that has none (an interrupted or older one).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from study import config, ensemble, serving, tracking
from study.ensemble import NAME

VERIFY_ROWS = 1000  # test images predicted again through the logged model, as a check


# Ensembles logged before serving.Classifier name this class in their pickle; it loads them.
WeightedEnsemble = serving.Classifier


@dataclass
class StageResult:
    run_id: str | None  # the ensemble's final run, or None when there is none to build
    message: str  # one line for the console and the report
    left_out: list[str] = field(default_factory=list)


def existing_run(parent_id: str, runs: list[dict] | None = None) -> str | None:
    """The compare's ensemble run, if any (`runs`: its final runs, when already fetched)."""
    for run in tracking.final_runs(parent_id) if runs is None else runs:
        if run.get("pipeline") == NAME:
            return run["run_id"]
    return None


def candidates(runs: list[dict]) -> list[ensemble.Candidate]:
    """Every final model among a compare's final runs, with its logged probabilities (None
    when missing)."""
    out = []
    for run in runs:
        if run.get("pipeline") == NAME:
            continue
        out.append(ensemble.Candidate(
            run["pipeline"], run["run_id"], run.get("family", ""),
            tracking.load_npy(run["run_id"], "evaluation/val_proba.npy"),
            tracking.load_npy(run["run_id"], "evaluation/test_proba.npy"),
            run["metrics"], run.get("model_uri", ""), run.get("kind", ""),
            run.get("data_digest", "")))
    return out


def run(parent_id: str, profile: str, y_val: np.ndarray, y_test: np.ndarray,
        x_test: np.ndarray, data_digest: str, log=print) -> StageResult:
    """Build, score and log the ensemble of one compare (once: an existing one is kept)."""
    settings = ensemble.load_config()
    if not settings.enabled:
        return StageResult(None, f"ensemble: off ({settings.path})")
    runs = tracking.final_runs(parent_id)
    found = existing_run(parent_id, runs)
    if found:
        return StageResult(found, f"ensemble: run {found} exists; kept")
    started = time.time()
    kept, left_out = ensemble.usable(candidates(runs), len(y_val), len(y_test),
                                     settings.exclude_families, data_digest)
    for reason in left_out:
        log(f"ensemble: left out {reason}")
    if len(kept) < 2:
        message = (f"ensemble: not built, {len(kept)} usable model(s); it needs two "
                   "(failed or excluded models are left out)")
        tracking.set_tags(parent_id, {"ensemble": message})
        return StageResult(None, message, left_out)
    clock = time.perf_counter()
    # Only validation data goes into the selection: the test set cannot influence the weights.
    selection = ensemble.select({c.name: c.val_proba for c in kept}, y_val, settings.rounds,
                                settings.max_members)
    selection_seconds = time.perf_counter() - clock
    by_name = {c.name: c for c in kept}
    members = [by_name[n] for n in selection.weights]
    val_proba = ensemble.combine({c.name: c.val_proba for c in members}, selection.weights)
    test_proba = ensemble.combine({c.name: c.test_proba for c in members}, selection.weights)
    from study.evaluation import evaluate

    evaluation = evaluate(y_test, test_proba)  # the one look at the test set
    best = max(kept, key=lambda c: (ensemble.accuracy(c.val_proba, y_val), c.name))
    best_val = ensemble.accuracy(best.val_proba, y_val)
    best_test = ensemble.accuracy(best.test_proba, y_test)
    names, agree = ensemble.agreement({c.name: c.test_proba.argmax(axis=1) for c in members})
    summary = {
        "weights": selection.weights, "counts": selection.counts, "rounds": settings.rounds,
        "max_members": settings.max_members, "best_round": selection.best_round,
        "history": selection.history, "notes": selection.notes, "left_out": left_out,
        "candidates": sorted(by_name), "best_member": best.name,
        "best_member_val_accuracy": best_val, "best_member_test_accuracy": best_test,
        "member_val_accuracy": {c.name: ensemble.accuracy(c.val_proba, y_val) for c in members},
        "member_test_accuracy": {c.name: ensemble.accuracy(c.test_proba, y_test) for c in members},
        "agreement_test": {"models": names, "matrix": agree.round(4).tolist()},
        "selection_seconds": selection_seconds,
    }
    run_id = _log(parent_id, profile, data_digest, members, selection, summary, evaluation,
                  val_proba, y_val, x_test, started)
    mix = ", ".join(f"{n} {w:.2f}" for n, w in selection.weights.items())
    message = (f"ensemble: {mix} -> val {selection.val_accuracy:.4f} "
               f"(best member {best.name} {best_val:.4f}), test {evaluation.accuracy:.4f} "
               f"({100 * (evaluation.accuracy - best_test):+.2f} points over {best.name})"
               + "".join(f"; {note}" for note in selection.notes))
    return StageResult(run_id, message, left_out)


def _log(parent_id, profile, data_digest, members, selection, summary, evaluation, val_proba,
         y_val, x_test, started) -> str:
    """The ensemble's final run, a child of the compare run, spanning the stage's work."""
    import hashlib

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    digest = hashlib.sha256(json.dumps([summary["weights"], summary["rounds"],
                                        summary["max_members"]], sort_keys=True).encode())
    tags = {tracking.ROLE: "final", "pipeline": NAME, "family": "ensemble", "reducer": "-",
            "model": "weighted_ensemble", "kind": "pyfunc", "profile": profile,
            "data_digest": data_digest, "pipeline_digest": digest.hexdigest()[:10],
            "code_digest": config.code_digest(),
            "mlflow.parentRunId": parent_id}
    if selection.notes:
        tags["fit_notes"] = "; ".join(selection.notes)
    run_id = client.create_run(parent.info.experiment_id, start_time=int(started * 1000),
                               run_name=NAME, tags=tags).info.run_id
    try:
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            # it chose on validation rows and was scored on the test set
            tracking.log_data_inputs(data_digest, {"validation": len(y_val),
                                                   "test": len(x_test)})
            _log_contents(members, selection, summary, evaluation, val_proba, y_val, x_test)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _log_contents(members, selection, summary, evaluation, val_proba, y_val, x_test) -> None:
    metrics = lambda key: sum(c.metrics.get(key, 0.0) for c in members)  # noqa: E731
    mlflow.log_params({
        "pipeline": NAME, "members": ",".join(selection.weights),
        **{f"weight.{n}": f"{w:.4f}" for n, w in selection.weights.items()},
        "rounds": summary["rounds"], "max_members": summary["max_members"],
        "best_round": selection.best_round, "selected_on": "validation accuracy, log loss",
        "left_out": "; ".join(summary["left_out"])[:6000] or "-"})
    mlflow.log_metrics({
        "val_accuracy": selection.val_accuracy, "val_log_loss": selection.val_log_loss,
        "test_accuracy": evaluation.accuracy, "test_macro_f1": evaluation.macro_f1,
        # what the ensemble costs to fit is what its members cost
        "fit_seconds": metrics("fit_seconds"), "tuning_seconds": metrics("tuning_seconds"),
        "selection_seconds": summary["selection_seconds"],
        "n_params": metrics("n_params"), "model_bytes": metrics("model_bytes"),
        "n_trials": 0, "n_members": len(selection.weights),
        "best_member_val_accuracy": summary["best_member_val_accuracy"],
        "best_member_test_accuracy": summary["best_member_test_accuracy"],
        "val_gain": selection.val_accuracy - summary["best_member_val_accuracy"],
        "test_gain": evaluation.accuracy - summary["best_member_test_accuracy"]})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "selection.json").write_text(json.dumps(summary, indent=1))
        mlflow.log_artifact(str(Path(tmp) / "selection.json"), artifact_path="ensemble")
    with tempfile.TemporaryDirectory() as tmp:
        tracking.log_evaluation(NAME, evaluation, val_proba, Path(tmp))
    info = log_model(selection.weights, {c.name: c.model_uri for c in members})
    mlflow.set_tag("model_uri", info.model_uri)
    _verify(info.model_uri, evaluation.proba, x_test)


def log_model(weights: dict[str, float], model_uris: dict[str, str]):
    """Log the ensemble into the active run (as "model"): a serving.Classifier over the
    members' native models, fetched from their logged models by MLflow (not rebuilt)."""
    from mlflow.artifacts import download_artifacts

    keys = {name: f"member_{i}_{name}" for i, name in enumerate(weights)}
    with tempfile.TemporaryDirectory() as tmp:
        natives = {keys[n]: serving.native_model_path(
            download_artifacts(artifact_uri=uri, dst_path=str(Path(tmp) / keys[n])))
            for n, uri in model_uris.items()}
        return serving.log_model({keys[n]: w for n, w in weights.items()}, natives)


def _verify(model_uri: str, test_proba: np.ndarray, x_test: np.ndarray) -> None:
    """Load the logged ensemble back and predict VERIFY_ROWS test images: they must match the
    probabilities that were scored (so serving is the model on the leaderboard), and the time
    taken is the ensemble's prediction cost."""
    from study import data

    model = mlflow.pyfunc.load_model(model_uri)  # (loading traces the networks' graph)
    x = data.as_image(x_test[:VERIFY_ROWS])
    clock = time.perf_counter()
    served = serving.probabilities(model.predict(x))
    seconds = time.perf_counter() - clock
    scored = test_proba[:len(x)]
    gap = float(np.abs(served - scored).max())
    flips = float(np.mean(served.argmax(axis=1) != scored.argmax(axis=1)))
    mlflow.log_metrics({"predict_seconds": seconds * len(test_proba) / len(x),
                        "predict_ms_per_1000": 1000.0 * seconds / len(x) * 1000.0,
                        "served_max_abs_diff": gap})
    # bf16 networks may differ in the last bits with another batch size; a real mismatch
    # (wrong member, weights or TTA) moves probabilities by far more than this
    if gap > 0.02 or flips > 0.002:
        raise RuntimeError(f"the logged ensemble disagrees with the scored one: probabilities "
                           f"differ by up to {gap:.2g}, classes on {flips:.1%} of {len(x)} "
                           "test images")
