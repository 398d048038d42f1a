"""Fashion-MNIST model comparison study: tune, train, track and rank every model family."""

__version__ = "0.1.0"
