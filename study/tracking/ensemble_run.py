"""The ensemble's final run: its weights, scores, selection record and the pyfunc model
over its members' logged models (fetched by MLflow, not rebuilt), checked by loading it
back and predicting test images again."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from study import config, figures
from study.ensemble import NAME
from study.evaluation import scaled, timed_proba
from study.images import probabilities
from study.tracking.common import ROLE, native_model_path
from study.tracking.queries import logged_model_name
from study.tracking.runs import log_data_inputs, log_evaluation

VERIFY_ROWS = 1000  # test images predicted again through the pyfunc interface, as a check


def log_ensemble(parent_id, profile, data_digest, members, selection, summary, evaluation,
                 val_proba, y_val, x_test, started, *, log_classifier) -> str:
    """The ensemble's final run, a child of the compare run, spanning the stage's work; its
    model logged by `log_classifier` (serving.log_model)."""
    import hashlib

    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    digest = hashlib.sha256(json.dumps([summary["weights"], summary["rounds"],
                                        summary["max_members"]], sort_keys=True).encode())
    tags = {ROLE: "final", "pipeline": NAME, "family": "ensemble", "reducer": "-",
            "model": "weighted_ensemble", "kind": "pyfunc", "profile": profile,
            "data_digest": data_digest, "pipeline_digest": digest.hexdigest()[:10],
            "code_digest": config.code_digest(),
            "mlflow.parentRunId": parent_id, "mlflow.user": parent.info.user_id}
    if selection.notes:
        tags["fit_notes"] = "; ".join(selection.notes)
    run_id = client.create_run(parent.info.experiment_id, start_time=int(started * 1000),
                               run_name=NAME, tags=tags).info.run_id
    try:
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            # it chose on validation rows and was scored on the test set
            log_data_inputs(data_digest, {"validation": len(y_val),
                                                   "test": len(x_test)})
            _log_contents(members, selection, summary, evaluation, val_proba, y_val, x_test,
                          log_classifier)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _log_contents(members, selection, summary, evaluation, val_proba, y_val, x_test,
                  log_classifier) -> None:
    """Params, metrics, the selection record, evaluation artifacts and the checked model."""
    import mlflow

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
        **cost_of([c.run_id for c in members]),
        "selection_seconds": summary["selection_seconds"],
        "n_params": metrics("n_params"), "model_bytes": metrics("model_bytes"),
        "n_trials": 0, "n_members": len(selection.weights),
        "best_member_val_accuracy": summary["best_member_val_accuracy"],
        "best_member_test_accuracy": summary["best_member_test_accuracy"],
        "val_gain": selection.val_accuracy - summary["best_member_val_accuracy"],
        "test_gain": evaluation.accuracy - summary["best_member_test_accuracy"],
        **(evaluation.calibration.metrics if evaluation.calibration else {})})
    if evaluation.calibration:
        mlflow.set_tag("calibration", evaluation.calibration.note)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "selection.json").write_text(json.dumps(summary, indent=1))
        mlflow.log_artifact(str(Path(tmp) / "selection.json"), artifact_path="ensemble")
    with tempfile.TemporaryDirectory() as tmp:
        figures.final_model_figures(NAME, evaluation, {}, Path(tmp))
        log_evaluation(NAME, evaluation, val_proba, Path(tmp))
    info = log_ensemble_model(selection.weights, {c.name: c.model_uri for c in members},
                              evaluation.calibration, log_classifier=log_classifier,
                              name=logged_model_name(NAME))
    mlflow.set_tag("model_uri", info.model_uri)
    temperature = evaluation.calibration.temperature if evaluation.calibration else 1.0
    _verify(info.model_uri, scaled(evaluation.proba, temperature), x_test)


def cost_of(run_ids: list[str]) -> dict[str, float]:
    """fit_seconds and tuning_seconds of a model made of these final runs (the ensemble's
    members): the own fit of every distinct model underneath, the runs and what each is built
    on (a specialist's generalist, its `generalist_run_id` tag), each counted once."""
    import mlflow

    client, found, todo = mlflow.MlflowClient(), {}, list(run_ids)
    while todo:
        run_id = todo.pop()
        if run_id in found:
            continue
        run = client.get_run(run_id)
        found[run_id] = run.data.metrics
        if run.data.tags.get("generalist_run_id"):
            todo.append(run.data.tags["generalist_run_id"])
    # runs logged before own_fit_seconds: their fit_seconds was their own fit
    return {"fit_seconds": sum(m.get("own_fit_seconds", m.get("fit_seconds", 0.0))
                               for m in found.values()),
            "tuning_seconds": sum(m.get("tuning_seconds", 0.0) for m in found.values())}


def log_ensemble_model(weights: dict[str, float], model_uris: dict[str, str],
                       calibrated=None, *, log_classifier, name: str = "model"):
    """Log the ensemble into the active run (as `name`, its pipeline's): a
    serving.Classifier over the members' native models, fetched from their logged models by
    MLflow (not rebuilt), with the ensemble's own temperature and unsure threshold
    (`calibrated`, an evaluation.Calibrated; none: T=1), applied to the weighted mean of the
    uncalibrated members; logged by `log_classifier` (serving.log_model)."""
    from mlflow.artifacts import download_artifacts

    keys = {name: f"member_{i}_{name}" for i, name in enumerate(weights)}
    with tempfile.TemporaryDirectory() as tmp:
        natives = {keys[n]: native_model_path(
            download_artifacts(artifact_uri=uri, dst_path=str(Path(tmp) / keys[n])))
            for n, uri in model_uris.items()}
        scaling = calibrated.carried() if calibrated else {}
        return log_classifier({keys[n]: w for n, w in weights.items()}, natives, name=name,
                              **scaling)


def _verify(model_uri: str, test_proba: np.ndarray, x_test: np.ndarray) -> None:
    """Load the logged ensemble back: its predictions (VERIFY_ROWS test images through the
    pyfunc, every test image through its Classifier) must match the probabilities that were
    scored (`test_proba`, scaled by its temperature), so serving is the model on the
    leaderboard. The second is timed as every final
    model's prediction is (evaluation.timed_proba)."""
    from study import data

    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)  # (loading traces the networks' graph)
    served = probabilities(model.predict(data.as_image(x_test[:VERIFY_ROWS])))
    classifier = model.unwrap_python_model()  # (n, 28, 28) pixels in, as the pyfunc feeds it
    every, seconds = timed_proba(
        lambda images: classifier.predict_proba(data.as_image(images)[..., 0]), x_test)
    gap = max(float(np.abs(served - test_proba[:len(served)]).max()),
              float(np.abs(every - test_proba).max()))
    flips = float(np.mean(every.argmax(axis=1) != test_proba.argmax(axis=1)))
    mlflow.log_metrics({"predict_seconds": seconds,
                        "predict_ms_per_1000": 1000.0 * seconds / len(x_test) * 1000.0,
                        "served_max_abs_diff": gap})
    # bf16 networks may differ in the last bits with another batch size; a real mismatch
    # (wrong member, weights or TTA) moves probabilities by far more than this
    if gap > 0.02 or flips > 0.002:
        raise RuntimeError(f"the logged ensemble disagrees with the scored one: probabilities "
                           f"differ by up to {gap:.2g}, classes on {flips:.1%} of {len(x_test)} "
                           "test images")
