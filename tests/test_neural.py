"""Neural training path: best-epoch weights, determinism, pruning, precision choice."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from study import pipelines, training, tuning


def test_same_seed_same_validation_accuracy(tiny):
    spec = pipelines.load("cnn_seed1")
    params = {**tuning.final_params(spec, "smoke", {}), "epochs": 3}
    runs = [training.fit(spec, params, tiny.x_train, tiny.y_train, tiny.x_val, tiny.y_val, seed=11)
            for _ in range(2)]
    acc = [float(np.mean(r.predict_proba(tiny.x_val).argmax(1) == tiny.y_val)) for r in runs]
    assert abs(acc[0] - acc[1]) <= 0.002
    assert runs[0].history["val_accuracy"] == pytest.approx(runs[1].history["val_accuracy"], abs=0.002)


def test_final_weights_are_the_best_validation_epochs(tiny):
    spec = pipelines.load("mlp_seed")
    params = {**tuning.final_params(spec, "smoke", {}), "epochs": 6, "patience": 10,
              "learning_rate": 0.05}
    result = training.fit(spec, params, tiny.x_train, tiny.y_train, tiny.x_val, tiny.y_val, seed=3)
    history = result.history["val_accuracy"]
    assert result.best_epoch == int(np.argmax(history)) + 1
    kept = float(np.mean(result.predict_proba(tiny.x_val).argmax(1) == tiny.y_val))
    assert kept == pytest.approx(max(history), abs=1e-6)
    assert result.info["precision"] in ("float32", "mixed_bfloat16")


def test_time_limit_stops_before_the_epoch_that_would_overrun(tiny):
    """max_seconds bounds a final fit: the epochs run fit in it, the best of them is kept."""
    spec = pipelines.load("mlp_seed")
    base = {**tuning.final_params(spec, "smoke", {}), "epochs": 500, "patience": 500}
    free = training.fit(spec, {**base, "epochs": 3}, tiny.x_train, tiny.y_train, tiny.x_val,
                        tiny.y_val, seed=3)
    limit = 2 * free.fit_seconds  # room for the 3 epochs (their first traces the graph) and more
    limited = training.fit(spec, {**base, "max_seconds": limit}, tiny.x_train, tiny.y_train,
                           tiny.x_val, tiny.y_val, seed=3)
    ran = len(limited.history["loss"])
    assert 3 <= ran < 500 and limited.fit_seconds < 1.5 * limit
    assert f"time limit: stopped after {ran} of 500 epochs" in "; ".join(limited.notes)
    assert limited.best_epoch == int(np.argmax(limited.history["val_accuracy"])) + 1


def test_pruning_callback_stops_a_weak_trial():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1,
                                                                   n_warmup_steps=1))
    strong = study.ask()
    for step, value in enumerate([0.5, 0.7, 0.8]):
        strong.report(value, step)
    study.tell(strong, 0.8)
    weak = study.ask()
    callback = tuning._keras_pruning_callback(weak)
    callback.on_epoch_end(0, {"val_accuracy": 0.2})  # warm-up step: never pruned
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(1, {"val_accuracy": 0.3})


def test_two_trial_keras_tuning_reports_every_epoch(tiny, tmp_path):
    spec = pipelines.load("cnn_seed1")
    storage = tuning.open_storage(str(tmp_path / "o.journal"))
    result = tuning.tune(spec, "smoke", tiny, seed=2, storage=storage)
    assert result.n_trials == 2
    epochs = spec.budget("smoke").fit["epochs"]
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert len(trial.intermediate_values) == epochs
        else:  # pruned after its second epoch at the earliest
            assert trial.state == optuna.trial.TrialState.PRUNED


def test_bf16_is_refused_where_the_cpu_lacks_it(monkeypatch):
    monkeypatch.setattr(training, "cpu_supports_bf16", lambda: False)
    assert training.resolve_precision("mixed_bfloat16")[0] == "float32"
    monkeypatch.setattr(training, "cpu_supports_bf16", lambda: True)
    assert training.resolve_precision("mixed_bfloat16") == ("mixed_bfloat16", "as configured")
    assert training.resolve_precision("float32")[0] == "float32"
