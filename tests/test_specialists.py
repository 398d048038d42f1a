"""Specialists: trained on their group's rows only, folded into a generalist exactly as
p(c) = p_gen(group) * p_spec(c | group) in the group and p_gen(c) elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from study import pipelines, specialists, training, tuning
from study.errors import ConfigError
from study.models.keras_models import cnn_modern, fold_specialist, with_mirror

GROUP = (0, 2, 4, 6)


def folded_by_hand(general: np.ndarray, within: np.ndarray, group=GROUP) -> np.ndarray:
    out = general.copy()
    out[:, list(group)] = general[:, list(group)].sum(axis=1, keepdims=True) * within
    return out


def test_group_rows_keep_only_the_group_renumbered():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 0])
    mask, renumbered = specialists.group_rows(labels, GROUP)
    assert list(labels[mask]) == [0, 2, 4, 6, 6, 0]
    assert list(renumbered) == [0, 1, 2, 3, 3, 0]


def test_fold_is_exact_and_survives_save_and_load(tiny, tmp_path):
    import keras

    general = with_mirror(cnn_modern(widths="8-8", steps_per_epoch=2, epochs=1))
    special = cnn_modern(widths="8-8", classes=len(GROUP), steps_per_epoch=2, epochs=1)
    model = fold_specialist(general, special, GROUP)
    x = training.features("keras", tiny.x_test[:40])
    p_gen, p_spec = (np.asarray(m.predict(x, verbose=0)) for m in (general, special))
    folded = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(folded, folded_by_hand(p_gen, p_spec), atol=1e-6)
    np.testing.assert_allclose(folded.sum(axis=1), 1.0, atol=1e-5)
    outside = [c for c in range(10) if c not in GROUP]
    np.testing.assert_array_equal(folded[:, outside], p_gen[:, outside])  # untouched there
    path = str(tmp_path / "folded.keras")
    training.inference_copy(model).save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), folded,
                               atol=1e-6)


def test_fold_refuses_a_specialist_of_another_size():
    general = cnn_modern(widths="8", steps_per_epoch=2, epochs=1)
    with pytest.raises(ValueError, match="3 outputs cannot share out classes"):
        fold_specialist(general, cnn_modern(widths="8", classes=3), GROUP)


def test_specialist_final_fit_sees_its_group_only_and_folds(tiny, monkeypatch):
    spec = pipelines.load("cnn_upper")
    general_spec = pipelines.load(spec.generalist)
    general = training.fit(general_spec, tuning.final_params(
        general_spec, general_spec.budget("smoke"), {}), tiny.x_train, tiny.y_train,
        tiny.x_val, tiny.y_val, seed=1)
    seen, real_fit = [], training.fit

    def recording_fit(spec_, params, x_train, y_train, *args, **kwargs):
        seen.append((params["classes"], set(y_train.tolist()), len(y_train)))
        return real_fit(spec_, params, x_train, y_train, *args, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)
    fit, val_proba = specialists.final_fit(
        spec, tuning.final_params(spec, spec.budget("smoke"), {}), tiny, 1, general.model)
    in_group = int(np.isin(tiny.y_train, GROUP).sum())
    assert seen == [(4, {0, 1, 2, 3}, in_group)]  # the group's rows, renumbered, four outputs
    assert val_proba.shape == (len(tiny.y_val), 10)
    np.testing.assert_allclose(val_proba, fit.predict_proba(tiny.x_val), atol=1e-6)
    # the folded model is the generalist with the group's mass shared out by the specialist
    special = fit.model.get_layer("specialist")
    x_val = training.features("keras", tiny.x_val)
    by_hand = folded_by_hand(general.predict_proba(tiny.x_val),
                             np.asarray(special.predict(x_val, verbose=0)))
    np.testing.assert_allclose(val_proba, by_hand, atol=1e-5)
    assert fit.info["generalist"] == "cnn_modern" and fit.info["specialist_classes"] == "0,2,4,6"
    assert 0.0 <= fit.info["within_group_val_accuracy"] <= 1.0
    assert "val_accuracy_mirror" not in fit.info  # its TTA figures are within the group


SPECIALIST = """
family: cnn
reducer: none
model: cnn_modern
specialist: {generalist: g, classes: [0, 2, 4, 6]}
budget:
  smoke: {n_trials: 0, timeout: 10}
  quick: {n_trials: 0, timeout: 10}
  full: {n_trials: 0, timeout: 10}
