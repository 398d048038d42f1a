"""Tuning on real Optuna storage and a real MLflow store: trials, nesting, resumption."""

from __future__ import annotations

import mlflow
import optuna

from study import pipelines, tracking, tuning


def test_two_trials_log_two_nested_runs_and_resume(tiny, tracking_store, tmp_path):
    spec = pipelines.load("logreg")
    storage = tuning.open_storage(str(tmp_path / "o.journal"))
    mlflow.set_experiment("t")
    with mlflow.start_run() as parent:
        log = tracking.TuningLog(spec.name, "s", "smoke", parent_run_id=parent.info.run_id)
        result = tuning.tune(spec, spec.budget("smoke"), tiny, seed=5, storage=storage, log_trial=log.log_trial)
        log.finish(result)
    assert result.n_trials == 2 and len(result.history) == 2
    assert 0.3 < result.best_value <= 1.0 and set(result.best_params) == {"C"}

    client = mlflow.MlflowClient()
    tuning_exp = client.get_experiment_by_name("t-tuning")
    trials = client.search_runs([tuning_exp.experiment_id], "tags.role = 'trial'")
    assert len(trials) == 2
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {log.run_id}
    assert all("val_accuracy" in t.data.metrics and "fit_seconds" in t.data.metrics for t in trials)
    assert {float(t.data.params["C"]) for t in trials} == {h["params"]["C"] for h in result.history}
    # the leaderboard's experiment holds no trial or tuning run
    assert client.search_runs([parent.info.experiment_id], "tags.role = 'trial'") == []

    # A rerun continues the stored study: the budget is already spent, no new trial runs.
    again = tuning.tune(spec, spec.budget("smoke"), tiny, seed=5, storage=storage)
    assert again.n_trials == 2 and again.history == [] and again.best_params == result.best_params
    # its tuning seconds are still what the two trials cost, not ~0 for a run that added none
    assert result.seconds > 0 and again.seconds == result.seconds
    assert result.seconds >= sum(h["fit_seconds"] for h in result.history)  # fit + scoring
    study = optuna.load_study(study_name=tuning.study_name(spec, "smoke", 5), storage=storage)
    assert len(study.trials) == 2


def test_interrupted_study_is_topped_up_to_budget(tiny, tmp_path):
    spec = pipelines.load("logreg")
    storage = tuning.open_storage(str(tmp_path / "o.journal"))
    study = optuna.create_study(study_name=tuning.study_name(spec, "smoke", 5), storage=storage,
                                direction="maximize")
    study.enqueue_trial({"C": 0.1})
    study.optimize(lambda t: 0.5 + 0 * t.suggest_float("C", 1e-3, 10.0, log=True), n_trials=1)
    result = tuning.tune(spec, spec.budget("smoke"), tiny, seed=5, storage=storage)
    assert result.n_trials == 2 and len(result.history) == 1  # one stored + one new


def test_search_space_draws_respect_bounds():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    params = tuning.suggest(trial, {
        "a": {"type": "float", "low": 0.1, "high": 0.2},
        "b": {"type": "int", "low": 2, "high": 8, "step": 2},
        "c": {"type": "categorical", "choices": ["x", "y"]},
    })
    assert 0.1 <= params["a"] <= 0.2 and params["b"] in (2, 4, 6, 8) and params["c"] in ("x", "y")


def test_unreachable_rdb_storage_is_a_clear_error():
    import pytest

    from study.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot open Optuna storage"):
        tuning.open_storage("postgresql://nobody@127.0.0.1:1/none")


