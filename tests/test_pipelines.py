"""Every registered pipeline builds, fits and predicts on real images; definitions are validated."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import optuna
import pytest

from study import boosting, pipelines, processes, specialists, training, tuning
from study.errors import ConfigError
from study.models import BUILDERS, get_builder
from study.models.reducers import PcaUmap


@pytest.fixture(scope="module")
def generalists():
    """Generalists fitted once for the module: every specialist of one generalist folds into it."""
    return {}


@pytest.mark.parametrize("name", pipelines.available())
def test_pipeline_builds_fits_and_predicts(name, tiny, generalists):
    spec = pipelines.load(name)
    # One draw from the search space, the smoke fit settings: what a tuning trial does.
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = {**tuning.final_params(spec, spec.budget("smoke"), {}), **tuning.suggest(trial, spec.search)}
    if spec.generalist:  # a specialist: its group's rows, folded into its generalist's network
        if spec.generalist not in generalists:
            general = pipelines.load(spec.generalist)
            generalists[spec.generalist] = training.fit(
                general, tuning.final_params(general, general.budget("smoke"), {}),
                tiny.x_train, tiny.y_train, tiny.x_val, tiny.y_val, seed=1).model
        result, _ = specialists.final_fit(spec, params, tiny, 1, generalists[spec.generalist])
    elif spec.boost:  # boosted: its out-of-fold pair in two worker processes, then itself
        result, _ = boosting.final_fit(spec, params, tiny, 1)
        assert result.info["boost_rows"] > len(tiny.y_train)  # a smoke pair misses some rows
    else:
        result = training.fit(spec, params, tiny.x_train, tiny.y_train, tiny.x_val, tiny.y_val,
                              seed=1)
    proba = result.predict_proba(tiny.x_test)
    assert proba.shape == (len(tiny.y_test), 10)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    accuracy = (proba.argmax(axis=1) == tiny.y_test).mean()
    if spec.family == "baseline":
        assert accuracy == pytest.approx(0.1)  # one class of ten, balanced test rows
    else:
        assert accuracy > 0.15  # beyond chance (0.1) after a smoke-sized fit on 300 images
    assert training.count_params(result.model, result.kind) > 0


def test_cnn_seed1_is_the_seed_architecture():
    model = get_builder("cnn_seed1").build()
    assert model.count_params() == 693_962
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    assert model.layers[0].padding == "valid" and model.layers[0].filters == 32
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("name, expected", [
    ("cnn_seed1", 693_962),
    ("cnn_seed2", 381_066),   # 320 + 18,496 + 295,040 + 33,024 + 32,896 + 1,290
    ("cnn_seed3", 576_330),   # 640 + 73,856 + 73,792 + 295,040 + 33,024 + 65,792 + 32,896 + 1,290
    ("mlp_seed", 42_310),     # 784*50+50 + 50*50+50 + 50*10+10
])
def test_seed_architectures_parameter_counts(name, expected):
    assert get_builder(name).build().count_params() == expected


def test_seed_cnn_layer_sequences():
    kinds = lambda m: [type(layer).__name__ for layer in m.layers]  # noqa: E731
    assert kinds(get_builder("cnn_seed2").build()) == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout",
        "Dense", "Dropout", "Dense", "Dense"]
    m3 = get_builder("cnn_seed3").build()
    assert kinds(m3) == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense",
        "Dropout", "Dense", "Dropout", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [l.rate for l in m3.layers if type(l).__name__ == "Dropout"] == [0.25, 0.5, 0.25, 0.1]


def test_mlp_topologies_from_the_seed():
    build = get_builder("mlp_seed").build
    assert build(hidden="53").count_params() == 784 * 53 + 53 + 53 * 10 + 10
    three = build(hidden="47x47x47", activation="leaky_relu")
    assert [l.units for l in three.layers if type(l).__name__ == "Dense"] == [47, 47, 47, 10]
    with pytest.raises(ValueError, match="activation"):
        build(activation="swish")


def test_model_rebuilds_from_best_params(tiny):
    """Builder and search space are apart: best_params alone rebuild the same model."""
    spec = pipelines.load("logreg")
    params = tuning.final_params(spec, spec.budget("smoke"), {"C": 0.5})
    a = training.fit(spec, params, tiny.x_train, tiny.y_train, seed=3)
    b = training.fit(spec, params, tiny.x_train, tiny.y_train, seed=3)
    assert a.model.named_steps["model"].C == 0.5
    assert np.array_equal(a.predict_proba(tiny.x_test), b.predict_proba(tiny.x_test))


def test_unknown_builder_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        get_builder("resnet9000")
    assert all(name in str(info.value) for name in BUILDERS)


def test_unknown_pipeline_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown pipeline.*nope.*valid: .*logreg"):
        pipelines.resolve("logreg,nope")


def write(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.yaml").write_text(text)


GOOD = """
family: linear
reducer: none
model: logreg
search: {C: {type: float, low: 0.01, high: 1, log: true}}
budget:
  smoke: {n_trials: 1, timeout: 10}
  quick: {n_trials: 1, timeout: 10}
  full: {n_trials: 1, timeout: 10}
