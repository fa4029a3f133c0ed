"""The Embedding map tab's 2-D projections: they must keep neighbourhoods and the
normal/abnormal structure of the space they draw, or the plot misleads."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.manifold import trustworthiness
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from model.embedding_map import build_embedding_maps, project_2d


def clustered_space(n: int = 400, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, each a few sub-clusters (findings), on the unit sphere like real embeddings."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    centres = rng.normal(size=(2, 4, dim))
    sub = rng.integers(0, 4, n)
    x = centres[labels, sub] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_map_keeps_neighbourhoods_and_labels(method):
    x, labels = clustered_space()
    coords = project_2d(x, method)
    assert coords.shape == (len(x), 2)
    assert np.allclose(coords.mean(axis=0), 0, atol=1e-4) and coords.std() == pytest.approx(1, abs=1e-3)
    assert trustworthiness(x, coords, n_neighbors=10, metric="cosine") > 0.9
    assert cross_val_score(KNeighborsClassifier(10), coords, labels, cv=5).mean() > 0.95


def test_same_seed_same_map_and_json_shape():
    x, labels = clustered_space(n=120)
    first = build_embedding_maps({"frozen": x}, [f"s{i}" for i in range(len(x))], labels.tolist(), methods=["tsne"])
    again = build_embedding_maps({"frozen": x}, [f"s{i}" for i in range(len(x))], labels.tolist(), methods=["tsne"])
    assert first == again
    assert len(first["maps"]["frozen"]["tsne"]) == len(first["ids"]) == len(first["labels"]) == 120


def test_unknown_method_is_refused():
    x, _ = clustered_space(n=60)
    with pytest.raises(ValueError, match="unknown map method"):
        project_2d(x, "pca3d")
