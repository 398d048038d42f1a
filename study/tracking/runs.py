"""Writing the runs of a compare: the parent run, each pipeline's tuning run and trials, its
final run (params, metrics, curves, evaluation artifacts, model), failures, and small writes
(tags, rank, metrics, artifacts) that the stages after the pipelines add."""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from study import config, processes
from study.tracking.common import NETWORK, ROLE, now_ms, param, param_str
from study.tracking.environment import environment, pip_requirements
from study.tracking.queries import logged_model_name
from study.tracking.store import (ensure_experiment, experiment_name, mark_training,
                                  tuning_experiment_id)

@contextmanager
def compare_run(profile: str, seed: int, pipelines: list[str]) -> Iterator[str]:
    """The parent run: the `mlflow run` project run when there is one, else a new run."""
    import mlflow

    if os.environ.get("MLFLOW_RUN_ID"):
        # No run_id argument: start_run() then consumes MLFLOW_RUN_ID, so that later nested
        # start_run() calls create children instead of resuming the project run again.
        run = mlflow.start_run(run_name=f"compare-{profile}")
    else:
        mlflow.set_experiment(experiment_name())
        run = mlflow.start_run(run_name=f"compare-{profile}")
    with run:
        mark_training(run.info.experiment_id)  # `mlflow run` or set_experiment made it
        # host and pid let a later compare tell a run whose process died (SIGKILL, power cut)
        mlflow.set_tags({ROLE: "compare", "profile": profile, "host": processes.this_host(),
                         "pid": str(os.getpid())})
        # `mlflow run` already logged its entry-point parameters as given; keep those.
        given = mlflow.get_run(run.info.run_id).data.params
        mine = {"profile": profile, "seed": seed, "selected_pipelines": ",".join(pipelines)}
        mlflow.log_params({k: v for k, v in mine.items() if k not in given})
        mlflow.log_dict(environment(), "environment.json")
        try:
            yield run.info.run_id
        except KeyboardInterrupt:  # interrupted, not broken: the next compare resumes it
            mlflow.end_run("KILLED")
            raise


