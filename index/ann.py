"""Nearest-neighbour backends with one interface: hnswlib (approximate) and numpy (exact).

Both work in cosine space on L2-normalised vectors: hnswlib's ``"ip"`` space returns
``1 - dot``, so ``score = 1 - distance`` is the cosine similarity for either backend.
Labels are the integer row ids of the metadata store, so a hit maps straight to its study.

The exact backend exists because (a) on a small gallery a matrix product is as fast and
has perfect recall, (b) it is the reference the ANN index is measured against, and (c) a
restrictive filter can leave hnswlib unable to find ``k`` allowed items in its graph.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

SPACE = "ip"  # inner product on normalised vectors == cosine

# Defaults chosen by ``python -m bench.search`` (see bench/search.py for the figures):
# M=16 / ef=64 gives recall@10 >= 0.98 against exact search on a 4k x 256 and a 100k x 512
# clustered gallery, at well under a millisecond per query. ef_construction trades build time
# for graph quality; ``python -m bench.search --ef-construction-sweep`` (100k x 512, 2 cores,
# this host's speed varies): 128 builds one graph in 27-44 s vs 46-61 s for 200, recall@10 at
# ef=64 0.988-0.992 vs 0.992; 100 drops to 0.981 and 64 to 0.977.
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_EF = 64

# Below this many items (or allowed items, when filtering) exact search is used instead
# of the graph: it costs about a millisecond and is always right.
EXACT_THRESHOLD = 2000
# A filter passing less than this share of the gallery is also answered by exact search
# over the allowed rows: hnswlib must visit ~ef/share nodes through a Python callback to
# collect ef allowed ones, which bench/search.py measured slower than scanning the subset
# (100k x 512: 3% allowed -> ~20 ms graph vs ~8 ms exact, recall 0.999 vs 1; 10% -> 2 ms vs 16 ms).
FILTER_EXACT_FRACTION = 0.05


@dataclass(frozen=True)
class Neighbours:
    """Top-k of each query, best first. ``ids`` and ``scores`` have shape (Q, k_found);
    ``k_found`` is ``min(k, number of allowed items)``. ``exact`` says which backend answered."""

    ids: np.ndarray  # int64
    scores: np.ndarray  # float32 cosine similarity
    exact: bool


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (C-contiguous, as hnswlib wants).

    Encoders already normalise; doing it again is cheap and keeps scores true cosines
    even for a caller that forgets.
    """
    x = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or inf")
    return x / np.maximum(norms, 1e-12)


def exact_top_k(matrix: np.ndarray, queries: np.ndarray, k: int, ids: np.ndarray | None = None) -> Neighbours:
    """Brute-force top-k by one matrix product and ``argpartition`` (O(N) per query, no sort of N)."""
    queries = normalise(queries)
    n = matrix.shape[0]
    k = min(int(k), n)
    if k <= 0:
        empty = np.zeros((queries.shape[0], 0))
        return Neighbours(empty.astype(np.int64), empty.astype(np.float32), exact=True)
    sims = queries @ matrix.T  # (Q, N)
    if k < n:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(n), (queries.shape[0], 1))
    part_scores = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    scores = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    labels = rows if ids is None else np.asarray(ids, dtype=np.int64)[rows]
    return Neighbours(labels.astype(np.int64), scores, exact=True)


class ExactIndex:
    """Exact cosine search over an in-memory matrix; row ``i`` has label ``i``."""

    def __init__(self, matrix: np.ndarray, normalised: bool = False):
        """``normalised=True`` trusts the rows to be unit length and shares the array (no copy)."""
        if normalised:
            self._matrix = np.asarray(matrix, dtype=np.float32)
        else:
            self._matrix = normalise(matrix) if len(matrix) else np.zeros((0, matrix.shape[1]), np.float32)
        self.dim = int(self._matrix.shape[1])

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Neighbours:
        if allowed is None:
            return exact_top_k(self._matrix, queries, k)
        allowed = np.asarray(allowed, dtype=np.int64)
        return exact_top_k(self._matrix[allowed], queries, k, ids=allowed)

    def vectors(self, ids: np.ndarray | None = None) -> np.ndarray:
        return self._matrix if ids is None else self._matrix[np.asarray(ids, dtype=np.int64)]


