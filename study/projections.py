"""Dimensionality-reduction figures for the report: PCA explained variance, 2-D maps of the test set.

Both projections are fitted on training rows and only *applied* to the test images, like the
reducers inside the pipelines; the maps are pictures and select nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from study.config import CLASS_NAMES
from study.data import as_flat
from study.figures import pyplot, save


def explained_variance(x_train: np.ndarray, path: Path) -> dict[str, int]:
    """Cumulative explained variance of PCA on the training rows; returns components needed
    for 80/90/95/99% of the variance."""
    from sklearn.decomposition import PCA

    pca = PCA(svd_solver="full").fit(as_flat(x_train))
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    needed = {f"pca_components_{int(q * 100)}pct": int(np.searchsorted(cumulative, q) + 1)
              for q in (0.8, 0.9, 0.95, 0.99)}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(np.arange(1, len(cumulative) + 1), cumulative)
    for key, k in needed.items():
        ax.axvline(k, color="grey", lw=0.6, ls=":")
        ax.annotate(f"{key.split('_')[-1]}: {k}", (k, cumulative[k - 1]), fontsize=8,
                    xytext=(4, -12), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("principal components (log scale)")
    ax.set_ylabel("cumulative explained variance")
    ax.set_title("PCA on the training split")
    ax.grid(alpha=0.3)
    save(fig, path)
    return needed


def scatter_map(embedding: np.ndarray, labels: np.ndarray, title: str, path: Path) -> Path:
    """Points coloured by class, one legend entry per class."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=80)  # 10k points: keeps the PNG small
    cmap = plt.get_cmap("tab10")
    for c, name in enumerate(CLASS_NAMES):
        pts = embedding[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.6, color=cmap(c), label=name)
    ax.legend(markerscale=6, fontsize=8, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return save(fig, path)


def pca_map(x_train, x_test, y_test, seed: int, path: Path) -> Path:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed).fit(as_flat(x_train))
    return scatter_map(pca.transform(as_flat(x_test)), y_test,
                       "Test set on the first two principal components", path)


def umap_map(x_train, y_train, x_test, y_test, seed: int, path: Path,
             fit_rows: int = 10000) -> Path:
    """UMAP fitted on a class-balanced sample of training rows, applied to the test set."""
    from study.data import stratified_subsample
    from study.models.reducers import PcaUmap

    rows = stratified_subsample(np.arange(len(y_train)), y_train, fit_rows, seed)
    reducer = PcaUmap(n_components=2, n_epochs=200, random_state=seed).fit(as_flat(x_train[rows]))
    return scatter_map(reducer.transform(as_flat(x_test)), y_test,
                       f"Test set on a 2-D UMAP fitted on {len(rows)} training images", path)
