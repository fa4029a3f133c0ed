"""Milvus backend of the vector store: a Milvus Lite file here and in tests, a server or
cluster URI at scale (sharded and replicated by Milvus itself, not by this project).

One index is two collections, ``<name>_images`` and ``<name>_reports`` (row id primary
key, cosine vectors, and the filter fields ``label``, ``view`` and ``findings``), so the
label / view / finding filters run inside Milvus as scalar filter expressions. Everything
else of the index (manifest, metadata, familiarity model, frozen vectors) is in its folder
(``index.vector_store.artifacts_dir``), written by the same builder as an hnswlib folder; the
collections' description carries a stamp (identity, row count, data version) that must agree
with that folder's manifest.

Index types: Milvus Lite offers FLAT and IVF_FLAT (IVF_FLAT is the default here); a
server uses HNSW with the hnswlib graph's parameters.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.findings import BILATERAL, LEFT, RIGHT, canonical_name
from data.records import Study
from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, EXACT_THRESHOLD, Neighbours, normalise
from index.filters import Filters
from index.manifest import IndexCorruptError, IndexLoadError, Manifest
from index.store import finding_rows

SCHEME = "milvus://"
DEFAULT_COLLECTION = "cxr"
TARGETS = ("images", "reports")
INSERT_BATCH = 5000
QUERY_PAGE = 10_000  # rows per metadata read (Milvus caps a query's result window at 16384)
MAX_FINDINGS = 64


@dataclass(frozen=True)
class MilvusAddress:
    """``milvus://PATH.db[#NAME]`` (Milvus Lite file) or ``milvus://HOST:PORT[#NAME]`` (server)."""

    uri: str  # what MilvusClient takes: a local ``.db`` path or ``http(s)://host:port``
    collection: str

    @property
    def lite(self) -> bool:
        return self.uri.endswith(".db")

    @classmethod
    def parse(cls, spec: str) -> "MilvusAddress":
        if not spec.startswith(SCHEME):
            raise ValueError(f"not a Milvus address: {spec!r} (expected {SCHEME}PATH.db#NAME or {SCHEME}HOST:PORT#NAME)")
        rest, _, name = spec[len(SCHEME):].partition("#")
        if not rest:
            raise ValueError(f"Milvus address {spec!r} names no file or server")
        if not rest.endswith(".db") and not rest.startswith(("http://", "https://")):
            rest = "http://" + rest
        return cls(rest, name or DEFAULT_COLLECTION)


def _client(address: MilvusAddress):
    from pymilvus import MilvusClient

    if address.lite:
        Path(address.uri).parent.mkdir(parents=True, exist_ok=True)
        # Milvus Lite's in-process gRPC server logs a traceback for each client call it does not
        # implement (AllocTimestamp: the client then uses its own clock); nothing fails
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    return MilvusClient(address.uri)


def finding_keys(study: Study) -> list[str]:
    """The ``findings`` array of one study: each positive finding name, and ``name|side`` for each
    side it covers (a bilateral finding covers left, right and bilateral), so a side filter is one
    ``array_contains`` with the store's meaning: "left" keeps left and bilateral, "bilateral" only bilateral."""
    keys = []
    for _, name, side in finding_rows(0, study):
        keys.append(name)
        keys += [f"{name}|{s}" for s in ((LEFT, RIGHT, BILATERAL) if side == BILATERAL else (side,) if side else ())]
    return keys[:MAX_FINDINGS]


def _filter_expr(label: int | None, view: str | None, finding: str | None, side: str | None = None) -> str:
    """The engine's filters as a Milvus boolean expression (same matching as ``MetadataStore``)."""
    parts = []
    if label is not None:
        parts.append(f"label == {int(label)}")
    if view:
        parts.append(f"view == {json.dumps(view.upper())}")
    if finding:
        key = canonical_name(finding) + (f"|{side.lower()}" if side else "")
        parts.append(f"array_contains(findings, {json.dumps(key)})")
    return " and ".join(parts)


