"""Milvus backend of the vector store: a Milvus Lite file here and in tests, a server or
cluster URI at scale (sharded and replicated by Milvus itself, not by this project).

One index is two collections, ``<name>_images`` and ``<name>_reports`` (row id primary
key, cosine vectors, and the filter fields ``label``, ``view`` and ``findings``), so the
label / view / finding filters run inside Milvus as scalar filter expressions. The
hnswlib manifest (backbone id, head checksum, dim, data version) is stored as the
collections' description and checked on open: another model's vectors are refused with
the same ``IndexMismatchError``. Each row also carries the study's display metadata, from
which the app's in-memory metadata store is rebuilt.

Index types: Milvus Lite offers FLAT and IVF_FLAT (IVF_FLAT is the default here); a
server uses HNSW with the hnswlib graph's parameters.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.dataset import studies_fingerprint
from data.records import Study
from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, EXACT_THRESHOLD, Neighbours, normalise
from index.manifest import IndexLoadError, Manifest, check_identity, now_iso
from data.findings import BILATERAL, LEFT, RIGHT, canonical_name
from index.store import MetadataStore, finding_rows, relative_path, write_store

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
    hnswlib engine's small-gallery rule); on Lite IVF_FLAT with ~4 sqrt(n) lists and 1/16 of
    them probed (recall@10 >= 0.98 at 100k, ``bench.scale``); on a server HNSW like the hnswlib graph."""
    params = client.prepare_index_params()
    if n < EXACT_THRESHOLD:
        params.add_index("vector", index_type="FLAT", metric_type="COSINE")
        return params, {"metric_type": "COSINE", "params": {}}
    if lite:
        nlist = int(min(4096, max(16, 4 * math.sqrt(n))))
        params.add_index("vector", index_type="IVF_FLAT", metric_type="COSINE", params={"nlist": nlist})
        return params, {"metric_type": "COSINE", "params": {"nprobe": max(8, nlist // 16)}, "nlist": nlist}
    params.add_index("vector", index_type="HNSW", metric_type="COSINE",
                     params={"M": DEFAULT_M, "efConstruction": DEFAULT_EF_CONSTRUCTION})
    return params, {"metric_type": "COSINE", "params": {"ef": DEFAULT_EF}}


def _schema(dim: int, description: str):
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("label", DataType.INT64)
    schema.add_field("view", DataType.VARCHAR, max_length=64)
    schema.add_field("findings", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_FINDINGS,
                     max_length=128)
    schema.add_field("meta", DataType.VARCHAR, max_length=65535)
    return schema


class MilvusVectorStore:
    """Image and report collections of one model in Milvus; thread-safe for queries (pymilvus client)."""

    def __init__(self, address: MilvusAddress, client, manifest: Manifest, search_params: dict[str, Any]):
        self.address = address
        self.client = client
        self.manifest = manifest
        self.search_params = search_params

    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest.identity

    def __len__(self) -> int:
        return int(self.manifest.count)

    def _name(self, target: str) -> str:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        return f"{self.address.collection}_{target}"

    # -- build ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        spec: str,
        image_emb: np.ndarray,
        report_emb: np.ndarray,
        studies: Sequence[Study],
        identity: dict[str, Any],
        data_root: Path | str | None = None,
        run_dir: Path | str | None = None,
    ) -> "MilvusVectorStore":
        """(Re)create the two collections from embeddings (``index.build.build_index``'s inputs)."""
        started = time.perf_counter()
        address = MilvusAddress.parse(spec)
        image_emb, report_emb = normalise(image_emb), normalise(report_emb)
        dim = int(image_emb.shape[1])
        if image_emb.shape != (len(studies), dim) or report_emb.shape != (len(studies), dim):
            raise ValueError(f"embeddings {image_emb.shape}/{report_emb.shape} do not match {len(studies)} studies")
        stamp = now_iso()
        manifest = Manifest(
            backbone_id=str(identity["backbone_id"]), head_checksum=str(identity["head_checksum"]), embed_dim=dim,
            count=len(studies), M=DEFAULT_M, ef_construction=DEFAULT_EF_CONSTRUCTION, ef=DEFAULT_EF,
            data_version=studies_fingerprint(studies), built_at=stamp, updated_at=stamp, build_seconds=0.0,
            space="cosine", data_root=str(Path(data_root).absolute()) if data_root is not None else None,
            run_dir=str(Path(run_dir).absolute()) if run_dir is not None else None,
        )
        client = _client(address)
        index_params, search_params = _index_params(client, address.lite, len(studies))
        metas = [json.dumps(_portable(s, data_root).to_dict()) for s in studies]
        store = cls(address, client, manifest, search_params)
        for target, emb in (("images", image_emb), ("reports", report_emb)):
            name = store._name(target)
            if client.has_collection(name):
                client.drop_collection(name)
            client.create_collection(name, schema=_schema(dim, "building"), index_params=index_params)
            for a in range(0, len(studies), INSERT_BATCH):
                client.insert(name, [
                    {"id": i, "vector": emb[i].tolist(), "label": int(s.label), "view": (s.view or "").upper(),
                     "findings": finding_keys(s), "meta": metas[i]}
                    for i, s in enumerate(studies[a:a + INSERT_BATCH], start=a)
                ])
            client.flush(name)
            _wait_for_index(client, name)
        manifest.build_seconds = round(time.perf_counter() - started, 3)
        description = json.dumps({"search_params": search_params, **manifest.to_dict()})
        for target in TARGETS:  # written last: a half-built index has no manifest and fails to open
            client.alter_collection_properties(store._name(target), {"collection.description": description})
        store._describe = description
        return store

    # -- open ----------------------------------------------------------------------
    @classmethod
    def open(cls, spec: str, identity: dict[str, Any] | None = None) -> "MilvusVectorStore":
        """Connect and check the model identity (``IndexMismatchError``) before any search."""
        address = MilvusAddress.parse(spec)
        client = _client(address)
        descriptions = []
        for target in TARGETS:
            name = f"{address.collection}_{target}"
            if not client.has_collection(name):
                raise IndexLoadError(f"Milvus index {spec} has no collection {name}; build it with "
                                     f"`python -m index build ... --out {spec}`")
            descriptions.append(_description(client, name))
        try:
            info = json.loads(descriptions[0])
        except ValueError:
            raise IndexLoadError(f"Milvus index {spec} was not finished (no manifest); rebuild it") from None
        if descriptions[1] != descriptions[0]:
            raise IndexLoadError(f"Milvus index {spec}: image and report collections disagree; rebuild it")
        search_params = info.pop("search_params")
        manifest = Manifest.from_dict(info)
        if identity is not None:
            check_identity(manifest, identity, where=spec)
        for target in TARGETS:
            client.load_collection(f"{address.collection}_{target}")
        return cls(address, client, manifest, search_params)

    # -- queries -------------------------------------------------------------------
    def search(self, target: str, queries: np.ndarray, k: int, label: int | None = None, view: str | None = None,
               finding: str | None = None, side: str | None = None) -> Neighbours:
        """Top-k row ids and cosine scores; the filters run inside Milvus."""
        queries = normalise(queries)
        expr = _filter_expr(label, view, finding, side)
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
        return self.client.search(self._name(target), data=queries.tolist(), limit=int(k), filter=expr,
                                  search_params=params, output_fields=[], anns_field="vector")

    def metadata_store(self) -> MetadataStore:
        """The studies' display metadata as the engine's in-memory SQLite store (rows = ids)."""
        rows: dict[int, Study] = {}
        for a in range(0, self.manifest.count, QUERY_PAGE):
            page = self.client.query(self._name("images"), filter=f"id >= {a} and id < {a + QUERY_PAGE}",
                                     output_fields=["id", "meta"])
            rows.update({int(r["id"]): Study.from_dict(json.loads(r["meta"])) for r in page})
        if sorted(rows) != list(range(len(rows))) or len(rows) != self.manifest.count:
            raise IndexLoadError(f"Milvus index {self.address.collection}: {len(rows)} rows, "
                                 f"manifest says {self.manifest.count}; rebuild it")
        with tempfile.TemporaryDirectory() as tmp:
            write_store(Path(tmp) / "meta.sqlite", [rows[i] for i in range(len(rows))])
            return MetadataStore.load(Path(tmp) / "meta.sqlite")

    def close(self) -> None:
        self.client.close()


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


def _portable(study: Study, data_root: Path | str | None) -> Study:
    """The study with image paths relative to the data root (as the SQLite store keeps them)."""
    from dataclasses import replace

    return replace(study, image_paths=tuple(relative_path(p, data_root) for p in study.image_paths))
