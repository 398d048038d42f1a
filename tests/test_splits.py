"""The 80/20 stratified split with seed 2020, and the smoke subsample."""

import numpy as np

from study import config, data


def test_split_is_stratified_80_20(fmnist):
    train_idx, val_idx = data.split_indices(fmnist.y_train)
    assert len(train_idx) == 48000 and len(val_idx) == 12000
    assert np.bincount(fmnist.y_train[train_idx]).tolist() == [4800] * 10
    assert np.bincount(fmnist.y_train[val_idx]).tolist() == [1200] * 10
    assert not set(train_idx) & set(val_idx)
    assert len(set(train_idx) | set(val_idx)) == 60000


def test_split_is_deterministic_and_seeded(fmnist):
    a = data.split_indices(fmnist.y_train)
    b = data.split_indices(fmnist.y_train)
    other = data.split_indices(fmnist.y_train, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], other[1])


def test_profiles_subsample_only_train_and_validation(fmnist):
    smoke = data.make_splits(fmnist, config.PROFILES["smoke"])
    quick = data.make_splits(fmnist, config.PROFILES["quick"])
    assert np.bincount(smoke.y_train).tolist() == [60] * 10  # stratified 600
    assert np.bincount(smoke.y_val).tolist() == [30] * 10
    assert set(smoke.train_idx) <= set(quick.train_idx)
    assert set(smoke.val_idx) <= set(quick.val_idx)
    # the test set is never subsampled or touched by the split
    assert np.array_equal(smoke.y_test, fmnist.y_test) and len(quick.y_test) == 10000
    assert np.array_equal(quick.x_train, fmnist.x_train[quick.train_idx])


def test_feature_scaling():
    images = np.array([[[0, 255], [128, 1]]], dtype=np.uint8)
    flat = data.as_flat(images)
    assert flat.shape == (1, 4) and flat.dtype == np.float32
    assert flat.min() == 0.0 and flat.max() == 1.0
    assert data.as_image(images).shape == (1, 2, 2, 1)
