"""Everything MLflow, one module per reason to change; the rest of the package imports only
this facade (`from study import tracking`). The one other module that imports mlflow is
serving: the pyfunc model class every final run logs, which MLflow loads on its own. Tracking
never imports serving: the writers of final runs are handed serving.log_model (`log_classifier`).

Layout of one compare invocation:
  experiment E (default "fashion-mnist", or the one `mlflow run` chose)
    compare run (parent)                  role=compare
      <pipeline> final run, one each      role=final   <- the leaderboard
  experiment "E-tuning"
    <pipeline> tuning run                 role=tuning  (tag compare_run_id links back)
      trial runs, nested                  role=trial
  experiment "E-repeats" / "ablation"     role=repeats / ablation (tag compare_run_id)
Tuning lives in its own experiment so the leaderboard's run list stays one row per model.

Modules:
  store        connect, permissions, experiments, `mlflow run`'s own run
  runs         write a compare: parent, tuning and trial runs, final runs, small writes
  ensemble_run the ensemble's final run and its model, checked by loading it back
  queries      read back: runs, artifacts, metric histories, models
  registry     register the champion, move its alias on evidence
  resume       mark dead compares, adopt their finished models
  side_runs    the MLP ablation and seed repeats
  environment  versions, CPU, commit; pinned requirements of logged models
  common       the role tag, param and timestamp formats, the logged model's layout
"""

from study.tracking.common import NETWORK, PARAM_CHARS, ROLE, native_model_path
from study.tracking.ensemble_run import log_ensemble, log_ensemble_model
from study.tracking.environment import environment, pinned, pip_requirements
from study.tracking.queries import (budgeted_compares, compare_leaderboard_url,
                                    download_artifact, failed_runs,
                                    final_run_of, final_runs,
                                    find_compare_run, load_json, load_network, load_npy, load_text,
                                    load_pyfunc, metric_history, pipeline_timings,
                                    existing_timings, ranked, tuning_runs)
from study.tracking.registry import register_champion
from study.tracking.resume import adopt_finished, mark_stale_runs
from study.tracking.runs import (TuningLog, compare_run, log_artifacts, log_data_inputs,
                                 log_evaluation, log_failure, log_final, log_metric, log_metrics,
                                 log_model, log_params, log_text, set_rank, set_tags)
from study.tracking.side_runs import (REPEATS_SUFFIX, ablation_run_of, finish_ablation,
                                      finish_repeats, log_ablation_setting, log_repeat,
                                      repeats_run_of, start_ablation, start_repeats)
from study.tracking.store import (check_can_write, configure, ensure_experiment, experiment_name,
                                  first_use_lock, project_param, scrub_project_run,
                                  tuning_experiment_id, ui_command)

__all__ = [
    "NETWORK", "PARAM_CHARS", "ROLE", "native_model_path", "log_ensemble", "log_ensemble_model", "environment", "pinned", "pip_requirements", "download_artifact", "failed_runs",
    "final_run_of", "final_runs", "find_compare_run", "load_json", "load_network", "load_npy",
    "load_pyfunc", "metric_history", "pipeline_timings", "existing_timings", "ranked", "budgeted_compares",
    "load_text", "tuning_runs", "register_champion", "adopt_finished", "mark_stale_runs",
    "TuningLog", "compare_run", "log_artifacts", "log_data_inputs", "log_evaluation", "log_failure",
    "log_final", "log_metric", "log_metrics", "log_model", "log_params", "log_text", "set_rank",
    "set_tags", "REPEATS_SUFFIX", "ablation_run_of", "finish_ablation", "finish_repeats",
    "log_ablation_setting", "log_repeat", "repeats_run_of", "start_ablation", "start_repeats",
    "check_can_write", "configure", "ensure_experiment", "experiment_name", "first_use_lock",
    "project_param", "scrub_project_run", "tuning_experiment_id", "ui_command",
    "compare_leaderboard_url",
]
