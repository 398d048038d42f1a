"""Classical model builders: each returns an unfitted scikit-learn estimator.

Seeds are not parameters here: the trainer sets every `random_state` it finds, so a model
rebuilt from `study.best_params` is the same model.
"""

from __future__ import annotations

from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression


def dummy(strategy: str = "most_frequent") -> DummyClassifier:
    """The floor of every leaderboard."""
    return DummyClassifier(strategy=strategy)


def logreg(C: float = 1.0, max_iter: int = 200, tol: float = 1e-4) -> LogisticRegression:
    """Multinomial logistic regression on [0, 1]-scaled pixels (lbfgs, L2 penalty)."""
    return LogisticRegression(C=C, max_iter=max_iter, tol=tol)
