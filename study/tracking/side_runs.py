"""Runs beside a compare: the MLP ablation (its own experiment) and seed repeats
('<experiment>-repeats'), written and found again by the compare they belong to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.tracking.common import ROLE, now_ms, param
from study.tracking.store import ensure_experiment

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
    now = now_ms()
    metrics = [Metric(k, float(row[k]), now, 0) for k in
               ("best_val_accuracy", "test_accuracy", "epochs", "fit_seconds")]
    metrics += [Metric(f"epoch/{k}", float(v), now, step + 1)
                for k, values in history.items() for step, v in enumerate(values)]
    client.log_batch(run_id, metrics=metrics, params=[param(k, v) for k, v in params.items()])
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
        param("seeds", ",".join(map(str, seeds))), param("pipelines", ",".join(pipelines)),
        param("compare_run_id", compare.info.run_id)])
    return run.info.run_id


def log_repeat(parent_id: str, pipeline: str, seed: int, metrics: dict[str, float],
               params: dict[str, Any] | None = None) -> str:
    """One refit of one model with one seed, as a finished child of the repeats run, with the
    fit parameters it used (`params`)."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    run_id = client.create_run(parent.info.experiment_id, run_name=f"{pipeline}-seed-{seed}",
                               tags={ROLE: "repeat", "pipeline": pipeline,
                                     "mlflow.parentRunId": parent_id}).info.run_id
    now = now_ms()
    fit = [param(k, v) for k, v in (params or {}).items() if k not in ("pipeline", "seed")]
    client.log_batch(run_id, params=[param("pipeline", pipeline), param("seed", seed), *fit],
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
        now = now_ms()
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
