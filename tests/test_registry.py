"""The champion alias in the Model Registry: it moves to a better model and stays for a worse one."""

from __future__ import annotations

import mlflow
import numpy as np
from sklearn.dummy import DummyClassifier

from study import config, tracking


def logged_model_run(accuracy: float, name: str) -> str:
    """A finished run with a real logged model and its test accuracy, like a final run."""
    model = DummyClassifier(strategy="prior").fit(np.zeros((10, 2)), np.arange(10))
    with mlflow.start_run(run_name=name, tags={"pipeline": name, "profile": "smoke"}) as run:
        info = mlflow.sklearn.log_model(model, name="model")
        mlflow.log_metric("test_accuracy", accuracy)
        mlflow.set_tag("model_uri", info.model_uri)
    return run.info.run_id


def test_alias_moves_to_a_better_champion_and_stays_for_a_worse_one(tracking_store):
    client = mlflow.MlflowClient()
    first = tracking.register_champion(logged_model_run(0.80, "first"))
    assert (first["version"], first["alias_moved"]) == (1, True)

    better = tracking.register_champion(logged_model_run(0.90, "better"))
    assert (better["version"], better["alias_moved"]) == (2, True)
    holder = client.get_model_version_by_alias(config.REGISTERED_MODEL, config.CHAMPION_ALIAS)
    assert int(holder.version) == 2 and holder.tags["pipeline"] == "better"

    worse_run = logged_model_run(0.85, "worse")
    worse = tracking.register_champion(worse_run)
    assert (worse["version"], worse["alias_moved"], worse["alias_version"]) == (3, False, 2)
    holder = client.get_model_version_by_alias(config.REGISTERED_MODEL, config.CHAMPION_ALIAS)
    assert int(holder.version) == 2  # stayed put
    versions = client.search_model_versions(f"name = '{config.REGISTERED_MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]  # earlier champions kept
    assert client.get_model_version(config.REGISTERED_MODEL, "3").run_id == worse_run

    equal = tracking.register_champion(logged_model_run(0.90, "tie"))
    assert not equal["alias_moved"]  # a tie is not better

    # the alias resolves to a loadable model that answers with probabilities
    model = mlflow.pyfunc.load_model(f"models:/{config.REGISTERED_MODEL}@{config.CHAMPION_ALIAS}")
    assert np.asarray(model.predict(np.zeros((2, 2)))).shape[0] == 2
