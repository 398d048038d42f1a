"""The model registry: registering a compare's champion (chosen on validation) and moving the
champion alias only on paired evidence from the test set."""

from __future__ import annotations

from typing import Any

import numpy as np

from study import config
from study.errors import RegistryError, first_line
from study.tracking.queries import load_npy, logged_model_name, model_uri_of


def register_champion(run_id: str, y_test: np.ndarray, name: str = config.REGISTERED_MODEL,
                      alias: str = config.CHAMPION_ALIAS) -> dict[str, Any]:
    """Register a compare's champion (leaderboard.select_champion) as a new version. The alias
    moves only on evidence: when nothing holds it yet, or when the new model is right
    significantly more often where the two disagree on the same test images (one-sided exact
    McNemar at 5%: the alias only ever moves up, so only that side is tested). A strict gain
    of a few images is not enough: over many compares the alias would become the best of many
    looks at the test set. A registry error raises RegistryError before anything moves."""
    import mlflow

    from study.leaderboard import ALPHA, format_p, mcnemar_one_sided

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    accuracy = run.data.metrics["test_accuracy"]
    holder = _alias_holder(client, name, alias)  # before registering: an error changes nothing
    # the run's own model, never its editable model_uri tag (anyone with EDIT could point it
    # at their model, to be unpickled by `study predict` and serving)
    pipeline = run.data.tags.get("pipeline", "")
    model_uri = (model_uri_of(run_id, run.info.experiment_id)
                 or f"runs:/{run_id}/{logged_model_name(pipeline)}")
    tags, description = version_card(run)
    try:
        version = mlflow.register_model(model_uri, name, tags=tags).version
    except Exception as exc:
        raise RegistryError(f"cannot register {model_uri} as {name} ({first_line(exc)[:200]}); "
                            f"the alias @{alias} was left where it was") from None
    try:  # what the registry shows: each version's card; the model's purpose, unless the
        # user wrote their own (an edit in the UI stays)
        client.update_model_version(name, version, description=description)
        model = client.get_registered_model(name)
        if not model.description:
            client.update_registered_model(name, description=MODEL_DESCRIPTION)
        for key, value in MODEL_TAGS.items():
            if key not in model.tags:
                client.set_registered_model_tag(name, key, value)
    except Exception as exc:
        raise RegistryError(f"registered {name} version {version} but could not describe it "
                            f"({first_line(exc)[:200]}); the alias @{alias} was left where it "
                            "was") from None
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
            p_value = mcnemar_one_sided(fixed, broken)
            moved = p_value < ALPHA
            reason = (f"against version {holder.version} on the same {len(y_test)} test images: "
                      f"{fixed} right only here, {broken} right only there, one-sided McNemar "
                      f"{format_p(p_value)} {'<' if moved else '>='} {ALPHA:g}")
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


SELECTION_RULE = "best validation accuracy among final models"
MODEL_TAGS = {"task": "Fashion-MNIST, 10 classes of 28x28 grey images",
              "selection_rule": SELECTION_RULE,
              "alias_rule": "@champion moves on a one-sided exact McNemar test at 5% against "
                            "its holder on the same test images"}
MODEL_DESCRIPTION = (
    "The champion of each compare of the Fashion-MNIST model comparison study, registered as "
    f"a new version: the {SELECTION_RULE} (the test set only reports). Each version's "
    "description and tags say its pipeline, scores, compare run and, for an ensemble, its "
    f"members and weights. The alias @{config.CHAMPION_ALIAS} (what `study predict` and serving "
    "load) moves only when a version is right significantly more often than the alias holder "
    "on the test images where the two disagree.")


def version_card(run) -> tuple[dict[str, str], str]:
    """A model version's tags and description, from the final run it comes from: pipeline,
    test and validation accuracy, the selection rule, and an ensemble's members and weights
    (its run's `members` and `weight.<member>` params)."""
    data = run.data
    pipeline = data.tags.get("pipeline", "")
    tags = {"pipeline": pipeline, "family": data.tags.get("family", ""),
            "profile": data.tags.get("profile", ""), "selection_rule": SELECTION_RULE,
            "run_id": run.info.run_id, "compare_run_id": data.tags.get("mlflow.parentRunId", "")}
    scores = []
    for key in ("test_accuracy", "val_accuracy"):
        if key in data.metrics:
            tags[key] = f"{data.metrics[key]:.6f}"
            scores.append(f"{key} {data.metrics[key]:.4f}")
    members = [m for m in data.params.get("members", "").split(",") if m]
    if members:
        weights = [f"{m}:{data.params.get(f'weight.{m}', '?')}" for m in members]
        tags["members"] = ",".join(weights)
    tags = {k: v for k, v in tags.items() if v}
    description = (f"{pipeline or 'a final model'} ({', '.join(scores) or 'no scores logged'}), "
                   f"chosen as the {SELECTION_RULE} of compare run "
                   f"{tags.get('compare_run_id', '?')}; its final run is {run.info.run_id}.")
    if members:
        description += f" A weighted ensemble of {', '.join(weights)}."
    return tags, description


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