class HnswIndex:
    """hnswlib graph with labels ``0..n-1``; filtered queries that the graph cannot answer
    fully (too few allowed items, or hnswlib gives up) are answered exactly instead."""

    def __init__(self, index: hnswlib.Index, exact_threshold: int = EXACT_THRESHOLD):
        self._index = index
        self.dim = int(index.dim)
        self.exact_threshold = exact_threshold
        self._matrix: np.ndarray | None = None  # all vectors in label order, built on demand
        self._matrix_lock = threading.Lock()

    # -- construction ------------------------------------------------------------
    @classmethod
    def create(
        cls,
        vectors: np.ndarray,
        M: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef: int = DEFAULT_EF,
        num_threads: int = -1,
        seed: int = 100,
    ) -> "HnswIndex":
        """Build a graph over ``vectors`` labelled ``0..n-1``."""
        vectors = normalise(vectors)
        n, dim = vectors.shape
        index = hnswlib.Index(space=SPACE, dim=int(dim))
        index.init_index(max_elements=max(n, 1), M=M, ef_construction=ef_construction, random_seed=seed)
        index.set_ef(ef)
        if n:
            index.add_items(vectors, np.arange(n, dtype=np.int64), num_threads=num_threads)
        return cls(index)

    @classmethod
    def empty(cls, dim: int, capacity: int, M: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
              ef: int = DEFAULT_EF, seed: int = 100) -> "HnswIndex":
        """A graph with room for ``capacity`` vectors and none yet (``add_labelled`` fills it)."""
        index = hnswlib.Index(space=SPACE, dim=int(dim))
        index.init_index(max_elements=max(int(capacity), 1), M=M, ef_construction=ef_construction, random_seed=seed)
        index.set_ef(ef)
        return cls(index)

    def add_labelled(self, vectors: np.ndarray, labels: np.ndarray, num_threads: int = -1) -> None:
        """Insert vectors under the given labels (growing the graph if needed). The caller keeps
        the labels ``0..n-1`` once all are in (index.ef_tuning inserts a held-out sample last)."""
        vectors = normalise(vectors)
        if len(vectors) == 0:
            return
        needed = len(self) + len(vectors)
        if needed > self._index.get_max_elements():
            self._index.resize_index(needed)
        self._index.add_items(vectors, np.asarray(labels, np.int64), num_threads=num_threads)
        self._matrix = None

    @classmethod
    def load(cls, path: Path, dim: int, ef: int, max_elements: int = 0) -> "HnswIndex":
        """Load a saved graph. Callers must have verified the file's checksum first: hnswlib
        trusts the bytes it reads and can crash the process on a truncated file."""
        index = hnswlib.Index(space=SPACE, dim=int(dim))
        index.load_index(str(path), max_elements=max_elements)
        index.set_ef(ef)
        return cls(index)

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    def add(self, vectors: np.ndarray, num_threads: int = -1) -> np.ndarray:
        """Append vectors with the next labels, growing the graph in place (no rebuild)."""
        labels = np.arange(len(self), len(self) + len(vectors), dtype=np.int64)
        self.add_labelled(vectors, labels, num_threads)
        return labels

    # -- properties --------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.get_current_count())

    @property
    def M(self) -> int:
        return int(self._index.M)

    @property
    def ef_construction(self) -> int:
        return int(self._index.ef_construction)

    @property
    def ef(self) -> int:
        return int(self._index.ef)

    def set_ef(self, ef: int) -> None:
        """Query beam width: higher = better recall, slower. Not safe during concurrent queries."""
        self._index.set_ef(int(ef))

    # -- queries -----------------------------------------------------------------
    def vectors(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Stored (normalised) vectors in label order; used for exact fallbacks.

        The whole matrix is extracted once and cached (read-only): ``get_items`` costs
        ~60 us per 512-d vector, which would make every exact fallback slower than the
        graph search it replaces.
        """
        with self._matrix_lock:
            if self._matrix is None:
                self._matrix = self._extract_matrix()
                self._matrix.setflags(write=False)
        return self._matrix if ids is None else self._matrix[np.asarray(ids, dtype=np.int64)]

    def items(self, ids: np.ndarray) -> np.ndarray:
        """hnswlib's own per-item read (``get_items``): the slow path ``vectors`` is checked against."""
        return np.asarray(self._index.get_items(np.asarray(ids, dtype=np.int64)), dtype=np.float32)

    def _extract_matrix(self) -> np.ndarray:
        """All vectors, read in bulk from hnswlib's own serialised state (its pickle
        support), ordered by label; checked against ``get_items`` on a sample, with
        ``get_items`` as the fallback should the layout ever differ."""
        n = len(self)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        labels_all = np.arange(n, dtype=np.int64)
        try:
            state = self._index.__getstate__()[0]
            row = int(state["size_data_per_element"])
            level0 = np.asarray(state["data_level0"], dtype=np.uint8)[: n * row].reshape(n, row)
            start, label_at = int(state["offset_data"]), int(state["label_offset"])
            matrix = np.ascontiguousarray(level0[:, start : start + 4 * self.dim]).view(np.float32)
            labels = np.ascontiguousarray(level0[:, label_at : label_at + 8]).view(np.uint64).ravel()
            order = np.argsort(labels)
            if not np.array_equal(labels[order], labels_all):
                raise ValueError("labels are not 0..n-1")
            matrix = matrix[order]
            sample = np.unique(np.linspace(0, n - 1, num=min(n, 8)).astype(np.int64))
            if not np.array_equal(matrix[sample], np.asarray(self._index.get_items(sample), np.float32)):
                raise ValueError("layout check failed")
            return matrix
        except (KeyError, ValueError, TypeError):
            return np.asarray(self._index.get_items(labels_all), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Neighbours:
        queries = normalise(queries)
        n = len(self)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
            if len(allowed) <= max(self.exact_threshold, k, FILTER_EXACT_FRACTION * n):
                return exact_top_k(self.vectors(allowed), queries, k, ids=allowed)
            mask = np.zeros(n, dtype=bool)
            mask[allowed] = True
            k_eff = min(int(k), len(allowed))
            try:
                # One thread: the filter is a Python callable, so threads would only
                # contend for the GIL; the app sends one query at a time anyway.
                labels, dists = self._index.knn_query(
                    queries, k=k_eff, num_threads=1, filter=lambda label: bool(mask[label])
                )
            except RuntimeError:
                # hnswlib could not collect k allowed items from the graph.
                return exact_top_k(self.vectors(allowed), queries, k, ids=allowed)
            labels = labels.astype(np.int64)
            if labels.shape[1] < k_eff or not mask[labels].all():
                return exact_top_k(self.vectors(allowed), queries, k, ids=allowed)
            return Neighbours(labels, (1.0 - dists).astype(np.float32), exact=False)
        k_eff = min(int(k), n)
        if k_eff == 0:
            return exact_top_k(np.zeros((0, self.dim), np.float32), queries, 0)
        try:
            labels, dists = self._index.knn_query(queries, k=k_eff, num_threads=1)
        except RuntimeError:
            return exact_top_k(self.vectors(), queries, k)
        return Neighbours(labels.astype(np.int64), (1.0 - dists).astype(np.float32), exact=False)
