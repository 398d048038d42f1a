"""The store: connecting to MLflow (and failing in one line when it cannot), permissions,
experiments, and what `mlflow run` leaves behind. Changes when a kind of store or server does."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from study import config
from study.errors import ConfigError, first_line

logger = logging.getLogger(__name__)


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
                    warn_plain_http_login(store)
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


def plain_http_login(uri: str, environ=os.environ) -> bool:
    """Whether a basic-auth login would cross the network in clear: a username or password in
    the environment and a plain http:// server off loopback. Host names other than localhost
    count as off loopback: nothing is looked up."""
    if not (environ.get(USERNAME_ENV) or environ.get(PASSWORD_ENV)):
        return False
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


_warned_plain_http: set[str] = set()


def warn_plain_http_login(uri: str) -> None:
    """Warn once per server, in a line, before the first request sends the login in clear."""
    if plain_http_login(uri) and uri not in _warned_plain_http:
        _warned_plain_http.add(uri)
        logger.warning("the MLflow login (%s) goes to %s over plain http: anyone on the network "
                       "between reads the password; fix: use https:// (a TLS reverse proxy in "
                       "front of the server) or a loopback address",
                       USERNAME_ENV, config.redact(uri))


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


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQL tracking stores


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
    uri = config.tracking_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES:
        # MLflow's database schema (table `params`), through SQLAlchemy as MLflow itself uses
        # it; the client API has no way to change a logged param
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri)
        try:
            with engine.begin() as connection:
                for key, value in secret.items():
                    connection.execute(sqlalchemy.text(
                        "UPDATE params SET value = :value WHERE run_uuid = :run AND key = :key"),
                        {"value": config.redact(value), "run": run_id, "key": key})
        finally:
            engine.dispose()
    else:  # a server or a file store: no database of ours to correct
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


# The experiment tag MLflow's UI reads as an experiment's kind ("genai_development" or
# "custom_model_development", its two choices in the bundle of 3.17). The UI of 3.17 lands on
# the side its "GenAI | Model training" switch holds (or the link's workflowType) whatever the
# tag says; the tag still types the experiment for the UI's kind selector and other versions.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (or restored from deleted) when needed, and marked
    as model training (mark_training). Workers starting together may both create it: the one
    that loses reads the winner's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        mark_training(exp.experiment_id, exp.tags)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def mark_training(experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Tag the experiment as model training (EXPERIMENT_KIND_TAG) unless it has a kind
    already: a kind the user chose in the UI stays. `tags`: the experiment's, when known. A
    user who may log runs but not tag the experiment still runs compares: the tag only types
    the experiment for the UI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if tags is None:
            tags = client.get_experiment(experiment_id).tags
        if not tags.get(EXPERIMENT_KIND_TAG):
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED":
            raise
        logger.info("experiment %s not tagged %s (no permission to tag it)", experiment_id,
                    EXPERIMENT_KIND_TAG)


def tuning_experiment_id(parent_run_id: str) -> str:
    """The tuning experiment beside the compare's experiment (created when needed)."""
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


def ui_command() -> str:
    """How to browse the store: the command for a local one, the address of a server."""
    uri = config.redact(config.tracking_uri())
    if uri.startswith("http"):
        return f"open {uri} in a browser"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return f"{mlflow_bin if mlflow_bin.exists() else 'mlflow'} ui --backend-store-uri {uri}"