def _index_params(client, lite: bool, n: int) -> tuple[Any, dict[str, Any]]:
    """(index params, search params). Below ``EXACT_THRESHOLD`` items FLAT (exact, like the
    hnswlib engine's small-gallery rule); on Lite IVF_FLAT with ~4 sqrt(n) lists and a quarter of
    them probed (at least 32); on a server HNSW like the hnswlib graph.

    Why a quarter: the head's real embeddings are less clustered than ``bench.scale``'s synthetic
    ones. On the full demo (3,955 studies, 251 lists asked, 200 image queries against exact search)
    recall@10 was 0.925 with 15 lists probed (the former 1/16), 0.985 with 32, 0.999 with 64
    (``bench.parity`` and a sweep with the same queries)."""
    params = client.prepare_index_params()
    if n < EXACT_THRESHOLD:
        params.add_index("vector", index_type="FLAT", metric_type="COSINE")
        return params, {"metric_type": "COSINE", "params": {}}
    if lite:
        nlist = int(min(4096, max(16, 4 * math.sqrt(n))))
        params.add_index("vector", index_type="IVF_FLAT", metric_type="COSINE", params={"nlist": nlist})
        return params, {"metric_type": "COSINE", "params": {"nprobe": min(nlist, max(32, nlist // 4))}, "nlist": nlist}
    params.add_index("vector", index_type="HNSW", metric_type="COSINE",
                     params={"M": DEFAULT_M, "efConstruction": DEFAULT_EF_CONSTRUCTION})
    return params, {"metric_type": "COSINE", "params": {"ef": DEFAULT_EF}}


def _schema(dim: int):
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description="building")
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("label", DataType.INT64)
    schema.add_field("view", DataType.VARCHAR, max_length=64)
    schema.add_field("findings", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_FINDINGS,
                     max_length=128)
    return schema


class MilvusVectorStore:
    """Image and report collections of one index in Milvus; thread-safe for queries (pymilvus client)."""

    def __init__(self, address: MilvusAddress, client, search_params: dict[str, Any], count: int):
        self.address = address
        self.client = client
        self.search_params = search_params
        self.count = count

    def __len__(self) -> int:
        return self.count

    def collection(self, target: str) -> str:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        return f"{self.address.collection}_{target}"

    # -- writing (index.build) -------------------------------------------------------------
    @classmethod
    def write(cls, spec: str, image_emb: np.ndarray, report_emb: np.ndarray, studies: Sequence[Study],
              manifest: Manifest) -> None:
        """(Re)create both collections from normalised embeddings; the stamp is set last, so a
        half-built index has none and fails to open."""
        address = MilvusAddress.parse(spec)
        client = _client(address)
        try:
            index_params, search_params = _index_params(client, address.lite, len(studies))
            store = cls(address, client, search_params, 0)
            for target in TARGETS:
                name = store.collection(target)
                if client.has_collection(name):
                    client.drop_collection(name)
                client.create_collection(name, schema=_schema(manifest.embed_dim), index_params=index_params)
            store.insert(image_emb, report_emb, studies, 0)
            store.stamp(manifest)
        finally:
            client.close()

    @classmethod
    def append(cls, spec: str, image_emb: np.ndarray, report_emb: np.ndarray, studies: Sequence[Study],
               start: int, manifest: Manifest) -> None:
        """Insert rows ``start``... into an index built by :meth:`write`, then restamp it."""
        address = MilvusAddress.parse(spec)
        client = _client(address)
        try:
            store = cls(address, client, _read_stamp(client, address)["search_params"], start)
            store.insert(image_emb, report_emb, studies, start)
            store.stamp(manifest)
        finally:
            client.close()

    def insert(self, image_emb: np.ndarray, report_emb: np.ndarray, studies: Sequence[Study], start: int) -> None:
        for target, emb in (("images", image_emb), ("reports", report_emb)):
            name = self.collection(target)
            for a in range(0, len(studies), INSERT_BATCH):
                self.client.insert(name, [
                    {"id": start + i, "vector": emb[i].tolist(), "label": int(s.label),
                     "view": (s.view or "").upper(), "findings": finding_keys(s)}
                    for i, s in enumerate(studies[a:a + INSERT_BATCH], start=a)
                ])
            self.client.flush(name)
            _wait_for_index(self.client, name)

    def stamp(self, manifest: Manifest) -> None:
        description = json.dumps({"search_params": self.search_params, **_stamp_of(manifest)})
        for target in TARGETS:
            self.client.alter_collection_properties(self.collection(target), {"collection.description": description})

    # -- open ------------------------------------------------------------------------------
    @classmethod
    def open(cls, spec: str, manifest: Manifest) -> "MilvusVectorStore":
        """Connect to the collections of the index whose folder holds ``manifest`` (identity
        already checked): their stamp must agree with it (``IndexCorruptError`` otherwise)."""
        address = MilvusAddress.parse(spec)
        client = _client(address)
        stamp = _read_stamp(client, address)
        wanted = _stamp_of(manifest)
        if {k: stamp.get(k) for k in wanted} != wanted:
            client.close()
            raise IndexCorruptError(f"Milvus index {spec} holds {stamp.get('count')} rows of data version "
                                    f"{stamp.get('data_version')!r}, its folder {manifest.count} of "
                                    f"{manifest.data_version!r}: a build or `index add` was interrupted; rebuild it")
        for target in TARGETS:
            client.load_collection(f"{address.collection}_{target}")
        return cls(address, client, stamp["search_params"], manifest.count)

    # -- queries ---------------------------------------------------------------------------
    def search(self, target: str, queries: np.ndarray, k: int, filters: Filters,
               allowed: np.ndarray | None = None) -> Neighbours:
        """Top-k row ids and cosine scores; the filters run inside Milvus (``allowed`` is not needed)."""
        queries = normalise(queries)
        expr = _filter_expr(filters.label, filters.view, filters.finding, filters.side)
        results = self._search(target, queries, k, expr, self.search_params)
        if "nlist" in self.search_params and min(len(r) for r in results) < k:
            # a restrictive filter can leave the probed lists short of k hits: probe them all
            exhaustive = {**self.search_params, "params": {"nprobe": self.search_params["nlist"]}}
            results = self._search(target, queries, k, expr, exhaustive)
        width = max((len(r) for r in results), default=0)
        ids = np.full((len(results), width), -1, np.int64)
        scores = np.zeros((len(results), width), np.float32)
        for q, hits in enumerate(results):
            for j, hit in enumerate(hits):
                ids[q, j] = int(hit["id"])
                scores[q, j] = float(hit["distance"])  # COSINE: the similarity, higher is closer
        return Neighbours(ids, scores, exact=False)

    def _search(self, target: str, queries: np.ndarray, k: int, expr: str, params: dict[str, Any]) -> list:
        params = {key: value for key, value in params.items() if key != "nlist"}
        return self.client.search(self.collection(target), data=queries.tolist(), limit=int(k), filter=expr,
                                  search_params=params, output_fields=[], anns_field="vector")

    def vectors(self, target: str) -> np.ndarray:
        """Every row's vector in id order, read in pages (for exact search and the maps)."""
        out = np.zeros((self.count, 0), np.float32)
        rows: dict[int, list[float]] = {}
        for a in range(0, self.count, QUERY_PAGE):
            page = self.client.query(self.collection(target), filter=f"id >= {a} and id < {a + QUERY_PAGE}",
                                     output_fields=["id", "vector"])
            rows.update({int(r["id"]): r["vector"] for r in page})
        if sorted(rows) != list(range(self.count)):
            raise IndexCorruptError(f"Milvus index {self.address.collection}: {len(rows)} {target} rows, "
                                    f"expected {self.count}; rebuild it")
        if rows:
            out = np.asarray([rows[i] for i in range(self.count)], np.float32)
        out.setflags(write=False)
        return out

    def close(self) -> None:
        self.client.close()


def _stamp_of(manifest: Manifest) -> dict[str, Any]:
    """What the collections and the index folder must agree on."""
    return {**manifest.identity, "count": int(manifest.count), "data_version": manifest.data_version}


def _read_stamp(client, address: MilvusAddress) -> dict[str, Any]:
    spec = f"{SCHEME}{address.uri}#{address.collection}"
    descriptions = []
    for target in TARGETS:
        name = f"{address.collection}_{target}"
        if not client.has_collection(name):
            raise IndexLoadError(f"Milvus index {spec} has no collection {name}; build it with "
                                 f"`python -m index build ... --out {spec}`")
        descriptions.append(_description(client, name))
    try:
        stamp = json.loads(descriptions[0])
    except ValueError:
        raise IndexCorruptError(f"Milvus index {spec} was not finished (no stamp); rebuild it") from None
    if descriptions[1] != descriptions[0]:
        raise IndexCorruptError(f"Milvus index {spec}: image and report collections disagree; rebuild it")
    return stamp


def _wait_for_index(client, name: str, timeout_s: float = 900.0) -> None:
    """Block until every flushed row is in the vector index: until then Milvus answers the
    unindexed rows by brute force, so a fresh index would be timed (and served) slower than it is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.describe_index(name, "vector") or {}
        if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0)):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Milvus did not finish indexing {name} in {timeout_s:.0f}s")


def _description(client, name: str) -> str:
    info = client.describe_collection(name)
    props = info.get("properties") or {}
    return props.get("collection.description") or info.get("description") or ""
