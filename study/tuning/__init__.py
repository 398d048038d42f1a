"""Everything Optuna: storage, studies, search spaces, pruning. Scored on validation rows only.

One study per (pipeline, profile, seed, pipeline definition), kept in persistent storage, so
rerunning compare continues a study: it only runs the trials still missing from the budget.
The rest of the package imports this facade (`from study import tuning`).

Modules:
  storage  open the storage; fail a dead worker's trials; the queue workers pop
  studies  a pipeline's study: name, sampler, pruner, search space, summary of its trials
  trials   the objective and the per-trial progress line and MLflow run
  runner   tune a pipeline in this process or in worker processes
"""

from study.tuning.runner import exit_with_parent, tune, tune_parallel
from study.tuning.storage import (drain_queue, fail_stale_trials, open_storage, pop_queued_trial,
                                  queue_trials, resolve_storage, waiting_trials, worker_id)
from study.tuning.studies import (TuneResult, final_params, finished_trials, missing_trials,
                                  open_study, param_importances, pruner_for, study_name, suggest,
                                  summarize, trial_entry)
from study.tuning.trials import TrialLogger, keras_pruning_callback, run_trials

__all__ = [
    "exit_with_parent", "tune", "tune_parallel", "drain_queue", "fail_stale_trials",
    "open_storage", "pop_queued_trial", "queue_trials", "resolve_storage", "waiting_trials",
    "worker_id", "TuneResult", "final_params", "finished_trials", "missing_trials", "open_study",
    "param_importances", "pruner_for", "study_name", "suggest", "summarize", "trial_entry",
    "TrialLogger", "keras_pruning_callback", "run_trials",
]
