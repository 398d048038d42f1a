"""The MLP ablation: gradients checked against finite differences, and a smoke run logged."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from study import ablation, data
from study.models.keras_models import mlp_seed


def test_mlp_gradients_match_central_finite_differences(fmnist):
    """As the seed did for its hand-built MLP: float64, ten examples (one per class)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    rows = [int(np.flatnonzero(fmnist.y_train == c)[0]) for c in range(10)]
    x = tf.constant(data.as_image(fmnist.x_train[rows]).astype(np.float64))
    y = tf.constant(fmnist.y_train[rows].astype(np.int64))
    model = mlp_seed(hidden="50x50", activation="tanh", l2=1e-3, precision="float64")

    def loss() -> tf.Tensor:  # mean cross-entropy plus the L2 penalty, as training minimises it
        proba = model(x, training=True)
        ce = -tf.reduce_mean(tf.math.log(tf.gather(proba, y, batch_dims=1)))
        return ce + tf.add_n(model.losses)

    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, model.trainable_variables)
    assert value.dtype == tf.float64
    rng = np.random.default_rng(0)
    eps, checked = 1e-6, 0
    for var, grad in zip(model.trainable_variables, grads):
        flat = var.numpy().ravel()
        for i in rng.choice(flat.size, size=min(15, flat.size), replace=False):
            old = flat[i]
            numeric = []
            for sign in (1, -1):
                flat[i] = old + sign * eps
                var.assign(flat.reshape(var.shape))
                numeric.append(float(loss()))
            flat[i] = old
            var.assign(flat.reshape(var.shape))
            fd = (numeric[0] - numeric[1]) / (2 * eps)
            analytic = float(np.asarray(grad).ravel()[i])
            assert abs(fd - analytic) <= 1e-7 + 1e-5 * abs(analytic), (var.name, i, fd, analytic)
            checked += 1
    assert checked == sum(min(15, int(np.prod(v.shape))) for v in model.trainable_variables)


@pytest.mark.slow
def test_smoke_ablation_logs_every_setting(tracking_store):
    from study import tracking

    # a finished compare in the store: the ablation belongs to it (the default, "latest")
    client = mlflow.MlflowClient()
    compare = client.create_run(tracking.ensure_experiment("fashion-mnist"),
                                tags={"role": "compare"}).info.run_id
    client.set_terminated(compare, "FINISHED")
    result = ablation.run("smoke")
    settings = sum(len(e.settings) for e in ablation.experiments())
    assert settings == 21 and len(result["rows"]) == settings
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("ablation")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'ablation_setting'")
    assert len(runs) == settings
    assert all(r.data.tags["mlflow.parentRunId"] == result["run_id"] for r in runs)
    for r in runs:
        assert 0.0 < r.data.metrics["test_accuracy"] <= 1.0 and r.data.metrics["epochs"] >= 1
    topologies = {r["setting"] for r in result["rows"] if r["experiment"] == "topology"}
    assert topologies == {f"hidden={h}" for h in ("50x50", "50x100", "100x50", "25x50", "50x25",
                                                    "53", "47x47x47")}
    l2 = [r for r in result["rows"] if r["experiment"] == "l2"]
    assert {r["params"]["l2"] for r in l2} == {0.0, 1e-5, 1e-4, 1e-3}
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "ablation")}
    assert {f"ablation/ablation_{k}.png" for k in ("lr_batch", "l2", "activation", "topology")} \
        <= artifacts and "ablation/ablation.md" in artifacts
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    # "best overall" is a setting that was trained: the params of a logged run, batch included
    best_run = client.get_run(result["best_run_id"])
    assert best_run.data.tags["experiment_step"] == "topology"
    assert {k: str(v) for k, v in result["best"].items()} == \
        {k: v for k, v in best_run.data.params.items() if k in result["best"]}
    assert result["best"]["batch_size"] == 128  # experiments 2-4 train at the seed's batch
    # Each experiment carries on from the setting best on validation (never on test): the next
    # experiment's runs were trained with it, the last one's is "best". The run is seeded and
    # the validation and test winners differ in some experiment, so a choice on test fails.
    exps, differ = ablation.experiments(), 0
    for exp, after in zip(exps, [*exps[1:], None]):
        found = [r for r in result["rows"] if r["experiment"] == exp.key]
        on_val = max(found, key=lambda r: r["best_val_accuracy"])
        differ += on_val is not max(found, key=lambda r: r["test_accuracy"])
        if after is None:
            assert result["best"] == on_val["params"]
            continue
        skip = {*after.settings[0], "batch_size"}  # varied next; experiments 2-4 train at 128
        for row in (r for r in result["rows"] if r["experiment"] == after.key):
            assert {k: v for k, v in row["params"].items() if k not in skip} == \
                {k: v for k, v in on_val["params"].items() if k not in skip}, (exp.key, row)
    assert differ
    assert result["compare_run_id"] == compare
    assert tracking.ablation_run_of(compare).info.run_id == result["run_id"]
    assert tracking.ablation_run_of("another-compare") is None  # its report shows none
