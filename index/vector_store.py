"""One vector-store interface, two backends: hnswlib (default, embedded) and Milvus (``milvus://``).

A store holds the image and report vectors of an index, row ``i`` of each being row ``i`` of the
metadata store, and does two things only: a filtered top-k search, and giving its vectors back
(for exact search, the embedding map and heat-maps). Everything above that (familiarity verdicts,
the relevance floor, composed queries, the frozen side-by-side, hits with their studies) is
``index.engine.SearchEngine``'s, once for both backends.

Where an index lives (``artifacts_dir``): every index has one folder holding ``manifest.json``
(identity, counts, sha256 of every file), ``meta.sqlite``, ``familiarity.safetensors`` and
``frozen_images.npy``, written and verified the same way for both stores (``index.build``,
``index.manifest``). For hnswlib it is the ``--index`` folder itself and also holds the two graphs.
For Milvus the vectors are in the collections and the folder is a sidecar keyed by the URI:

* ``milvus://PATH.db#NAME`` (Milvus Lite) -> ``PATH.db.artifacts/NAME/`` next to the database file;
* ``milvus://HOST:PORT#NAME`` (a server) -> ``<cache>/milvus/HOST_PORT/NAME/`` (``data.paths.cache_root``);
  copy that folder along when the app runs on another machine than the build.

The collections' description repeats the model identity, the row count and the data version; a
sidecar that disagrees with its collections (a build or ``index add`` interrupted between the two)
is refused with ``IndexCorruptError`` ("rebuild it").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from data.paths import cache_root
from data.records import Study
from index.ann import EXACT_THRESHOLD, HnswIndex, Neighbours
from index.filters import Filters
from index.manifest import HNSWLIB, IMAGES, MILVUS, REPORTS, Manifest
from index.milvus_store import SCHEME, TARGETS, MilvusAddress, MilvusVectorStore


class VectorStore(Protocol):
    """Row-aligned image and report vectors: filtered top-k, and the vectors themselves."""

    def __len__(self) -> int: ...

    def search(self, target: str, queries: np.ndarray, k: int, filters: Filters,
               allowed: np.ndarray | None) -> Neighbours:
        """Top-k per query among the rows passing ``filters``; ``allowed`` is the same restriction
        as row ids (from the metadata store; ``None`` without filters). A store uses either."""

    def vectors(self, target: str) -> np.ndarray:
        """Every stored (normalised) vector of ``target`` in row order."""

    def close(self) -> None: ...


def is_milvus(spec: str | Path) -> bool:
    return str(spec).startswith(SCHEME)


def store_kind(spec: str | Path) -> str:
    return MILVUS if is_milvus(spec) else HNSWLIB


def artifacts_dir(spec: str | Path) -> Path:
    """The index's folder (see the module docstring): the folder itself, or a Milvus index's sidecar."""
    if not is_milvus(spec):
        return Path(spec)
    address = MilvusAddress.parse(str(spec))
    if address.lite:
        return Path(address.uri + ".artifacts") / address.collection
    server = re.sub(r"[^A-Za-z0-9.-]+", "_", address.uri.split("://", 1)[-1]).strip("_")
    return cache_root() / "milvus" / server / address.collection


class HnswVectorStore:
    """Two hnswlib graphs in the index folder; filters arrive as row ids (from ``meta.sqlite``)."""

    def __init__(self, graphs: Mapping[str, HnswIndex], exact_threshold: int = EXACT_THRESHOLD):
        self.graphs = dict(graphs)
        for graph in self.graphs.values():
            graph.exact_threshold = exact_threshold

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, exact_threshold: int = EXACT_THRESHOLD) -> "HnswVectorStore":
        """The graphs of a folder whose files were verified against ``manifest`` already."""
        return cls({t: HnswIndex.load(Path(folder) / name, dim=manifest.embed_dim, ef=manifest.ef)
                    for t, name in zip(TARGETS, (IMAGES, REPORTS))}, exact_threshold)

    @staticmethod
    def write(staging: Path, image_emb: np.ndarray, report_emb: np.ndarray, manifest: Manifest,
              ef_given: bool) -> None:
        """Both graphs with the ef (and M, where a rebuild is cheap) chosen from measured recall
        (``index.ef_tuning``); a given ef is kept and its recall measured. The choice goes to ``manifest``."""
        from index.ef_tuning import tuned_graphs

        images, reports, manifest.ef, manifest.ef_tuning = tuned_graphs(
            image_emb, report_emb, manifest.M, manifest.ef_construction, manifest.ef if ef_given else None)
        manifest.M = max(images.M, reports.M)
        images.save(Path(staging) / IMAGES)
        reports.save(Path(staging) / REPORTS)

    @staticmethod
    def append(index_dir: Path, staging: Path, manifest: Manifest, image_emb: np.ndarray,
               report_emb: np.ndarray, updated: Manifest) -> None:
        """Grow each graph in place into ``staging``; ef is chosen again from measured recall as the
        graphs grow (``index.ef_tuning.grow_tuned``; M stays: no rebuild)."""
        from index.ef_tuning import grow_tuned

        updated.ef, updated.ef_tuning = grow_tuned(Path(index_dir), Path(staging), manifest, image_emb, report_emb)

    def __len__(self) -> int:
        return len(self.graphs["images"])

    def search(self, target: str, queries: np.ndarray, k: int, filters: Filters,
               allowed: np.ndarray | None) -> Neighbours:
        return self.graphs[target].search(np.atleast_2d(queries), int(k), allowed)

    def vectors(self, target: str) -> np.ndarray:
        return self.graphs[target].vectors()

    def close(self) -> None:
        """Nothing to release: the graphs are in memory."""


def open_vectors(spec: str | Path, manifest: Manifest, exact_threshold: int = EXACT_THRESHOLD) -> VectorStore:
    """The vectors of a verified index: the folder's graphs, or its Milvus collections."""
    if is_milvus(spec):
        return MilvusVectorStore.open(str(spec), manifest)
    return HnswVectorStore.load(Path(spec), manifest, exact_threshold)


def write_vectors(spec: str | Path, staging: Path, image_emb: np.ndarray, report_emb: np.ndarray,
                  studies: Sequence[Study], manifest: Manifest, ef_given: bool = True) -> None:
    """A build's vectors, to the folder being staged or to (re)created Milvus collections."""
    if is_milvus(spec):
        MilvusVectorStore.write(str(spec), image_emb, report_emb, studies, manifest)
    else:
        HnswVectorStore.write(staging, image_emb, report_emb, manifest, ef_given)


def append_vectors(spec: str | Path, staging: Path, manifest: Manifest, image_emb: np.ndarray,
                   report_emb: np.ndarray, studies: Sequence[Study], updated: Manifest) -> None:
    """``index add``'s new rows (ids ``manifest.count``...), appended in place."""
    if is_milvus(spec):
        MilvusVectorStore.append(str(spec), image_emb, report_emb, studies, manifest.count, updated)
    else:
        HnswVectorStore.append(Path(spec), staging, manifest, image_emb, report_emb, updated)
