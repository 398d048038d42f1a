"""Issue 14: how much could any ensemble of a compare's models still gain, and from where?

Reads a stored compare's final models (their logged validation and test probabilities, the
ensemble stage's candidates and exclusions) and prints, for the test set (a diagnostic: nothing
here feeds the product or selects anything):
- the error overlap of the strong models (test accuracy within 1 point of the best): how many
  test images all of them get wrong, most of them, some of them; no average of these members
  can get right an image that every one of them gets wrong;
- the bound: greedy weights fitted on the test labels themselves;
- two other ways to combine the same members, fitted on validation: temperature-scaling each
  member (one temperature for its log probabilities, by validation log loss) before the
  selection, and stacking (a multinomial logistic regression on all members' log
  probabilities, its regularisation chosen by 5-fold cross-validation on validation);
- a member that costs no training: k-nearest neighbours on the penultimate features of a
  network (its logged model, mirror-averaged; cnn_modern unless --network says otherwise),
  added to the selection on validation like any candidate.

    MLFLOW_TRACKING_URI=sqlite:////tmp/c30/mlflow.db .venv/bin/python \
        benchmarks/ensemble_headroom.py --run-id f9a41e87481941a98a95ea533f068e71

Measured 2026-11-29 on the AVX2 host (61 s), stop 30's five-specialist quick compare (ensemble
0.9407, best single cnn_upper_d 0.9385): the 7 strong models (cnn_modern, cnn_modern_b, the five
specialists) all get 355 test images wrong, most of them 249 more, and at least one of them is
right on 0.9645 (the majority on 0.9396); weights fitted on the test set reach 0.9442. The k-NN
on cnn_modern's features scores 0.9374 (cnn_modern 0.9363) but shares 74% of its errors: the
ensemble with it 0.9402, without 0.9407. Temperature-scaled members 0.9401, stacking 0.9376.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diverse_members import ensemble_line, stored_compare  # noqa: E402  (a sibling script)
from study.ensemble import accuracy  # noqa: E402


def overlap(test: dict[str, np.ndarray], y: np.ndarray, within: float = 0.01) -> str:
    """How the strong models' test errors overlap: images every one, most, some get wrong."""
    best = max(accuracy(p, y) for p in test.values())
    strong = sorted(n for n, p in test.items() if accuracy(p, y) >= best - within)
    wrong = np.array([test[n].argmax(axis=1) != y for n in strong]).mean(axis=0)
    return (f"{len(strong)} strong models ({', '.join(strong)}): of {len(y):,} test images, "
            f"{int(np.sum(wrong == 1)):,} all get wrong, {int(np.sum((wrong > 0.5) & (wrong < 1))):,}"
            f" most, {int(np.sum((wrong > 0) & (wrong <= 0.5))):,} half or fewer; right by at "
            f"least one: {float(np.mean(wrong < 1)):.4f}, by most: {float(np.mean(wrong < 0.5)):.4f}")


def temperature_scaled(val: np.ndarray, y: np.ndarray):
    """A function rescaling probabilities by the temperature that minimises validation log loss."""
    from scipy.optimize import minimize_scalar

    def scaled(proba: np.ndarray, t: float) -> np.ndarray:
        z = np.log(np.clip(proba, 1e-12, 1.0)) / t
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    t = minimize_scalar(lambda t: -np.mean(np.log(scaled(val, t)[np.arange(len(y)), y] + 1e-12)),
                        bounds=(0.2, 5.0), method="bounded").x
    return lambda proba: scaled(proba, t)


def stacked(val: dict, test: dict, names: list[str], y: np.ndarray) -> np.ndarray:
    """Test probabilities of a logistic regression on the members' log probabilities, fitted
    on validation (regularisation by 5-fold cross-validation there)."""
    from sklearn.linear_model import LogisticRegressionCV

    def logs(probas: dict) -> np.ndarray:
        return np.hstack([np.log(np.clip(probas[n], 1e-7, 1.0)) for n in names])

    model = LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1], cv=5, max_iter=2000, random_state=0)
    return model.fit(logs(val), y).predict_proba(logs(test))


def features(model_uri: str, images: list[np.ndarray]) -> list[np.ndarray]:
    """Penultimate features (the input of the last Dense layer) of a logged Keras network,
    averaged over each image and its mirror."""
    import keras
    import mlflow

    from study import serving

    network = keras.saving.load_model(
        str(Path(serving.native_model_path(mlflow.artifacts.download_artifacts(model_uri)))
            / "data" / "model.keras"), compile=False)
    inner = next((layer for layer in network.layers if isinstance(layer, keras.Sequential)),
                 network)  # a mirror-TTA wrapper holds the network as one layer
    body = keras.Sequential(inner.layers[:-1])
    return [(body.predict(x, batch_size=512, verbose=0)
             + body.predict(x[:, :, ::-1], batch_size=512, verbose=0)) / 2 for x in images]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default="latest", help="the compare (default: latest)")
    parser.add_argument("--network", default="cnn_modern", help="whose features the k-NN uses")
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--no-embedding", action="store_true", help="skip the k-NN member")
    args = parser.parse_args()
    from study import data, ensemble

    settings, runs, val, test, splits = stored_compare(args.run_id)
    yv, yt = splits.y_val, splits.y_test

    def mix(tag: str, names: list[str]) -> None:
        ensemble_line(tag, names, val, test, yv, yt, settings)

    stored = list(val)
    print(overlap(test, yt))
    bound = ensemble.select({n: test[n] for n in stored}, yt, 50, 20)
    print(f"bound (weights chosen on the test set): {bound.val_accuracy:.4f}")
    mix("stored", stored)
    calibrated = {n: temperature_scaled(val[n], yv) for n in stored}
    sel = ensemble.select({n: calibrated[n](val[n]) for n in stored}, yv, settings.rounds,
                          settings.max_members)
    score = accuracy(ensemble.combine({n: calibrated[n](test[n]) for n in sel.weights},
                                      sel.weights), yt)
    print(f"{'temperature-scaled members':32s} ensemble {score:.4f}")
    print(f"{'stacked (logistic regression)':32s} ensemble "
          f"{accuracy(stacked(val, test, stored, yv), yt):.4f}", flush=True)
    if not args.no_embedding:
        from sklearn.neighbors import KNeighborsClassifier

        source = next(r for r in runs if r["pipeline"] == args.network)
        images = [data.as_image(x) for x in (splits.x_train, splits.x_val, splits.x_test)]
        f_train, f_val, f_test = features(source["model_uri"], images)
        knn = KNeighborsClassifier(args.neighbours, weights="distance").fit(f_train,
                                                                              splits.y_train)
        name = f"knn@{source['pipeline']}"
        val[name], test[name] = knn.predict_proba(f_val), knn.predict_proba(f_test)
        ours, theirs = test[name].argmax(axis=1) != yt, test[source["pipeline"]].argmax(axis=1) != yt
        print(f"{name}: val {accuracy(val[name], yv):.4f} test {accuracy(test[name], yt):.4f} "
              f"(its network {accuracy(test[source['pipeline']], yt):.4f}), errors shared with "
              f"it {np.sum(ours & theirs) / np.sum(ours | theirs):.2f}")
        mix(f"stored + {name}", stored + [name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
