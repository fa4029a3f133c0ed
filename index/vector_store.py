"""One vector-store interface, two backends: hnswlib (default, embedded) and Milvus (``milvus://``).

``--index PATH`` is an hnswlib index folder (``index.build`` / ``index.engine``);
``--index milvus://...`` is a Milvus Lite file or a Milvus server (``index.milvus_store``).
Both are built from the same embeddings, answer the same filtered top-k query and refuse
another model's vectors with ``IndexMismatchError``. ``open_engine`` gives the app a
``SearchEngine`` over either, so the pages never know which one answers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from data.records import Study
from index.ann import Neighbours
from index.engine import Filters, SearchEngine, SearchResult
from index.milvus_store import SCHEME, MilvusVectorStore
from index.manifest import Manifest


class VectorStore(Protocol):
    """What a backend offers: its model identity, its size and a filtered top-k search."""

    manifest: Manifest

    def __len__(self) -> int: ...

    def search(self, target: str, queries: np.ndarray, k: int, label: int | None = None, view: str | None = None,
               finding: str | None = None, side: str | None = None) -> Neighbours: ...

    def close(self) -> None: ...


def is_milvus(spec: str | Path) -> bool:
    return str(spec).startswith(SCHEME)


class HnswVectorStore:
    """The hnswlib index folder behind the same interface (filters resolved by its SQLite store)."""

    def __init__(self, engine: SearchEngine):
        self.engine = engine
        self.manifest = engine.manifest

    @classmethod
    def open(cls, path: Path | str, identity: dict[str, Any] | None = None) -> "HnswVectorStore":
        from index.manifest import check_identity, read_manifest

        if identity is not None:
            check_identity(read_manifest(Path(path)), identity, where=path)
        return cls(SearchEngine.load(path, None))

    def __len__(self) -> int:
        return self.engine.count

    def search(self, target: str, queries: np.ndarray, k: int, label: int | None = None, view: str | None = None,
               finding: str | None = None, side: str | None = None) -> Neighbours:
        filters = Filters(label, view, finding, side)
        allowed = self.engine.store.matching_ids(label, view, finding, side) if filters.active else None
        return self.engine._graphs[target].search(np.atleast_2d(queries), int(k), allowed)

    def close(self) -> None:
        self.engine.store.close()


def open_store(spec: str | Path, identity: dict[str, Any] | None = None) -> VectorStore:
    """The backend ``spec`` names, identity-checked when ``identity`` is given."""
    if is_milvus(spec):
        return MilvusVectorStore.open(str(spec), identity)
    return HnswVectorStore.open(spec, identity)


def build_store(spec: str | Path, image_emb: np.ndarray, report_emb: np.ndarray, studies: Sequence[Study],
                identity: dict[str, Any], data_root: Path | str | None = None,
                run_dir: Path | str | None = None) -> Manifest:
    """Build either backend from embeddings; returns its manifest."""
    if is_milvus(spec):
        store = MilvusVectorStore.build(str(spec), image_emb, report_emb, studies, identity, data_root, run_dir)
        store.close()
        return store.manifest
    from index.build import build_index

    return build_index(spec, image_emb, report_emb, studies, identity, data_root=data_root, run_dir=run_dir)


class MilvusSearchEngine(SearchEngine):
    """``SearchEngine`` whose top-k comes from Milvus with the filters pushed down; hits take
    their metadata from the in-memory store rebuilt from the collection."""

    def __init__(self, milvus: MilvusVectorStore, encoder, data_root: Path | str | None = None):
        super().__init__({}, milvus.metadata_store(), milvus.manifest, encoder, data_root)
        self.milvus = milvus

    def _search(self, vec: np.ndarray, k: int, filters: Any, target: str, exact: bool, query_type: str) -> SearchResult:
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        query = np.asarray(vec, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.manifest.embed_dim:
            raise ValueError(f"query vector has shape {query.shape}; expected ({self.manifest.embed_dim},)")
        parsed = Filters.parse(filters)
        found = self.milvus.search(target, query, int(k), parsed.label, parsed.view, parsed.finding, parsed.side)
        keep = found.ids[0] >= 0
        n_candidates = (len(self.store.matching_ids(parsed.label, parsed.view, parsed.finding, parsed.side))
                        if parsed.active else self.count)
        hits = self.hits_at(found.ids[0][keep], found.scores[0][keep])
        return SearchResult(hits, target, query_type, parsed, n_candidates, exact=False)


def open_engine(spec: str | Path, encoder, data_root: Path | str | None = None) -> SearchEngine:
    """What ``app.py --index`` opens: an hnswlib folder or a ``milvus://`` address."""
    if not is_milvus(spec):
        return SearchEngine.load(spec, encoder, data_root=data_root)
    from index.build import encoder_identity

    milvus = MilvusVectorStore.open(str(spec), encoder_identity(encoder) if encoder is not None else None)
    root = data_root or (milvus.manifest.data_root if milvus.manifest.data_root and
                         Path(milvus.manifest.data_root).is_dir() else None)
    return MilvusSearchEngine(milvus, encoder, root)