class TuningLog:
    """One tuning run per pipeline with a nested run per trial, written through the client API
    so it never disturbs the active (parent) run. Parallel workers attach to the run their
    compare created (run_id); a standalone `study tune` creates its own."""

    def __init__(self, pipeline: str, study_name: str, profile: str,
                 parent_run_id: str | None = None, run_id: str | None = None):
        import mlflow

        self.client = mlflow.MlflowClient()
        self.pipeline = pipeline
        if run_id:
            self.run_id = run_id
            self.experiment_id = self.client.get_run(run_id).info.experiment_id
            return
        if parent_run_id:
            self.experiment_id = tuning_experiment_id(parent_run_id)
        else:
            name = experiment_name()
            self.experiment_id = ensure_experiment(name + config.TUNING_SUFFIX)
        tags = {ROLE: "tuning", "pipeline": pipeline, "optuna_study": study_name,
                "profile": profile, "host": processes.this_host(), "pid": str(os.getpid())}
        if parent_run_id:
            tags["compare_run_id"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{pipeline}-tuning", tags=tags)
        self.run_id = run.info.run_id

    def log_trial(self, entry: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(
            self.experiment_id, run_name=f"{self.pipeline}-trial-{entry['number']}",
            tags={ROLE: "trial", "pipeline": self.pipeline, "mlflow.parentRunId": self.run_id,
                  "trial_state": entry["state"], "trial_number": str(entry["number"]),
                  "worker": processes.this_process(),
                  **({"trial_error": entry["error"]} if entry.get("error") else {})},
        )
        now = now_ms()
        metrics = [Metric("fit_seconds", float(entry["fit_seconds"]), now, 0)]
        if entry["val_accuracy"] is not None:
            metrics.append(Metric("val_accuracy", float(entry["val_accuracy"]), now, 0))
        metrics += [Metric("val_accuracy_epoch", float(v), now, int(step))
                    for step, v in entry["intermediate"].items()]
        params = [Param(k, param_str(v)) for k, v in entry["params"].items()]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def finish(self, result, status: str = "FINISHED") -> None:
        if result is not None:
            self.client.log_batch(self.run_id, params=[
                param("study_name", result.study_name),
                *(param(f"best.{k}", v) for k, v in result.best_params.items())])
            self.client.log_metric(self.run_id, "n_trials", result.n_trials)
            self.client.log_metric(self.run_id, "tuning_seconds", result.seconds)
            if result.best_value is not None:
                self.client.log_metric(self.run_id, "best_val_accuracy", result.best_value)
            if result.importances:
                self.client.log_dict(self.run_id, result.importances, "param_importances.json")
        self.client.set_terminated(self.run_id, status)


def log_final(*, spec, profile: str, seed: int, params: dict[str, Any], tune, fit, evaluation,
              val_accuracy: float, val_proba: np.ndarray, predict_seconds: float,
              n_params: int, model_bytes: int, x_example: np.ndarray, figures_dir: Path,
              data_digest: str = "", parent_run_id: str | None = None,
              started: float | None = None, data_rows: dict[str, int] | None = None,
              log_classifier) -> str:
    """The pipeline's final model as a child of the compare run (the active one, or
    parent_run_id from a pipeline worker process); returns its run id. The run starts at
    `started` (epoch seconds: when the pipeline's tuning began), so MLflow's Duration column
    is the pipeline's, and records its data splits as dataset inputs (`data_rows`). The
    figures already drawn in `figures_dir` go under evaluation/ with the scores; the model
    through `log_classifier` (serving.log_model: tracking does not know how models are served)."""
    import mlflow

    tags = {ROLE: "final", "pipeline": spec.name, "family": spec.family, "reducer": spec.reducer,
            "model": spec.model, "kind": fit.kind, "profile": profile,
            "optuna_study": tune.study_name, "pipeline_digest": spec.digest,
            "data_digest": data_digest, "code_digest": config.code_digest()}
    client = mlflow.MlflowClient()
    parent_run_id = parent_run_id or mlflow.active_run().info.run_id
    parent = client.get_run(parent_run_id).info
    # the compare's user: MlflowClient.create_run would record "unknown", and resume adopts
    # only final runs of the user its compare run was created by
    run_id = client.create_run(
        parent.experiment_id, run_name=spec.name,
        tags={**tags, "mlflow.parentRunId": parent_run_id, "mlflow.user": parent.user_id},
        start_time=int(1000 * (started or time.time()))).info.run_id
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None) as run:
        if data_rows:
            log_data_inputs(data_digest, data_rows)
        mlflow.log_params({"pipeline": spec.name, "reducer": spec.reducer, "model": spec.model,
                           "profile": profile, "seed": seed,
                           **{k: param_str(v) for k, v in params.items()},
                           **{f"best.{k}": param_str(v) for k, v in tune.best_params.items()}})
        mlflow.log_metrics(_final_metrics(tune, fit, evaluation, val_accuracy, predict_seconds,
                                          n_params, model_bytes))
        if evaluation.calibration is not None:
            mlflow.set_tag("calibration", evaluation.calibration.note)
        _log_fit_details(run.info.run_id, fit)
        log_evaluation(spec.name, evaluation, val_proba, figures_dir)
        info = log_model(fit, spec.reducer, x_example, evaluation.calibration,
                         log_classifier=log_classifier, name=logged_model_name(spec.name))
        mlflow.set_tag("model_uri", info.model_uri)
        return run.info.run_id


def _final_metrics(tune, fit, evaluation, val_accuracy: float, predict_seconds: float,
                   n_params: int, model_bytes: int) -> dict[str, float]:
    """A final run's metrics, in the study's one naming scheme."""
    metrics = {
        "val_accuracy": val_accuracy,
        "test_accuracy": evaluation.accuracy,
        "test_macro_f1": evaluation.macro_f1,
        "fit_seconds": fit.total_seconds,  # what it is built on included (FitResult)
        "own_fit_seconds": fit.fit_seconds,
        "predict_seconds": predict_seconds,
        "predict_ms_per_1000": 1000.0 * predict_seconds / len(evaluation.predictions) * 1000.0,
        "n_params": n_params,
        "model_bytes": model_bytes,
        "n_trials": tune.n_trials,
        "tuning_seconds": tune.seconds,
    }
    if evaluation.calibration is not None:  # temperature, NLL/Brier/ECE before and after
        metrics.update(evaluation.calibration.metrics)
    if tune.best_value is not None:
        metrics["best_trial_val_accuracy"] = tune.best_value
    if fit.best_epoch is not None:
        metrics["best_epoch"] = fit.best_epoch
        metrics["epochs_run"] = len(fit.history.get("loss", []))
    return metrics


def _log_fit_details(run_id: str, fit) -> None:
    """Per-epoch curves, the fit's notes and what it really used (e.g. its precision)."""
    import mlflow
    from mlflow.entities import Metric

    # Per-epoch curves under "epoch/": a plain "val_accuracy" series would make the UI show
    # the last epoch's value instead of the kept (best) epoch's as the run's val_accuracy.
    now = now_ms()
    curves = [Metric(f"epoch/{key}", float(v), now, step + 1)
              for key, values in fit.history.items() for step, v in enumerate(values)]
    if curves:
        mlflow.MlflowClient().log_batch(run_id, metrics=curves)
    if fit.notes:
        mlflow.set_tag("fit_notes", "; ".join(fit.notes))
    for key, value in fit.info.items():
        if isinstance(value, (int, float)):
            mlflow.log_metric(key, float(value))
        else:
            mlflow.set_tag(key, str(value))


def log_model(fit, reducer: str, x_example: np.ndarray, calibrated=None, *, log_classifier,
              name: str = "model"):
    """The final model, as the active run's model `name` (its pipeline's): a
    serving.Classifier (images or pixels in, probabilities and the class name out) around the
    native Keras or sklearn model, which is kept inside it with its own flavor and tensor
    signature (artifacts/network). The Classifier applies `calibrated`'s temperature (an
    evaluation.Calibrated; none: T=1) and carries its unsure threshold; the native model
    inside stays uncalibrated. The Classifier is logged by `log_classifier`
    (serving.log_model), handed in by the caller."""
    from mlflow.models import infer_signature

    from study.training import features

    signature = infer_signature(features(fit.kind, x_example),
                                fit.predict_proba(x_example).astype(np.float32))
    reqs = pip_requirements(fit.kind, reducer)
    with tempfile.TemporaryDirectory() as tmp:
        native = str(Path(tmp) / NETWORK)
        if fit.kind == "keras":
            import mlflow.keras

            from study.training import inference_copy

            mlflow.keras.save_model(inference_copy(fit.model), native, signature=signature,
                                    pip_requirements=reqs)
        else:
            import logging

            import mlflow.sklearn

            # its pickle caution is printed per model; the choice is explained above
            logging.getLogger("mlflow.sklearn").setLevel(logging.ERROR)
            # cloudpickle, not skops: skops refuses types it does not know (our SoftmaxSVC,
            # UMAP's internals). code_paths ships the study package those types live in.
            mlflow.sklearn.save_model(fit.model, native, signature=signature,
                                      pip_requirements=reqs, serialization_format="cloudpickle",
                                      code_paths=[str(config.PACKAGE_DIR)],
                                      pyfunc_predict_fn="predict_proba")
        scaling = calibrated.carried() if calibrated else {}
        return log_classifier({NETWORK: 1.0}, {NETWORK: native}, name=name, **scaling)


def log_data_inputs(data_digest: str, rows: dict[str, int]) -> None:
    """The data the active run used, as MLflow dataset inputs (the UI's Dataset column): the
    canonical Fashion-MNIST files, one input per split with its row count, named by the
    data digest (files and exact train/validation rows)."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    source = HTTPDatasetSource(config.DOWNLOAD_URL)
    for split, n in rows.items():
        dataset = MetaDataset(source, name=f"fashion-mnist-{split}", digest=data_digest[:16])
        mlflow.log_input(dataset, context=split, tags={"rows": str(n),
                                                       "data_digest": data_digest})


def log_evaluation(name: str, evaluation, val_proba: np.ndarray, folder: Path) -> None:
    """A final model's scores under evaluation/ of the active run: per-class report, test
    predictions and the validation and test class probabilities (float32, ~0.9 MB a model),
    from which the ensemble is chosen and rebuilt without retraining anything. They are the
    probabilities before temperature scaling (what the ensemble combines); the logged model
    serves them scaled by the run's `temperature` metric; reliability.json holds the test
    reliability diagram's bins before and after it. The files already in `folder` (its
    figures) go along."""
    import mlflow

    (folder / "classification_report.txt").write_text(evaluation.report_text)
    (folder / "classification_report.json").write_text(json.dumps(evaluation.report, indent=1))
    np.save(folder / "test_predictions.npy", evaluation.predictions.astype(np.int8))
    np.save(folder / "test_proba.npy", evaluation.proba.astype(np.float32))
    np.save(folder / "val_proba.npy", np.asarray(val_proba, dtype=np.float32))
    if evaluation.reliability:  # the reliability diagram's numbers
        (folder / "reliability.json").write_text(json.dumps(evaluation.reliability, indent=1))
    mlflow.log_artifacts(str(folder), artifact_path="evaluation")


def log_failure(spec, profile: str, trace: str) -> str:
    """A FAILED child run holding the traceback, so the failure is visible beside the results."""
    import mlflow

    tags = {ROLE: "failed", "pipeline": spec.name, "family": spec.family, "profile": profile}
    with mlflow.start_run(run_name=spec.name, nested=True, tags=tags) as run:
        mlflow.log_text(trace, "traceback.txt")
    mlflow.MlflowClient().set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def set_rank(run_id: str, rank: int) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, "rank", str(rank))
    client.log_metric(run_id, "rank", rank)


def log_metric(run_id: str, key: str, value: float) -> None:
    import mlflow

    mlflow.MlflowClient().log_metric(run_id, key, value)


def log_params(params: dict[str, Any]) -> None:
    """On the active (compare) run; keys `mlflow run` already logged as given are kept."""
    import mlflow

    given = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: param_str(v) for k, v in params.items() if k not in given})


def log_metrics(metrics: dict[str, float], run_id: str | None = None) -> None:
    """On the given run, else on the active (compare) run."""
    import mlflow

    if run_id is None:
        mlflow.log_metrics(metrics)
        return
    from mlflow.entities import Metric

    now = now_ms()
    mlflow.MlflowClient().log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_artifacts(folder, artifact_path: str, run_id: str | None = None) -> None:
    """A folder's files into the given run, else into the active (compare) run."""
    import mlflow

    if run_id is None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
    else:
        mlflow.MlflowClient().log_artifacts(run_id, str(folder), artifact_path)


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    """On the given run, else on the active one."""
    import mlflow

    if run_id:
        mlflow.MlflowClient().log_text(run_id, text, artifact_file)
    else:
        mlflow.log_text(text, artifact_file)