def test_a_profile_with_zero_trials_uses_the_fixed_parameters(tiny, tmp_path):
    """cnn_modern and mlp_seed are fixed in quick: no study is opened, no trial runs, and the
    final parameters are the YAML's own."""
    spec = pipelines.load("mlp_seed")
    assert spec.search and spec.budget("quick").n_trials == 0 and not spec.tunes(spec.budget("quick"))
    assert spec.tunes(spec.budget("smoke"))
    journal = tmp_path / "o.journal"
    result = tuning.tune(spec, spec.budget("quick"), tiny, seed=5, storage=tuning.open_storage(str(journal)))
    assert result.n_trials == 0 and result.best_params == {} and result.history == []
    storage = tuning.open_storage(str(journal))
    assert not [s for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith("mlp")]
    params = tuning.final_params(spec, spec.budget("quick"), result.best_params)
    assert params["activation"] == "tanh" and params["hidden"] == "50x50"  # the seed's setting


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tiny, tmp_path, monkeypatch, capsys):
    """One trial raising (as a scikit-learn ValueError would) is a FAIL with its reason; the
    next trial runs and the pipeline gets its best parameters from the trials that finished.
    The failure is a warning of the `study` logger, on stderr once the CLI's set-up is in place."""
    import pytest

    from study import cli, training
    from study.errors import ConfigError

    cli.configure_logging()

    spec = pipelines.load("logreg")
    real_fit, calls = training.fit, []

    def fit_failing_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Input X contains NaN.\nsecond line")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", fit_failing_first)
    storage = tuning.open_storage(str(tmp_path / "o.journal"))
    result = tuning.tune(spec, spec.budget("smoke"), tiny, seed=5, storage=storage, n_trials=2)
    states = [h["state"] for h in result.history]
    assert states == ["FAIL", "COMPLETE"]
    assert result.history[0]["error"] == "ValueError: Input X contains NaN."
    assert result.best_value is not None and set(result.best_params) == {"C"}
    assert "[logreg] trial #1 failed: ValueError: Input X contains NaN. (the study goes on)" \
        in capsys.readouterr().err
    study = optuna.load_study(study_name=tuning.study_name(spec, "smoke", 5), storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    # the leaderboard says the trial failed, not that a timeout cut the trials (issue 42, 4)
    from study import evaluation

    assert (result.n_trials, result.n_failed) == (1, 1)
    budget = spec.budget("smoke")
    assert evaluation.limited_by(spec, budget, budget, result, training.FitResult(
        None, "sklearn", 1.0), None) == f"1/{budget.n_trials} trials; 1 failed"

    # every trial failing: the pipeline fails, with the reason and where to fix it
    monkeypatch.setattr(training, "fit", lambda *a, **k: 1 / 0)
    with pytest.raises(ConfigError, match=r"all 2 tuning trial\(s\) failed \(ZeroDivisionError"):
        tuning.tune(spec, spec.budget("smoke"), tiny, seed=6, storage=storage, n_trials=2)


def test_a_worker_stops_at_its_timeout_and_says_what_it_left_queued(tmp_path, capsys):
    """The queue's timeout is the budget's clock: a worker past it takes no new trial, and the
    trials it leaves WAITING are named on stderr (a busy machine reaches it; silence hid it)."""
    import time

    from study import cli

    cli.configure_logging()
    storage = tuning.open_storage(str(tmp_path / "o.journal"))
    study = optuna.create_study(study_name="queue", storage=storage, direction="maximize")
    tuning.queue_trials(study, 3)

    def slow(trial):
        time.sleep(0.5)
        return trial.suggest_float("x", 0, 1)

    ran = tuning.drain_queue(study, storage, slow, lambda *_: None, timeout=0.2)
    assert ran == 1  # the one it had started before the clock ran out
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "WAITING", "WAITING"]
    assert ("[queue] stopped at the 0.2 s timeout with 2 queued trial(s) left for other "
            "workers") in capsys.readouterr().err
    # another worker (or the same command again) drains what was left, and stays quiet
    assert tuning.drain_queue(study, storage, slow, lambda *_: None, timeout=60) == 2
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
    assert "stopped at" not in capsys.readouterr().err


def test_progress_counts_trials_against_the_budget_after_failed_ones():
    """A compare resumed after two failed trials printed "trial 3/2": Optuna's numbers count
    the failures, the budget does not."""
    import optuna

    from study.tuning.trials import trial_labels

    study = optuna.create_study(direction="maximize")
    for _ in range(2):  # the earlier run: both trials failed
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    label = trial_labels(study, 2, of_budget=True)
    assert [label(2), label(3), label(4)] == ["trial 1/2", "trial 2/2", "trial #5"]
    study.tell(study.ask(), 0.5)  # one counted; one queued trial left from an interruption
    study.enqueue_trial({})
    label = trial_labels(study, 2, of_budget=True)
    assert [label(3), label(4)] == ["trial 2/2", "trial #5"]
    assert trial_labels(study, 2, of_budget=False)(3) == "trial #4"
