"""Everything MLflow: the store, runs, params, metrics, artifacts, models and the registry.

Layout of one compare invocation:
  experiment E (default "fashion-mnist", or the one `mlflow run` chose)
    compare run (parent)                  role=compare
      <pipeline> final run, one each      role=final   <- the leaderboard
  experiment "E-tuning"
    <pipeline> tuning run                 role=tuning  (tag compare_run_id links back)
      trial runs, nested                  role=trial
Tuning lives in its own experiment so the leaderboard's run list stays one row per model.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from study import config, processes
from study.errors import ConfigError, RegistryError, first_line

ROLE = "role"  # tag key: compare | final | tuning | trial


def configure() -> str:
    """Point MLflow at the configured store and check that it (and the registry) answers."""
    import mlflow

    uri = config.tracking_uri()
    mlflow.set_tracking_uri(uri)
    # a progress bar per downloaded artifact buries the compare's own progress lines
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    stores = {uri: "MLFLOW_TRACKING_URI"}
    stores.setdefault(mlflow.get_registry_uri(), "MLFLOW_REGISTRY_URI")
    for store, variable in stores.items():
        try:
            if store.startswith(("http://", "https://")):
                # the client retries a dead server for minutes; one short probe says it at once
                import requests

                requests.get(store.rstrip("/") + "/health", timeout=10).raise_for_status()
                if variable == "MLFLOW_TRACKING_URI":
                    _check_login(store)
            elif variable == "MLFLOW_TRACKING_URI":
                with first_use_lock(store):  # the first client creates (migrates) the store
                    mlflow.MlflowClient().search_experiments(max_results=1)
        except ConfigError:
            raise
        except Exception as exc:  # connection refused, bad scheme, unreadable db...
            first = first_line(exc)
            what = "tracking store" if variable == "MLFLOW_TRACKING_URI" else "model registry"
            raise ConfigError(f"cannot reach MLflow {what} {config.redact(store)} "
                              f"({config.redact(first)[:200]}); "
                              f"check {variable} or start the server") from None
    return uri


USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def _check_login(uri: str) -> None:
    """A server with MLflow's basic-auth app answers /health to anyone; one authenticated call
    tells a missing or wrong login at once, in a line, instead of at the first run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as exc:
        if exc.error_code != "UNAUTHENTICATED":
            raise
        user = os.environ.get(USERNAME_ENV)
        if not user:
            raise ConfigError(f"the tracking server {config.redact(uri)} requires a login (HTTP "
                              f"401); fix: set {USERNAME_ENV} and {PASSWORD_ENV} in the "
                              "environment") from None
        raise ConfigError(f"the tracking server {config.redact(uri)} refused user {user!r} "
                          "(HTTP 401: unknown user or wrong password); fix: check "
                          f"{USERNAME_ENV} and {PASSWORD_ENV}") from None


