"""The frozen backbone's image vectors, kept in the index folder for the side-by-side view.

Why: the paper's comparison (frozen backbone vs fine-tuned head) made visible per query needs
the gallery's *frozen* image features next to the head's. They are stored as
``frozen_images.npy`` (float16, L2-normalised, row-aligned with the graphs; float16 halves the
size and moves cosines by < 1e-3) and listed in ``manifest.json`` with their sha256 like every
other file, so a damaged copy is refused before it is read. Image->image only: the offline
towers have no shared image-text space before the head.

Searched exactly (a matrix-vector product: 3,955 x 1,792 in a few ms), so no second graph.
``python -m index add`` extends them with the added rows' features (from the same feature cache);
an encoder without a frozen backbone adds rows without them, and the folder is then republished
without any: the side-by-side view says so until the index is rebuilt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from index.manifest import Manifest

FROZEN_IMAGES = "frozen_images.npy"


def write_frozen(folder: Path, feats: np.ndarray, count: int) -> str:
    """Save row-aligned frozen image features into ``folder``; returns the file name for the manifest."""
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 2 or feats.shape[0] != count:
        raise ValueError(f"frozen features have shape {feats.shape}; expected ({count}, D)")
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    np.save(Path(folder) / FROZEN_IMAGES, feats.astype(np.float16), allow_pickle=False)
    return FROZEN_IMAGES


class FrozenGallery:
    """Exact cosine search over the gallery's frozen image vectors."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    @classmethod
    def load(cls, index_dir: Path | str, manifest: Manifest) -> "FrozenGallery | None":
        """The folder's frozen vectors, or None when the index was built without them. The
        engine's load already verified the file against the manifest."""
        path = Path(index_dir) / FROZEN_IMAGES
        if FROZEN_IMAGES not in manifest.files or not path.is_file():
            return None
        vectors = np.load(path, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[0] != manifest.count:
            return None
        return cls(vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, cosines) of the ``k`` nearest gallery images to a frozen query feature."""
        q = np.asarray(query, np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"frozen query has {q.shape[0]} dims; the gallery has {self.dim}")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        scores = self.vectors @ q
        rows = np.arange(len(scores)) if allowed is None else np.asarray(allowed, np.int64)
        if len(rows) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        k = min(int(k), len(rows))
        part = rows[np.argpartition(-scores[rows], k - 1)[:k]]
        order = part[np.argsort(-scores[part], kind="stable")]
        return order.astype(np.int64), scores[order].astype(np.float32)
