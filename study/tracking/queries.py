"""Reading what compares logged: final, failed and tuning runs, compare runs, artifacts,
metric histories and models. Everything the report, the ensemble stage and predict read."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from study import config
from study.errors import ConfigError, first_line
from study.tracking.common import ROLE, native_model_path
from study.tracking.store import configure, experiment_name

MODEL_NAME = "model"  # what final runs logged their model as before it was named by pipeline
_NAME_BANNED = "/:.%\"'"  # characters MLflow refuses in a logged model's name


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
    # model_uri is found from the run id (empty when the run logged no model), never taken
    # from the run's editable model_uri tag: what it names gets unpickled
    return [
        {"run_id": r.info.run_id, "status": r.info.status, **r.data.tags, "metrics": r.data.metrics,
         "params": r.data.params, "end_time": r.info.end_time,
         "model_uri": model_uri_of(r.info.run_id, r.info.experiment_id) or ""}
        for r in runs
    ]


def logged_model_name(pipeline: str) -> str:
    """The name a final run logs its model under: its pipeline's (`cnn_modern`, `ensemble`),
    so the UI's Models view tells them apart; MLflow's banned characters become "_"."""
    return "".join("_" if c in _NAME_BANNED else c for c in pipeline) or MODEL_NAME


def model_uri_of(run_id: str, experiment_id: str | None = None) -> str | None:
    """`models:/<model id>` of the model the run logged (the first, if several), named by its
    pipeline or, in stores written before that, "model"; found through MLflow's API from the
    run id; None when it logged none. What registers, loads or joins an ensemble: the run's
    model_uri tag is for humans (anyone with EDIT on the experiment can point it at their own
    model)."""
    import mlflow

    client = mlflow.MlflowClient()
    if experiment_id is None:
        experiment_id = client.get_run(run_id).info.experiment_id
    found = [m for m in client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'")
        if m.source_run_id == run_id]
    first = min(found, key=lambda m: m.creation_timestamp, default=None)
    return None if first is None else f"models:/{first.model_id}"


def failed_runs(parent_run_id: str) -> list[dict[str, Any]]:
    """Pipelines of one compare that raised (their runs hold traceback.txt)."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=1000, filter_string=(
        f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.{ROLE} = 'failed'"))
    return [{"run_id": r.info.run_id, "pipeline": r.data.tags.get("pipeline", "?")} for r in runs]


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


def download_artifact(run_id: str, path: str, dst: str | Path) -> Path | None:
    """Download one artifact of a run; None when it does not exist."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        dst_path=str(dst)))
    except Exception:  # missing artifact: the report leaves that part out and says so
        return None


def load_json(run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifact(run_id, path, tmp)
        return json.loads(local.read_text()) if local else None


def load_npy(run_id: str, path: str) -> np.ndarray | None:
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifact(run_id, path, tmp)
        return np.load(local) if local else None


def ranked(runs: list[dict[str, Any]], y_test: np.ndarray
           ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """A compare's final runs as leaderboard rows, the champion chosen on validation and every
    other row tested against it on the runs' logged test predictions; and those predictions.
    One reading for the compare and its report, so both print the same table."""
    from study import leaderboard

    predictions = {}
    for run in runs:
        pred = load_npy(run["run_id"], "evaluation/test_predictions.npy")
        if pred is not None:
            predictions[run["run_id"]] = pred.astype(np.int64)
    rows = leaderboard.rank(runs)
    leaderboard.select_champion(rows)
    leaderboard.add_significance(rows, predictions, y_test)
    return rows, predictions


def metric_history(run_id: str, key: str) -> list[float]:
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def load_pyfunc(uri: str, hint: str):
    """A logged or registered model as a pyfunc; a one-line ConfigError when it cannot load."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # unknown alias, missing run, unreachable store...
        first = first_line(exc)
        raise ConfigError(f"cannot load model {uri} ({first[:200]}); {hint}") from None


def final_run_of(parent_run_id: str, pipeline: str) -> dict[str, Any] | None:
    """One pipeline's final run in a compare, or None."""
    return next((r for r in final_runs(parent_run_id) if r.get("pipeline") == pipeline), None)


def load_network(run_id: str):
    """The Keras network inside a final run's logged model (mirror TTA included, where it
    was kept), loaded from MLflow as it was logged, not retrained."""
    import mlflow
    from mlflow import keras as mlflow_keras

    uri = model_uri_of(run_id)  # named by its pipeline, or "model" in older stores
    with tempfile.TemporaryDirectory() as tmp:
        local = None if uri is None else Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        if local is None:
            raise ConfigError(f"run {run_id} has no logged model; rerun its pipeline")
        native = native_model_path(local)
        return mlflow_keras.load_model(native)


def pipeline_timings(profile: str, parent_run_id: str) -> dict[str, dict[str, float]]:
    """The latest finished final run of each pipeline in this profile, in the experiment of
    the compare `parent_run_id`: its pipeline, fit and tuning seconds, epochs run and trials,
    and `least_seconds`, the pipeline seconds of its latest run without tuning (when there is
    one). What a time budget estimates a pipeline's cost from."""
    import mlflow

    client = mlflow.MlflowClient()
    return _timings(client, client.get_run(parent_run_id).info.experiment_id, profile)


