"""Classical model builders: each returns an unfitted scikit-learn estimator.

Seeds are not parameters here: the trainer sets every `random_state` it finds, so a model
rebuilt from `study.best_params` is the same model. Estimators that can use both cores get
config.threads() jobs (libsvm cannot: SVC is single-threaded).
"""

from __future__ import annotations

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

from study import config


def dummy(strategy: str = "most_frequent") -> DummyClassifier:
    """The floor of every leaderboard."""
    return DummyClassifier(strategy=strategy)


def logreg(C: float = 1.0, max_iter: int = 200, tol: float = 1e-4) -> LogisticRegression:
    """Multinomial logistic regression on [0, 1]-scaled pixels (lbfgs, L2 penalty)."""
    return LogisticRegression(C=C, max_iter=max_iter, tol=tol)


class SoftmaxSVC(SVC):
    """RBF SVC whose predict_proba is a softmax of its one-vs-rest decision values.

    SVC(probability=True) runs Platt scaling with an internal 5-fold cross-validation, which
    multiplies the fit time about five-fold. The softmax scores rank classes exactly as the
    decision function does (so argmax agrees with `decision_function`), which is what the
    study's accuracy, F1 and McNemar comparisons need; they are not calibrated probabilities.
    """

    def decision_function(self, X):
        """libsvm predicts without the GIL: score row chunks on all cores in threads."""
        from concurrent.futures import ThreadPoolExecutor

        n = min(config.threads(), max(1, len(X) // 2000))
        if n == 1:
            return super().decision_function(X)
        parts = np.array_split(np.asarray(X), n)
        with ThreadPoolExecutor(n) as pool:
            return np.vstack(list(pool.map(super().decision_function, parts)))

    def predict_proba(self, X):
        scores = np.asarray(self.decision_function(X), dtype=np.float64)
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)


def svc(C: float = 10.0, gamma: float | str = "scale", cache_size: int = 2000) -> SoftmaxSVC:
    """RBF support vector machine (one-vs-one inside libsvm)."""
    # break_ties: predict() takes the argmax of the decision values, like predict_proba.
    return SoftmaxSVC(C=C, gamma=gamma, kernel="rbf", decision_function_shape="ovr",
                      break_ties=True, cache_size=cache_size)


def random_forest(n_estimators: int = 100, max_features: str | float = "sqrt",
                  min_samples_leaf: int = 1, criterion: str = "gini",
                  max_depth: int | None = None) -> RandomForestClassifier:
    """Random forest on both cores."""
    return RandomForestClassifier(n_estimators=n_estimators, max_features=max_features,
                                  min_samples_leaf=min_samples_leaf, criterion=criterion,
                                  max_depth=max_depth, n_jobs=config.threads())


def knn(n_neighbors: int = 5, weights: str = "distance", p: int = 2) -> KNeighborsClassifier:
    """k nearest neighbours; meant for reduced features, where distances mean more."""
    return KNeighborsClassifier(n_neighbors=n_neighbors, weights=weights, p=p,
                                n_jobs=config.threads())


def hgb(learning_rate: float = 0.1, max_iter: int = 300, max_leaf_nodes: int = 31,
        min_samples_leaf: int = 20, l2_regularization: float = 0.0, max_features: float = 1.0,
        early_stopping: bool = True) -> HistGradientBoostingClassifier:
    """Histogram gradient boosting (scikit-learn's LightGBM-like booster), early-stopped on an
    internal 10% of the training rows, never on the validation split."""
    return HistGradientBoostingClassifier(
        learning_rate=learning_rate, max_iter=max_iter, max_leaf_nodes=max_leaf_nodes,
        min_samples_leaf=min_samples_leaf, l2_regularization=l2_regularization,
        max_features=max_features, early_stopping=early_stopping, validation_fraction=0.1,
        n_iter_no_change=15,
    )
