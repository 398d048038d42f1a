"""Boosting by resampling (study/boosting.py): which rows repeat, and a boost section's checks."""

import numpy as np
import pytest

from study import boosting, config, pipelines, tuning
from study.errors import ConfigError


def test_rows_repeat_by_how_wrong_the_out_of_fold_networks_were():
    p_true = np.array([1.0, 0.0, 0.5, 0.75])
    rows = boosting.resample(p_true, 6.0, np.random.default_rng(0))
    copies = np.bincount(rows, minlength=4)
    assert copies[0] == 1 and copies[1] == 7 and copies[2] == 4  # 1 + 6 (1 - p), whole numbers
    assert copies[3] in (2, 3)  # 2.5: the fraction drawn
    assert np.all(np.diff(rows) >= 0)  # each row's copies together, in row order
    again = boosting.resample(p_true, 6.0, np.random.default_rng(0))
    assert np.array_equal(rows, again)
    assert np.array_equal(boosting.resample(p_true, 0.0, np.random.default_rng(0)), np.arange(4))


def test_fractional_copies_follow_the_weight_on_average():
    p_true = np.full(20000, 0.9)  # weight 1.6: one copy, a second 60% of the time
    copies = np.bincount(boosting.resample(p_true, 6.0, np.random.default_rng(1)), minlength=20000)
    assert set(np.unique(copies)) == {1, 2}
    assert copies.mean() == pytest.approx(1.6, abs=0.02)


def test_halves_split_every_class_in_two():
    y = np.repeat(np.arange(10), [50, 51, 40, 41, 30, 31, 20, 21, 10, 11])
    half = boosting.stratified_halves(y, np.random.default_rng(2020))
    for c in range(10):
        assert half[y == c].sum() == (y == c).sum() // 2
    assert not np.array_equal(half, boosting.stratified_halves(y, np.random.default_rng(1)))


BOOSTED = config.pipelines_dir() / "cnn_resnet_boosted.yaml"


@pytest.fixture
def shipped(tmp_path):
    """A copy of the shipped pipeline definitions, to edit."""
    for path in config.pipelines_dir().glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    return tmp_path


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("from: cnn_modern", "from: nothing"), "boost.from 'nothing' is not another"),
    (lambda t: t.replace("from: cnn_modern", "from: logreg"), "must be a plain image pipeline"),
    (lambda t: t.replace("from: cnn_modern", "from: cnn_upper"), "must be a plain image pipeline"),
    (lambda t: t.replace("  k: 6 ", "  k: -1 "), "boost.k a number >= 0"),
    (lambda t: t.replace("  epochs: 10\n", "  epochs: 0\n"), "boost.epochs must be an integer"),
    (lambda t: t.replace("  epochs: 10\n", ""), "boost must be a mapping with from"),
])
def test_bad_boost_sections_are_rejected(shipped, edit, message):
    tmp_path = shipped
    assert pipelines.load("cnn_resnet_boosted", tmp_path).boost == {
        "from": "cnn_modern", "epochs": 10, "k": 6.0}
    (tmp_path / BOOSTED.name).write_text(edit(BOOSTED.read_text()))
    with pytest.raises(ConfigError, match=message):
        pipelines.load("cnn_resnet_boosted", tmp_path)


def test_a_changed_source_recipe_changes_the_boosted_digest(shipped):
    tmp_path = shipped
    before = pipelines.load("cnn_resnet_boosted", tmp_path).digest
    source = tmp_path / "cnn_modern.yaml"
    source.write_text(source.read_text().replace("learning_rate: 0.1\n", "learning_rate: 0.05\n"))
    assert pipelines.load("cnn_resnet_boosted", tmp_path).digest != before


def test_a_daemon_process_fits_the_pair_itself(tiny, monkeypatch, caplog):
    """Where it may not start processes (a Dask worker is a daemon), the pair fits in-process."""
    class Daemon:
        daemon = True

    monkeypatch.setattr(boosting, "current_process", lambda: Daemon())
    monkeypatch.setattr(boosting, "ProcessPoolExecutor", None)  # would fail if it were used
    source = pipelines.load("cnn_modern")
    params = {**tuning.final_params(source, source.budget("smoke"), {}), "epochs": 1}
    with caplog.at_level("WARNING"):
        p_true, accuracy = boosting.out_of_fold(source, params, tiny, 1, np.random.default_rng(0),
                                                "test")
    assert p_true.shape == tiny.y_train.shape and np.all((p_true > 0) & (p_true <= 1))
    assert 0 <= accuracy <= 1
    assert "runs in this process" in caplog.text
