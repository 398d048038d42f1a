"""Dimensionality reducers, placed inside the scikit-learn Pipeline so they see training rows only."""

from __future__ import annotations

from typing import Any


def build_reducer(kind: str, **params: Any) -> Any:
    """'none' -> passthrough, 'pca' -> PCA, 'umap' -> UMAP (imported lazily: it pulls in TF)."""
    if kind == "none":
        return "passthrough"
    if kind == "pca":
        from sklearn.decomposition import PCA

        return PCA(**params)
    if kind == "umap":
        from study.config import import_umap

        return import_umap().UMAP(**params)
    raise ValueError(f"unknown reducer {kind!r}")