"""


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("reducer: none", "reducer: tsne"), "reducer 'tsne' is not one of"),
    (lambda t: t.replace("model: logreg", "model: nothing"), "unknown model builder 'nothing'"),
    (lambda t: t.replace("  full: {n_trials: 1, timeout: 10}\n", ""), "budget lacks profile"),
    (lambda t: t.replace("n_trials: 1, timeout: 10}\n  quick", "n_trials: -1, timeout: 10}\n  quick"),
     "n_trials must be an integer >= 0"),
    (lambda t: t.replace("low: 0.01", "low: 0"), "low must be > 0"),
    (lambda t: t.replace("type: float", "type: complex"), "needs type one of"),
    (lambda t: t + "  [", "not valid YAML"),
])
def test_bad_pipeline_definitions_are_rejected(tmp_path, edit, message):
    write(tmp_path, "p", GOOD)
    assert pipelines.load("p", tmp_path).search["C"]["high"] == 1
    write(tmp_path, "p", edit(GOOD))
    with pytest.raises(ConfigError, match=message):
        pipelines.load("p", tmp_path)


def test_definition_digest_tracks_content(tmp_path):
    write(tmp_path, "p", GOOD)
    first = pipelines.load("p", tmp_path).digest
    write(tmp_path, "p", GOOD.replace("high: 1", "high: 2"))
    assert pipelines.load("p", tmp_path).digest != first


def test_bad_parameter_is_a_config_error(tiny):
    spec = pipelines.load("logreg")
    with pytest.raises(ConfigError, match="logreg"):
        training.fit(spec, {"C": -1.0}, tiny.x_train, tiny.y_train)
    with pytest.raises(ConfigError, match="bad parameter"):
        training.fit(spec, {"gamma": 1.0}, tiny.x_train, tiny.y_train)


@pytest.mark.parametrize("name", [n for n in pipelines.available()
                                  if pipelines.load(n).reducer != "none"])
def test_reducer_is_fitted_on_training_rows_only(name, tiny):
    """The reducer sits inside the Pipeline: it sees exactly the rows passed to fit()."""
    spec = pipelines.load(name)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = {**tuning.final_params(spec, spec.budget("smoke"), {}), **tuning.suggest(trial, spec.search)}
    result = training.fit(spec, params, tiny.x_train, tiny.y_train, tiny.x_val, tiny.y_val, seed=1)
    reducer = result.model.named_steps["reduce"]
    x_train = training.features("sklearn", tiny.x_train)
    if spec.reducer == "pca":
        assert reducer.n_samples_ == len(tiny.y_train)
        np.testing.assert_allclose(reducer.mean_, x_train.mean(axis=0), atol=1e-6)
        both = np.vstack([x_train, training.features("sklearn", tiny.x_val)])
        assert not np.allclose(reducer.mean_, both.mean(axis=0), atol=1e-6)  # the test can fail
    else:
        assert reducer.umap_.embedding_.shape[0] == len(tiny.y_train)
        assert reducer.pca_.n_samples_ == len(tiny.y_train)
        np.testing.assert_allclose(reducer.umap_._raw_data, reducer.pca_.transform(x_train),
                                   atol=1e-5)


@pytest.mark.slow
def test_umap_reducer_transforms_alike_fresh_reloaded_and_refitted(fmnist):
    """pynndescent's index places new points differently once unpickled, and a reducer from the
    fit cache is an unpickled one: figures moved with the order of the pipelines (issue 16) and
    a logged model served unlike the scored one. Fresh, reloaded and refitted must agree, and
    an image's embedding must not depend on the batch it comes in (scored among 10,000 test
    images, served alone or in a request of a few).
    4,200 rows: above UMAP's 4,096-row cut-off for exact neighbours, so the index is used."""
    x = training.features("sklearn", fmnist.x_train[:4200])
    new = training.features("sklearn", fmnist.x_test[:600])
    fitted = PcaUmap(n_epochs=60, random_state=3).fit(x)
    first = fitted.transform(new)
    np.testing.assert_array_equal(fitted.transform(new[:7]), first[:7])
    np.testing.assert_array_equal(fitted.transform(new[300:301]), first[300:301])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fitted)).transform(new), first)
    np.testing.assert_array_equal(PcaUmap(n_epochs=60, random_state=3).fit(x).transform(new),
                                  first)


def test_fit_cache_of_a_killed_process_is_swept(tmp_path):
    """A killed process leaves its reducer cache behind; the next one removes it, not a live one's
    nor one of another host's (a shared temp folder)."""
    import signal
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.send_signal(signal.SIGKILL)
    child.wait()
    host = processes.this_host()
    dead = tmp_path / f"{training.FIT_CACHE_PREFIX}{host}:{child.pid}-abc"
    live = tmp_path / f"{training.FIT_CACHE_PREFIX}{host}:{os.getpid()}-def"
    elsewhere = tmp_path / f"{training.FIT_CACHE_PREFIX}other-host:{child.pid}-ghi"
    # named the old way (host name alone): which container made it is unknown, so it stays
    old_style = tmp_path / f"{training.FIT_CACHE_PREFIX}{socket.gethostname()}:{child.pid}-jkl"
    other = tmp_path / "unrelated-folder"
    for folder in (dead, live, elsewhere, old_style, other):
        (folder / "joblib").mkdir(parents=True)

    assert training.sweep_fit_caches(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists() and elsewhere.exists() and other.exists()
    assert old_style.exists()