"""


def write_pair(folder, specialist: str = SPECIALIST, generalist_model: str = "cnn_modern"):
    (folder / "g.yaml").write_text(SPECIALIST.replace(
        "specialist: {generalist: g, classes: [0, 2, 4, 6]}\n", "").replace(
        "model: cnn_modern", f"model: {generalist_model}"))
    (folder / "s.yaml").write_text(specialist)


def test_specialists_run_after_their_generalist_and_need_it(tmp_path):
    write_pair(tmp_path)
    assert [s.name for s in pipelines.resolve("s,g", tmp_path)] == ["g", "s"]
    assert pipelines.load("s", tmp_path).classes == GROUP
    with pytest.raises(ConfigError, match="s is a specialist folded into g: select g too"):
        pipelines.resolve("s", tmp_path)


def test_optional_pipelines_run_only_when_named(tmp_path):
    write_pair(tmp_path, SPECIALIST + "optional: true\n")
    assert [s.name for s in pipelines.resolve("all", tmp_path)] == ["g"]
    assert [s.name for s in pipelines.resolve("all,s", tmp_path)] == ["g", "s"]
    assert [s.name for s in pipelines.resolve("s,g", tmp_path)] == ["g", "s"]


def test_a_changed_generalist_changes_its_specialists_digest(tmp_path):
    write_pair(tmp_path)
    before = pipelines.load("s", tmp_path).digest
    (tmp_path / "g.yaml").write_text((tmp_path / "g.yaml").read_text().replace(
        "timeout: 10}\n  quick", "timeout: 11}\n  quick"))
    assert pipelines.load("s", tmp_path).digest != before


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("generalist: g", "generalist: nobody"), "'nobody' is not another"),
    (lambda t: t.replace("generalist: g", "generalist: s"), "'s' is not another"),
    (lambda t: t.replace("[0, 2, 4, 6]", "[0, 0, 4]"), "2-9 distinct class numbers"),
    (lambda t: t.replace("[0, 2, 4, 6]", "[3, 10]"), "2-9 distinct class numbers"),
    (lambda t: t.replace("[0, 2, 4, 6]", "[3]"), "2-9 distinct class numbers"),
    (lambda t: t.replace("classes: [0, 2, 4, 6]", "group: [0, 2]"), "mapping with generalist"),
    (lambda t: t.replace("model: cnn_modern", "model: logreg"), "needs an image model"),
    (lambda t: t + "search: {learning_rate: {type: float, low: 0.01, high: 0.2}}\n",
     "remove its search space"),
])
def test_bad_specialist_definitions_are_rejected(tmp_path, edit, message):
    write_pair(tmp_path, edit(SPECIALIST))
    with pytest.raises(ConfigError, match=message):
        pipelines.load("s", tmp_path)


def test_a_generalist_must_be_an_image_model(tmp_path):
    write_pair(tmp_path, generalist_model="logreg")
    with pytest.raises(ConfigError, match="must be an image model"):
        pipelines.load("s", tmp_path)


def test_a_specialist_without_its_generalists_model_fails_in_one_line(tiny, tracking_store):
    """Its generalist failed (or was left out): the specialist says so and how to retry,
    before training anything."""
    from study import attempts, tracking

    spec = pipelines.load("cnn_upper")
    with tracking.compare_run("smoke", 1, ["cnn_modern", "cnn_upper"]) as parent_id:
        with pytest.raises(ConfigError, match="cnn_upper folds into cnn_modern, which has no "
                           "final model in this compare"):
            attempts.final_fit(spec, tuning.final_params(spec, spec.budget("smoke"), {}), tiny,
                               1, parent_id)


def test_a_specialists_fit_seconds_include_its_generalists(tiny, tracking_store):
    """Issue 42, finding 5: the folded model contains its generalist, so its fit_seconds is
    its own network's fit plus the generalist's fit_seconds as logged (own_fit_seconds keeps
    its own); before, it was its own network's time only."""
    import mlflow

    from study import attempts, serving, tracking
    from study.evaluation import evaluate
    from study.tracking.runs import _final_metrics

    spec = pipelines.load("cnn_upper")
    # an untrained generalist network will do: only its logged fit_seconds matter here
    general = training.FitResult(cnn_modern(widths="8-8", steps_per_epoch=2, epochs=1),
                                 "keras", 0.0)
    with tracking.compare_run("smoke", 1, [spec.generalist, spec.name]) as parent_id:
        with mlflow.start_run(run_name=spec.generalist, nested=True, tags={
                "role": "final", "pipeline": spec.generalist}):
            tracking.log_model(general, "none", tiny.x_val[:5],
                               log_classifier=serving.log_model)
            mlflow.log_metric("fit_seconds", 123.0)
        fit, _ = attempts.final_fit(spec, tuning.final_params(spec, spec.budget("smoke"), {}),
                                    tiny, 1, parent_id)
    metrics = _final_metrics(tuning.TuneResult("s", {}, None, 0, 0, 0.0), fit,
                             evaluate(tiny.y_test, fit.predict_proba(tiny.x_test)), 0.5, 0.1,
                             1, 1)
    assert 0 < metrics["own_fit_seconds"] < 123.0
    assert metrics["fit_seconds"] == pytest.approx(123.0 + metrics["own_fit_seconds"])