def experiment_name() -> str:
    """The experiment a compare logs to outside `mlflow run`."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", config.EXPERIMENT_NAME)


def check_can_write() -> None:
    """Fail before any work when the tracking server will not let this user write: a user
    with READ permission may browse the leaderboard but not start a compare. Probed with a
    harmless experiment tag (EDIT permission), and a tag on the registered model the champion
    goes to, when both exist; local stores have no permissions to probe."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    client = mlflow.MlflowClient()
    if os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` created the run: it could write
        exp = client.get_experiment(client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id)
    else:
        exp = client.get_experiment_by_name(experiment_name())
    user = os.environ.get(USERNAME_ENV, "(anonymous)")
    probes = []
    if exp is not None:
        probes.append((f"experiment {exp.name!r}",
                       lambda: client.set_experiment_tag(exp.experiment_id, "study.writer", user)))
    try:
        client.get_registered_model(config.REGISTERED_MODEL)
        probes.append((f"registered model {config.REGISTERED_MODEL!r}",
                       lambda: client.set_registered_model_tag(config.REGISTERED_MODEL,
                                                               "study.writer", user)))
    except MlflowException:
        pass  # not there yet: registering creates it, which any user may
    for what, probe in probes:
        try:
            probe()
        except MlflowException as exc:
            if exc.error_code != "PERMISSION_DENIED":
                raise
            raise ConfigError(
                f"user {user!r} may not write to {what} on {config.redact(uri)} (HTTP 403: a "
                "compare needs EDIT permission, this user has less); fix: ask the server's "
                "admin to grant EDIT, or use an experiment of your own (MLFLOW_EXPERIMENT_NAME)"
            ) from None


def project_param(key: str) -> str | None:
    """A parameter of the run `mlflow run` created for this process (MLFLOW_RUN_ID)."""
    import mlflow

    client = mlflow.MlflowClient(config.tracking_uri())
    return client.get_run(os.environ["MLFLOW_RUN_ID"]).data.params.get(key)


def scrub_project_run() -> list[str]:
    """`mlflow run` logs every -P value as a param of its run before the entry point starts.
    When one holds a password the project refuses, that value must not stay in the store: on a
    database store the project opens itself, it is overwritten with its redacted form (params
    are otherwise immutable); behind a tracking server, the run is ended and deleted (its admin
    purges deleted runs with `mlflow gc`). Returns the keys that held a secret."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return []
    import mlflow

    client = mlflow.MlflowClient(config.tracking_uri())
    secret = {k: v for k, v in client.get_run(run_id).data.params.items()
              if config.carries_secret(v)}
    if not secret:
        return []
    store = client._tracking_client.store
    try:
        from mlflow.store.tracking.dbmodels.models import SqlParam

        with store.ManagedSessionMaker() as session:
            for key, value in secret.items():
                session.query(SqlParam).filter(SqlParam.run_uuid == run_id,
                                               SqlParam.key == key).update(
                    {"value": config.redact(value)}, synchronize_session=False)
    except AttributeError:  # a REST store: no database of ours to correct
        client.set_terminated(run_id, "FAILED")  # before `mlflow run` tries to, on a deleted run
        client.delete_run(run_id)
    return sorted(secret)


@contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a SQLite store: two processes creating one at once run
    MLflow's schema migrations against each other and one dies ("Online migration expected to
    match one row", "duplicate column name"). A lock file beside the database; other stores
    (a server, PostgreSQL) serialise themselves."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_experiment(name: str, artifact_location: str | None = None) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


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
        # host and pid let a later compare tell a run whose process died (SIGKILL, power cut)
        mlflow.set_tags({ROLE: "compare", "profile": profile, "host": socket.gethostname(),
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


def environment() -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: versions, CPU, commit."""
    import platform
    import subprocess

    versions = {}
    for name in ("mlflow", "optuna", "scikit-learn", "numpy", "keras", "tensorflow-cpu",
                 "tensorflow", "umap-learn", "matplotlib"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.PROJECT_ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=config.PROJECT_ROOT, text=True, capture_output=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "git_commit": commit or "unknown",
            "git_dirty": bool(dirty), "packages": versions, "split_seed": config.SEED}


def tuning_experiment_id(parent_run_id: str) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    parent_exp = client.get_experiment(parent.info.experiment_id)
    location = parent_exp.artifact_location
    # A local store keeps tuning artifacts beside the parent's, not in the working directory.
    # (A server's "mlflow-artifacts:/1" is not local: its first path part must stay the
    # experiment id, which the basic-auth app reads to check artifact permissions.)
    scheme = location.split(":", 1)[0] if location and ":" in location else ""
    local = bool(location) and (scheme in ("", "file") or len(scheme) == 1)  # C:\ on Windows
    return ensure_experiment(parent_exp.name + config.TUNING_SUFFIX,
                             location + config.TUNING_SUFFIX if local else None)


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
                "profile": profile, "host": socket.gethostname(), "pid": str(os.getpid())}
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
        now = _now_ms()
        metrics = [Metric("fit_seconds", float(entry["fit_seconds"]), now, 0)]
        if entry["val_accuracy"] is not None:
            metrics.append(Metric("val_accuracy", float(entry["val_accuracy"]), now, 0))
        metrics += [Metric("val_accuracy_epoch", float(v), now, int(step))
                    for step, v in entry["intermediate"].items()]
        params = [Param(k, _param_str(v)) for k, v in entry["params"].items()]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def finish(self, result, status: str = "FINISHED") -> None:
        if result is not None:
            self.client.log_batch(self.run_id, params=[
                _p("study_name", result.study_name),
                *(_p(f"best.{k}", v) for k, v in result.best_params.items())])
            self.client.log_metric(self.run_id, "n_trials", result.n_trials)
            self.client.log_metric(self.run_id, "tuning_seconds", result.seconds)
            if result.best_value is not None:
                self.client.log_metric(self.run_id, "best_val_accuracy", result.best_value)
            if result.importances:
                self.client.log_dict(self.run_id, result.importances, "param_importances.json")
        self.client.set_terminated(self.run_id, status)


def pip_requirements(kind: str, reducer: str) -> list[str]:
    """Pinned requirements of a logged model, stated rather than inferred: inference loads
    the model in a subprocess, which costs tens of seconds per model."""
    names = ["mlflow", "numpy", "scikit-learn", "cloudpickle"]
    if kind == "keras":
        names = ["mlflow", "numpy", "keras", "tensorflow-cpu"]
    if reducer == "umap":
        names.append("umap-learn")
    return pinned(names)


def pinned(names) -> list[str]:
    """name==installed version for each installed package (else the bare name)."""
    reqs = []
    for name in names:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def log_final(*, spec, profile: str, seed: int, params: dict[str, Any], tune, fit, evaluation,
              val_accuracy: float, val_proba: np.ndarray, predict_seconds: float,
              n_params: int, model_bytes: int,
              x_example: np.ndarray, data_digest: str = "", parent_run_id: str | None = None,
              started: float | None = None, data_rows: dict[str, int] | None = None) -> str:
    """The pipeline's final model as a child of the compare run (the active one, or
    parent_run_id from a pipeline worker process); returns its run id. The run starts at
    `started` (epoch seconds: when the pipeline's tuning began), so MLflow's Duration column
    is the pipeline's, and records its data splits as dataset inputs (`data_rows`)."""
    import mlflow

    from study.evaluation import plot_learning_curves

    tags = {ROLE: "final", "pipeline": spec.name, "family": spec.family, "reducer": spec.reducer,
            "model": spec.model, "kind": fit.kind, "profile": profile,
            "optuna_study": tune.study_name, "pipeline_digest": spec.digest,
            "data_digest": data_digest, "code_digest": config.code_digest()}
    client = mlflow.MlflowClient()
    parent_run_id = parent_run_id or mlflow.active_run().info.run_id
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    run_id = client.create_run(
        experiment_id, run_name=spec.name, tags={**tags, "mlflow.parentRunId": parent_run_id},
        start_time=int(1000 * (started or time.time()))).info.run_id
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None) as run:
        if data_rows:
            log_data_inputs(data_digest, data_rows)
        mlflow.log_params({"pipeline": spec.name, "reducer": spec.reducer, "model": spec.model,
                           "profile": profile, "seed": seed,
                           **{k: _param_str(v) for k, v in params.items()},
                           **{f"best.{k}": _param_str(v) for k, v in tune.best_params.items()}})
        metrics = {
            "val_accuracy": val_accuracy,
            "test_accuracy": evaluation.accuracy,
            "test_macro_f1": evaluation.macro_f1,
            "fit_seconds": fit.fit_seconds,
            "predict_seconds": predict_seconds,
            "predict_ms_per_1000": 1000.0 * predict_seconds / len(evaluation.predictions) * 1000.0,
            "n_params": n_params,
            "model_bytes": model_bytes,
            "n_trials": tune.n_trials,
            "tuning_seconds": tune.seconds,
        }
        if tune.best_value is not None:
            metrics["best_trial_val_accuracy"] = tune.best_value
        if fit.best_epoch is not None:
            metrics["best_epoch"] = fit.best_epoch
        mlflow.log_metrics(metrics)
        # Per-epoch curves under "epoch/": a plain "val_accuracy" series would make the UI show
        # the last epoch's value instead of the kept (best) epoch's as the run's val_accuracy.
        from mlflow.entities import Metric

        now = _now_ms()
        curves = [Metric(f"epoch/{key}", float(v), now, step + 1)
                  for key, values in fit.history.items() for step, v in enumerate(values)]
        if curves:
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=curves)
        if fit.notes:
            mlflow.set_tag("fit_notes", "; ".join(fit.notes))
        for key, value in fit.info.items():  # e.g. the precision this run really used
            if isinstance(value, (int, float)):
                mlflow.log_metric(key, float(value))
            else:
                mlflow.set_tag(key, str(value))
        with tempfile.TemporaryDirectory() as tmp:
            if fit.history:
                plot_learning_curves(fit.history, f"{spec.name}: learning curves",
                                     Path(tmp) / "learning_curves.png")
            log_evaluation(spec.name, evaluation, val_proba, Path(tmp))
        info = log_model(fit, spec.reducer, x_example)
        mlflow.set_tag("model_uri", info.model_uri)
        return run.info.run_id


def log_model(fit, reducer: str, x_example: np.ndarray):
    """The final model, as the active run's "model": a serving.Classifier (images or pixels
    in, probabilities and the class name out) around the native Keras or sklearn model, which
    is kept inside it with its own flavor and tensor signature (artifacts/network)."""
    from mlflow.models import infer_signature

    from study import serving
    from study.training import features

    signature = infer_signature(features(fit.kind, x_example),
                                fit.predict_proba(x_example).astype(np.float32))
    reqs = pip_requirements(fit.kind, reducer)
    with tempfile.TemporaryDirectory() as tmp:
        native = str(Path(tmp) / serving.NETWORK)
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
                                      code_paths=[str(Path(__file__).resolve().parent)],
                                      pyfunc_predict_fn="predict_proba")
        return serving.log_model({serving.NETWORK: 1.0}, {serving.NETWORK: native})


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
    """A final model's scores under evaluation/ of the active run: confusion matrix,
    per-class report, test predictions and the validation and test class probabilities
    (float32, ~0.9 MB a model), from which the ensemble is chosen and rebuilt without
    retraining anything. Files already in `folder` go along."""
    import mlflow

    from study.evaluation import plot_confusion

    plot_confusion(evaluation.confusion, f"{name}: test confusion matrix",
                   folder / "confusion_matrix.png")
    (folder / "classification_report.txt").write_text(evaluation.report_text)
    (folder / "classification_report.json").write_text(json.dumps(evaluation.report, indent=1))
    np.save(folder / "test_predictions.npy", evaluation.predictions.astype(np.int8))
    np.save(folder / "test_proba.npy", evaluation.proba.astype(np.float32))
    np.save(folder / "val_proba.npy", np.asarray(val_proba, dtype=np.float32))
    mlflow.log_artifacts(str(folder), artifact_path="evaluation")


def mark_stale_runs() -> list[str]:
    """Compare runs left RUNNING by a dead process on this host (SIGKILL, crash): mark them,
    their unfinished children and their tuning runs KILLED, so the next compare can resume."""
    import mlflow

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    marked = []
    for run in client.search_runs(experiments, max_results=1000, filter_string=(
            f"tags.{ROLE} = 'compare' and attributes.status = 'RUNNING'")):
        if not processes.died_here(run.data.tags.get("host", ""), run.data.tags.get("pid", "")):
            continue
        run_id = run.info.run_id
        orphans = [r for key in ("tags.mlflow.parentRunId", "tags.compare_run_id")
                   for r in client.search_runs(experiments, max_results=1000, filter_string=(
                       f"attributes.status = 'RUNNING' and {key} = '{run_id}'"))]
        for child in orphans:
            client.set_terminated(child.info.run_id, "KILLED")
        client.set_terminated(run_id, "KILLED")
        marked.append(run_id)
    return marked


def adopt_finished(parent_run_id: str, profile: str, seed: int, data_digest: str,
                   digests: dict[str, str], refused: list[str] | None = None) -> dict[str, str]:
    """Finished final runs of interrupted (KILLED) compares in this experiment whose pipeline
    definition, data, profile, seed and code (study/'s sources) match: moved under this
    compare instead of retrained. Returns {pipeline: run_id}; `refused` collects the
    pipelines whose only obstacle was changed code."""
    import mlflow

    client = mlflow.MlflowClient()
    code = config.code_digest()
    exp_id = client.get_run(parent_run_id).info.experiment_id
    killed = client.search_runs([exp_id], max_results=100, order_by=["attributes.start_time DESC"],
                                filter_string=f"tags.{ROLE} = 'compare' and "
                                              "attributes.status = 'KILLED'")
    adopted: dict[str, Any] = {}
    for old in killed:
        finals = client.search_runs([exp_id], max_results=1000, filter_string=(
            f"tags.mlflow.parentRunId = '{old.info.run_id}' and tags.{ROLE} = 'final' and "
            "attributes.status = 'FINISHED'"))
        for run in finals:
            tags, name = run.data.tags, run.data.tags.get("pipeline", "")
            if (name in digests and name not in adopted
                    and tags.get("pipeline_digest") == digests[name]
                    and tags.get("data_digest") == data_digest and tags.get("profile") == profile
                    and _same_seed(run.data.params.get("seed"), seed)):
                if tags.get("code_digest") == code:
                    adopted[name] = (run, old.info.run_id)
                elif refused is not None and name not in refused:
                    refused.append(name)
    tuning_exp = client.get_experiment_by_name(
        client.get_experiment(exp_id).name + config.TUNING_SUFFIX)
    for name, (run, old_parent) in adopted.items():
        client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_run_id)
        client.set_tag(run.info.run_id, "reused_from_compare", old_parent)
        if tuning_exp is not None:  # its tuning run and trials follow it into the new report
            for tun in client.search_runs([tuning_exp.experiment_id], filter_string=(
                    f"tags.compare_run_id = '{old_parent}' and tags.pipeline = '{name}'")):
                client.set_tag(tun.info.run_id, "compare_run_id", parent_run_id)
    return {name: run.info.run_id for name, (run, _) in adopted.items()}


def _same_seed(logged: str | None, seed: int) -> bool:
    try:
        return logged is not None and float(logged) == float(seed)
    except ValueError:
        return False


def register_champion(run_id: str, y_test: np.ndarray, name: str = config.REGISTERED_MODEL,
                      alias: str = config.CHAMPION_ALIAS) -> dict[str, Any]:
    """Register a compare's rank-1 model as a new version. The alias moves only on evidence:
    when nothing holds it yet, or when the new model is right significantly more often where
    the two disagree on the same test images (exact McNemar, 5%). A strict gain of a few
    images is not enough: over many compares the alias would become the best of many looks at
    the test set. A registry error raises RegistryError before anything moves."""
    import mlflow

    from study.leaderboard import ALPHA, mcnemar_exact

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    accuracy = run.data.metrics["test_accuracy"]
    holder = _alias_holder(client, name, alias)  # before registering: an error changes nothing
    model_uri = run.data.tags.get("model_uri") or f"runs:/{run_id}/model"
    tags = {"pipeline": run.data.tags.get("pipeline", ""), "profile": run.data.tags.get("profile", ""),
            "test_accuracy": f"{accuracy:.6f}", "run_id": run_id}
    try:
        version = mlflow.register_model(model_uri, name, tags=tags).version
    except Exception as exc:
        raise RegistryError(f"cannot register {model_uri} as {name} ({first_line(exc)[:200]}); "
                            f"the alias @{alias} was left where it was") from None
    p_value = None
    if holder is None:
        moved, reason = True, "the first champion"
    else:
        new = load_npy(run_id, "evaluation/test_predictions.npy")
        old = load_npy(holder.run_id, "evaluation/test_predictions.npy")
        if any(p is None or len(p) != len(y_test) for p in (new, old)):
            moved, reason = False, ("no paired test: the test predictions of version "
                                    f"{holder.version} or of this model cannot be read")
        else:
            old_right, new_right = old == y_test, new == y_test
            broken = int(np.sum(old_right & ~new_right))
            fixed = int(np.sum(new_right & ~old_right))
            p_value = mcnemar_exact(broken, fixed)
            moved = fixed > broken and p_value < ALPHA
            reason = (f"against version {holder.version} on the same {len(y_test)} test images: "
                      f"{fixed} right only here, {broken} right only there, McNemar "
                      f"p={p_value:.2g} {'<' if p_value < ALPHA else '>='} {ALPHA:g}")
    if moved:
        try:
            client.set_registered_model_alias(name, alias, version)
        except Exception as exc:
            raise RegistryError(f"registered {name} version {version} but could not move "
                                f"@{alias} to it ({first_line(exc)[:200]})") from None
    return {"name": name, "version": int(version), "alias_moved": moved,
            "alias_version": int(version) if moved else int(holder.version),
            "previous_accuracy": (None if holder is None else
                                  float(holder.tags.get("test_accuracy", "nan"))),
            "test_accuracy": accuracy, "p_value": p_value, "reason": reason}


def _alias_holder(client, name: str, alias: str):
    """The model version holding the alias; None when the model or its alias does not exist
    yet. Any other registry error is a RegistryError, never "no holder"."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:
        message = str(exc).lower()
        if isinstance(exc, MlflowException) and exc.error_code == "PERMISSION_DENIED":
            # MLflow's basic-auth app answers 403 for a model that does not exist yet
            try:
                if not client.search_registered_models(f"name = '{name}'"):
                    return None
            except Exception:
                pass
        if isinstance(exc, MlflowException) and exc.error_code in (
                "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and (
                "not found" in message or "does not exist" in message):
            return None
        raise RegistryError(f"cannot read the alias @{alias} of {name} ({first_line(exc)[:200]});"
                            " nothing was registered, the alias was left where it was") from None


def log_failure(spec, profile: str, trace: str) -> str:
    """A FAILED child run holding the traceback, so the failure is visible beside the results."""
    import mlflow

    tags = {ROLE: "failed", "pipeline": spec.name, "family": spec.family, "profile": profile}
    with mlflow.start_run(run_name=spec.name, nested=True, tags=tags) as run:
        mlflow.log_text(trace, "traceback.txt")
    mlflow.MlflowClient().set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def final_runs(parent_run_id: str) -> list[dict[str, Any]]:
    """The final-model children of one compare run, as plain dicts."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=(f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.{ROLE} = 'final' "
                       "and attributes.status = 'FINISHED'"),
        max_results=1000,
    )
    return [
        {"run_id": r.info.run_id, "status": r.info.status, **r.data.tags, "metrics": r.data.metrics,
         "params": r.data.params}
        for r in runs
    ]


def failed_runs(parent_run_id: str) -> list[dict[str, Any]]:
    """Pipelines of one compare that raised (their runs hold traceback.txt)."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=1000, filter_string=(
        f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.{ROLE} = 'failed'"))
    return [{"run_id": r.info.run_id, "pipeline": r.data.tags.get("pipeline", "?")} for r in runs]


def start_ablation(experiment: str, profile: str, compare_run_id: str | None = None) -> str:
    """The ablation's parent run in its own experiment; settings become its children. With
    `compare_run_id` it belongs to that compare, whose report shows it."""
    import mlflow

    exp_id = ensure_experiment(experiment)
    tags = {ROLE: "ablation", "profile": profile}
    if compare_run_id:
        tags["compare_run_id"] = compare_run_id
    return mlflow.MlflowClient().create_run(exp_id, run_name=f"ablation-{profile}",
                                            tags=tags).info.run_id


def log_ablation_setting(parent_id: str, name: str, params: dict[str, Any], row: dict[str, Any],
                         history: dict[str, list[float]]) -> str:
    """One ablation setting: its parameters, scores and per-epoch curves, as a finished child."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    run_id = client.create_run(parent.info.experiment_id, run_name=name, tags={
        ROLE: "ablation_setting", "experiment_step": row["experiment"],
        "mlflow.parentRunId": parent_id}).info.run_id
    now = _now_ms()
    metrics = [Metric(k, float(row[k]), now, 0) for k in
               ("best_val_accuracy", "test_accuracy", "epochs", "fit_seconds")]
    metrics += [Metric(f"epoch/{k}", float(v), now, step + 1)
                for k, values in history.items() for step, v in enumerate(values)]
    client.log_batch(run_id, metrics=metrics, params=[_p(k, v) for k, v in params.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def finish_ablation(parent_id: str, folder: Path | None, seconds: float | None,
                    status: str = "FINISHED") -> None:
    """Figures and table under ablation/ of the parent run, then close it."""
    import mlflow

    client = mlflow.MlflowClient()
    if folder is not None:
        client.log_artifacts(parent_id, str(folder), "ablation")
    if seconds is not None:
        client.log_metric(parent_id, "ablation_seconds", seconds)
    client.set_terminated(parent_id, status)


REPEATS_SUFFIX = "-repeats"  # seed repeats live beside the compare's experiment, not in it


def start_repeats(compare, profile: str, seeds: list[int], pipelines: list[str]) -> str:
    """The parent run of a compare's seed repeats, in '<experiment>-repeats'."""
    import mlflow

    client = mlflow.MlflowClient()
    name = client.get_experiment(compare.info.experiment_id).name + REPEATS_SUFFIX
    run = client.create_run(ensure_experiment(name), run_name=f"repeats-{profile}", tags={
        ROLE: "repeats", "profile": profile, "compare_run_id": compare.info.run_id})
    client.log_batch(run.info.run_id, params=[
        _p("seeds", ",".join(map(str, seeds))), _p("pipelines", ",".join(pipelines)),
        _p("compare_run_id", compare.info.run_id)])
    return run.info.run_id


def log_repeat(parent_id: str, pipeline: str, seed: int, metrics: dict[str, float]) -> str:
    """One refit of one model with one seed, as a finished child of the repeats run."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    run_id = client.create_run(parent.info.experiment_id, run_name=f"{pipeline}-seed-{seed}",
                               tags={ROLE: "repeat", "pipeline": pipeline,
                                     "mlflow.parentRunId": parent_id}).info.run_id
    now = _now_ms()
    client.log_batch(run_id, params=[_p("pipeline", pipeline), _p("seed", seed)],
                     metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def finish_repeats(parent_id: str, summary: dict[str, Any] | None, markdown: str | None,
                   status: str = "FINISHED") -> None:
    """The summary (repeats/repeats.json and .md) and per-model means on the parent, closed."""
    import mlflow

    client = mlflow.MlflowClient()
    if summary is not None:
        client.log_dict(parent_id, summary, "repeats/repeats.json")
        client.log_text(parent_id, markdown + "\n", "repeats/repeats.md")
        now = _now_ms()
        from mlflow.entities import Metric

        client.log_batch(parent_id, metrics=[
            *(Metric(f"{name}.test_accuracy_{k}", float(m[k]), now, 0)
              for name, m in summary["models"].items() for k in ("mean", "std")),
            Metric("repeats_seconds", float(summary["seconds"]), now, 0)])
    client.set_terminated(parent_id, status)


def repeats_run_of(compare_run_id: str):
    """The newest finished seed repeats of this compare, or None."""
    import mlflow

    client = mlflow.MlflowClient()
    compare = client.get_run(compare_run_id)
    return _newest_of(client.get_experiment(compare.info.experiment_id).name + REPEATS_SUFFIX,
                      "repeats", compare_run_id)


def ablation_run_of(compare_run_id: str):
    """The newest finished MLP ablation that belongs to this compare, or None: a report shows
    its own compare's ablation, so rebuilding an old report never changes it."""
    return _newest_of("ablation", "ablation", compare_run_id)


def _newest_of(experiment: str, role: str, compare_run_id: str):
    """The newest finished run of `role` in `experiment` that belongs to this compare."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.{ROLE} = '{role}' and attributes.status = 'FINISHED' and "
        f"tags.compare_run_id = '{compare_run_id}'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def load_pyfunc(uri: str, hint: str):
    """A logged or registered model as a pyfunc; a one-line ConfigError when it cannot load."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # unknown alias, missing run, unreachable store...
        first = first_line(exc)
        raise ConfigError(f"cannot load model {uri} ({first[:200]}); {hint}") from None


def find_compare_run(run_id: str | None = None):
    """A compare run by id, or the latest finished one in any experiment."""
    import mlflow

    client = mlflow.MlflowClient()
    if run_id and run_id not in ("latest", "-"):
        try:
            run = client.get_run(run_id)
        except Exception:
            raise ConfigError(f"no MLflow run {run_id!r} in {config.redact(config.tracking_uri())}; "
                              "pass a compare run id from the leaderboard or 'latest'") from None
        if run.data.tags.get(ROLE) != "compare":
            raise ConfigError(f"run {run_id} is not a compare run (role="
                              f"{run.data.tags.get(ROLE, 'none')}); pass the parent run's id")
        return run
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.{ROLE} = 'compare' and "
                              "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ConfigError(f"no finished compare run in {config.redact(config.tracking_uri())}; run "
                          "`mlflow run . -e compare` first or set MLFLOW_TRACKING_URI")
    return runs[0]


def tuning_runs(parent_run_id: str) -> list[dict[str, Any]]:
    """Each pipeline's tuning run of one compare, with its trial runs (number order)."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    exp = client.get_experiment_by_name(
        client.get_experiment(parent.info.experiment_id).name + config.TUNING_SUFFIX)
    if exp is None:
        return []
    out = []
    for run in client.search_runs([exp.experiment_id], max_results=1000, filter_string=(
            f"tags.compare_run_id = '{parent_run_id}' and tags.{ROLE} = 'tuning'")):
        trials = client.search_runs([exp.experiment_id], max_results=5000, filter_string=(
            f"tags.mlflow.parentRunId = '{run.info.run_id}' and tags.{ROLE} = 'trial'"))
        out.append({
            "run_id": run.info.run_id, "pipeline": run.data.tags.get("pipeline", "?"),
            "metrics": run.data.metrics, "params": run.data.params,
            "importances": load_json(run.info.run_id, "param_importances.json") or {},
            "trials": sorted(({"number": int(t.data.tags.get("trial_number", 0)),
                               "state": t.data.tags.get("trial_state", ""),
                               "val_accuracy": t.data.metrics.get("val_accuracy"),
                               "fit_seconds": t.data.metrics.get("fit_seconds"),
                               "params": t.data.params} for t in trials),
                             key=lambda t: t["number"]),
        })
    return sorted(out, key=lambda r: r["pipeline"])


def artifact_path(run_id: str, path: str, dst: str | Path) -> Path | None:
    """Download one artifact of a run; None when it does not exist."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        dst_path=str(dst)))
    except Exception:  # missing artifact: the report leaves that part out and says so
        return None


def load_json(run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        local = artifact_path(run_id, path, tmp)
        return json.loads(local.read_text()) if local else None


def load_npy(run_id: str, path: str) -> np.ndarray | None:
    with tempfile.TemporaryDirectory() as tmp:
        local = artifact_path(run_id, path, tmp)
        return np.load(local) if local else None


def metric_history(run_id: str, key: str) -> list[float]:
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


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
    mlflow.log_params({k: _param_str(v) for k, v in params.items() if k not in given})


def log_metrics(metrics: dict[str, float], run_id: str | None = None) -> None:
    """On the given run, else on the active (compare) run."""
    import mlflow

    if run_id is None:
        mlflow.log_metrics(metrics)
        return
    from mlflow.entities import Metric

    now = _now_ms()
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


def ui_command() -> str:
    uri = config.redact(config.tracking_uri())
    if uri.startswith("http"):
        return f"open {uri} in a browser"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return f"{mlflow_bin if mlflow_bin.exists() else 'mlflow'} ui --backend-store-uri {uri}"


def _p(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, _param_str(value))


def _param_str(value: Any) -> str:
    return str(value)[:6000]


def _now_ms() -> int:
    return int(time.time() * 1000)
