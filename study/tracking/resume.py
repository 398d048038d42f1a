"""Resume and recovery: compares whose process died are marked KILLED, and their finished
final runs are adopted by the next compare of the same user when data, definition, seed and
code match."""

from __future__ import annotations

from typing import Any

from study import config, processes
from study.tracking.common import ROLE

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
    """Finished final runs of interrupted (KILLED) compares in this experiment, and of
    compares that ended with failed pipelines (tag resumable, e.g. a cluster worker died),
    whose pipeline definition, data, profile, seed and code (study/'s sources) match: moved
    under this compare instead of retrained. Only runs created by the user this compare's run
    was created by are adopted: an adopted model is unpickled in this compare, in `study
    predict` and in serving, so another user's run would be their code run as ours. Returns
    {pipeline: run_id}; `refused` collects the pipelines whose only obstacle was changed code."""
    import mlflow

    client = mlflow.MlflowClient()
    code = config.code_digest()
    parent = client.get_run(parent_run_id).info
    # MLflow's run user (the OS user on a local store, the login on a basic-auth server, as
    # the creating client reported it); the mlflow.user tag can be edited later, it cannot
    exp_id, me = parent.experiment_id, parent.user_id
    earlier = sorted((run for found in ("attributes.status = 'KILLED'", "tags.resumable = 'true'")
                     for run in client.search_runs([exp_id], max_results=100, filter_string=(
                         f"tags.{ROLE} = 'compare' and {found}"))),
                    key=lambda run: -run.info.start_time)  # the newest first
    adopted: dict[str, Any] = {}
    for old in earlier:
        finals = client.search_runs([exp_id], max_results=1000, filter_string=(
            f"tags.mlflow.parentRunId = '{old.info.run_id}' and tags.{ROLE} = 'final' and "
            "attributes.status = 'FINISHED'"))
        for run in finals:
            tags, name = run.data.tags, run.data.tags.get("pipeline", "")
            if (run.info.user_id == me and name in digests and name not in adopted
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