def existing_timings(profile: str) -> dict[str, dict[str, float]]:
    """pipeline_timings for a plan made before any compare run (`--plan-only`): read from the
    configured store's experiment if both exist, never creating either (a SQLite store that
    is not there yet has no history: nothing is opened)."""
    import mlflow

    uri = config.tracking_uri()
    if uri.startswith("sqlite:///"):
        if not Path(uri[len("sqlite:///"):].split("?", 1)[0]).is_file():
            return {}
        mlflow.set_tracking_uri(uri)  # configure() would take the first-use lock: a file
    else:
        configure()  # a server: one short probe says it is down, and checks the login
    client = mlflow.MlflowClient()
    if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`: the project run's experiment
        experiment_id = client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    else:
        found = client.get_experiment_by_name(experiment_name())
        if found is None:
            return {}
        experiment_id = found.experiment_id
    return _timings(client, experiment_id, profile)


def _timings(client, experiment_id: str, profile: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for run in client.search_runs(
            [experiment_id], max_results=1000, order_by=["attributes.start_time DESC"],
            filter_string=(f"tags.{ROLE} = 'final' and tags.profile = '{profile}' and "
                           "attributes.status = 'FINISHED'")):
        name, m = run.data.tags.get("pipeline", ""), run.data.metrics
        if "pipeline_seconds" not in m or "fit_seconds" not in m:
            continue
        if name in out:  # an older run: its latest without tuning is its least's cost
            if "least_seconds" not in out[name] and not m.get("n_trials"):
                whole = m.get("own_fit_seconds", m["fit_seconds"])
                out[name]["least_seconds"] = (m["pipeline_seconds"] - whole
                                              + whole / m.get("train_fraction", 1.0))
            continue
        epochs = m.get("epochs_run")
        if epochs is None and run.data.tags.get("kind") == "keras":
            epochs = len(metric_history(run.info.run_id, "epoch/loss")) or None
        # its own fit: a specialist's generalist is not in its pipeline's time; a fit a time
        # budget cut to part of the rows, scaled to all of them (in proportion)
        fit = m.get("own_fit_seconds", m["fit_seconds"])
        whole = fit / m.get("train_fraction", 1.0)
        out[name] = {"seconds": m["pipeline_seconds"] + whole - fit, "fit_seconds": whole,
                     "tuning_seconds": m.get("tuning_seconds", 0.0), "epochs": epochs,
                     "trials": m.get("n_trials", 0.0)}
        if not m.get("n_trials"):  # a run without tuning: what its least costs
            out[name]["least_seconds"] = out[name]["seconds"]
    return out


def budgeted_compares(parent_run_id: str, profile: str) -> list[dict[str, float]]:
    """Every finished compare with a time budget in the experiment of `parent_run_id` and in
    `profile`: its budget, wall time (data to written report; a compare whose report is being
    written: up to the report) and champion's test accuracy (what each minute buys)."""
    import mlflow

    from study import leaderboard

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    out = []
    for run in client.search_runs([experiment_id], max_results=200, filter_string=(
            f"tags.{ROLE} = 'compare' and tags.profile = '{profile}' and "
            "metrics.budget_minutes > 0 and attributes.status = 'FINISHED'")):
        champion = leaderboard.select_champion(leaderboard.rank(final_runs(run.info.run_id)))
        # compare_seconds: runs logged before the other two, without ranking, registry, report
        seconds = next((run.data.metrics[k] for k in ("total_seconds", "before_report_seconds",
                                                       "compare_seconds")
                        if k in run.data.metrics), None)
        if champion and seconds is not None:
            out.append({"budget_minutes": run.data.metrics["budget_minutes"],
                        "minutes": seconds / 60,
                        "champion_accuracy": champion["test_accuracy"], "run_id": run.info.run_id})
    return sorted(out, key=lambda b: (b["budget_minutes"], b["run_id"]))


def load_text(run_id: str, path: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifact(run_id, path, tmp)
        return local.read_text() if local else None


UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` listens unless told otherwise
RANK_KEY = "metrics.`rank`"  # the UI's sort key for the rank metric the compare logs (set_rank)


def leaderboard_url(experiment_id: str, compare_run_id: str | None = None,
                    ui: str | None = None) -> str:
    """A link into MLflow's UI that opens the final runs (of one compare, when given) on the
    model-training side, rank 1 first. `ui`: the UI's address; default: the tracking server
    (without any login in it) or, for a database store, where `mlflow ui` listens. The UI
    (3.17) reads the view from workflowType (else its GenAI | Model training switch, GenAI in
    a fresh browser) and the run list from searchFilter, orderByKey and orderByAsc."""
    if ui is None:
        ui = _server_address(config.tracking_uri()) or UI_ADDRESS
    search = f"tags.{ROLE} = 'final'"
    if compare_run_id:
        search += f" and tags.mlflow.parentRunId = '{compare_run_id}'"
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": search,
                                    "orderByKey": RANK_KEY, "orderByAsc": "true"},
                                   quote_via=urllib.parse.quote)
    return f"{ui.rstrip('/')}/#/experiments/{urllib.parse.quote(experiment_id)}/runs?{query}"


def compare_leaderboard_url(compare_run_id: str, ui: str | None = None) -> str:
    """leaderboard_url for a compare run, in its own experiment."""
    import mlflow

    run = mlflow.MlflowClient().get_run(compare_run_id)
    return leaderboard_url(run.info.experiment_id, compare_run_id, ui)


def _server_address(uri: str) -> str | None:
    """A tracking server's address as a browser opens it (scheme, host, port, path; no login,
    query or fragment); None for a database or file store."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https"):
        return None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path, "", ""))
