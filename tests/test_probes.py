"""Throughput probes (study.probes): real networks timed on this host, cached per host; the
budget's estimates built from them scale with a recipe's epochs and rows."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pytest

from study import budget_run, config, pipelines, probes, timebudget


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(config.PROBE_CACHE_ENV, str(tmp_path / "probes"))
    return config.probe_cache_file()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the tests that probe a real network: it is probed once for them all."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(config.PROBE_CACHE_ENV, str(tmp_path_factory.mktemp("probes")))
        yield config.probe_cache_file()


def counting(figures):
    calls = []

    def measure():
        calls.append(1)
        return dict(figures)

    return measure, calls


def test_a_real_probe_is_cached_for_this_host_and_read_back(shared_cache):
    """The smoke profile's cnn_modern (widths 8-8-16-16): probed once, in seconds, written to
    the cache; a second call on the same host reads the file and trains nothing."""
    spec = pipelines.load("cnn_modern")
    budget = spec.budget("smoke")
    key = probes.network_key(spec, budget)
    assert "8-8-16-16" in key and "batch=32" in key  # smoke widths: another architecture
    assert key != probes.network_key(spec, spec.budget("quick"))
    start = time.perf_counter()
    first, hit = probes.cached(key, lambda: probes.probe_network(spec, budget))
    # tracing the network is most of it: ~30 s on this 2-core host under a load of 4
    assert not hit and time.perf_counter() - start < 120
    assert first["train_images_per_second"] > 0 and first["predict_images_per_second"] > 0
    assert first["batches"] >= 3
    # building and tracing, paid once a fit: within the probe's own time
    assert 0 < first["setup_seconds"] < first["probe_seconds"]
    stored = json.loads(shared_cache.read_text())
    assert [entry["probes"][key] for entry in stored.values()] == [first]

    def must_not_probe():
        raise AssertionError("probed again on the same host")

    again, hit = probes.cached(key, must_not_probe)
    assert hit and again == first


def test_another_host_probes_again_and_both_are_kept(cache):
    measure, calls = counting({"train_images_per_second": 100.0})
    here = probes.fingerprint()
    there = {**here, "cpu": "another CPU"}
    probes.cached("net:x", measure, here)
    probes.cached("net:x", measure, here)
    assert len(calls) == 1
    probes.cached("net:x", measure, there)
    assert len(calls) == 2
    assert len(json.loads(cache.read_text())) == 2  # one entry per host


def test_a_corrupt_cache_is_ignored_with_a_warning(cache, caplog):
    cache.parent.mkdir(parents=True)
    cache.write_text('{"half written": ')
    measure, calls = counting({"train_images_per_second": 100.0})
    with caplog.at_level(logging.WARNING, logger="study.probes"):
        figures, hit = probes.cached("net:x", measure)
    assert not hit and calls == [1] and figures == {"train_images_per_second": 100.0}
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert probes.cached("net:x", measure) == (figures, True)  # rewritten, whole


def test_a_probed_network_estimate_scales_with_its_epochs_and_rows(shared_cache):
    """An Estimate from the smoke cnn_modern's probe: its fit is epochs x an epoch, an epoch
    grows with the training rows, and the budget planner's `configured` follows the epochs a
    budget sets."""
    spec = pipelines.load("cnn_modern")
    smoke = config.profile("smoke")
    est, hit = budget_run.probed_estimate(spec, smoke)
    assert hit and est.source == "probe" and est.epochs == 3  # the smoke recipe's epochs
    # a re-plan corrects it with its own architecture's estimates only (cnn_modern_b's too)
    assert est.kind == "network:cnn_modern" == budget_run.kind_of(pipelines.load("cnn_modern_b"))
    assert budget_run.kind_of(pipelines.load("mlp_seed")) == "network:mlp_seed"
    assert est.fit_seconds == pytest.approx(3 * est.epoch_seconds)
    rates = json.loads(shared_cache.read_text())
    setup = [entry["probes"][probes.network_key(spec, spec.budget(smoke))]["setup_seconds"]
             for entry in rates.values()][0]
    assert est.overhead >= budget_run.LOG_SECONDS + setup  # a fit's setup counted once
    double = dataclasses.replace(spec, budgets={
        **spec.budgets, "smoke": dataclasses.replace(
            spec.budgets["smoke"], fit={**spec.budgets["smoke"].fit, "epochs": 6})})
    twice, hit = budget_run.probed_estimate(double, smoke)
    assert hit  # same architecture, same probe
    assert twice.fit_seconds == pytest.approx(2 * est.fit_seconds)
    more_rows = dataclasses.replace(smoke, train_subsample=6000)
    bigger, _ = budget_run.probed_estimate(spec, more_rows)
    assert bigger.epoch_seconds > 5 * est.epoch_seconds  # 10x the rows, same validation
    assert est.trials == 1 and est.tuning_seconds > 0  # the smoke recipe's one trial
    one = dataclasses.replace(spec.budgets["smoke"], n_trials=0,
                              fit={**spec.budgets["smoke"].fit, "epochs": 1})
    assert est.configured(one) == pytest.approx(est.overhead + est.epoch_seconds)


@dataclasses.dataclass
class Net:
    name: str = "net"


def test_allot_chooses_epochs_inside_the_room_and_a_cap_beyond_it():
    """A network's epochs end inside its allotment with the margin; its time cap is a safety
    net above the room, so a slightly slow epoch never stops the schedule mid-way."""
    est = timebudget.Estimate(10.0 + 16 * 20.0, 16 * 20.0, epochs=16, source="probe")
    budget = pipelines.Budget("quick", 0, 60.0, fit={"epochs": 16, "max_seconds": 1200})
    allotment = timebudget.allot(Net(), budget, est, 200.0, tunes=False)
    room = 200.0 - est.overhead
    epochs, cap = allotment.budget.fit["epochs"], allotment.budget.fit["max_seconds"]
    assert epochs == 8  # floor(190 / (20 x 1.1)); 9 would end at 190 s with no margin
    assert epochs * est.epoch_seconds * timebudget.EPOCH_MARGIN <= room < cap
    assert cap == pytest.approx(timebudget.SAFETY_CAP * room)
    assert allotment.expected == pytest.approx(est.overhead + epochs * est.epoch_seconds)
    # never above the recipe's own cap
    tight = dataclasses.replace(budget, fit={"epochs": 16, "max_seconds": 200})
    assert timebudget.allot(Net(), tight, est, 200.0,
                            tunes=False).budget.fit["max_seconds"] == 200


def test_kinds_keep_umap_apart_from_the_other_estimators():
    """A re-plan's kinds for the real pipelines: UMAP's by its reducer (with its warm-up), the
    other scikit-learn estimators together, PCA ones included."""
    kinds = {name: budget_run.kind_of(pipelines.load(name))
             for name in ("umap_knn", "umap_svm", "knn", "pca_rf", "hgb", "dummy")}
    assert kinds == {"umap_knn": "reducer:umap", "umap_svm": "reducer:umap", "knn": "one-fit",
                     "pca_rf": "one-fit", "hgb": "one-fit", "dummy": "one-fit"}
    assert budget_run.WARMUP_SECONDS["umap"] > 0
