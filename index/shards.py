"""Embedding shards: frozen backbone features of a collection as Parquet files, one per slice.

The Ray ingest (``scale.ray_ingest``) writes them; ``train.py --features DIR`` and
``python -m index build --engine ray`` read them, so a collection is embedded once for both.

A shard folder holds ``shards.json`` (backbone id, preprocessing, data version, shard size)
and ``shard-00000.parquet``... Shard ``i`` covers ``studies[i*size:(i+1)*size]`` of the
listed collection; each file carries the study ids it covers (hashed in its metadata), the
backbone identity and the data version, so a file from another model or another list is
never taken for a finished shard. Files are written to a temp name and renamed: a run
killed mid-way leaves only whole shards, and a rerun embeds only the missing ones.
Studies whose image could not be decoded are listed in the shard's metadata (``bad``) and
have no row.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.errors import ShardMismatchError  # noqa: F401 (defined in data.errors, re-exported)
from data.atomic_io import atomic_write_bytes, atomic_write_json
from data.dataset import studies_fingerprint
from data.records import Study

KEY_FILE = "shards.json"
META_KEY = b"cxr_shard"
DEFAULT_SHARD_SIZE = 64


@dataclass(frozen=True)
class ShardKey:
    """What every shard of a folder must agree on."""

    backbone_id: str
    preprocess_id: str
    data_version: str
    shard_size: int
    n_studies: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def shard_key(backbone, studies: Sequence[Study], shard_size: int = DEFAULT_SHARD_SIZE) -> ShardKey:
    return ShardKey(backbone.backbone_id, backbone.preprocess_id, studies_fingerprint(studies), int(shard_size),
                    len(studies))


def shard_path(folder: Path | str, index: int) -> Path:
    return Path(folder) / f"shard-{index:05d}.parquet"


def shard_slices(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard over ``n`` studies."""
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def ids_digest(study_ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(study_ids)).encode()).hexdigest()[:16]


def prepare_folder(folder: Path | str, key: ShardKey) -> None:
    """Create the folder with its key, or check an existing one has the same key."""
    folder = Path(folder)
    path = folder / KEY_FILE
    if path.is_file():
        found = json.loads(path.read_text())
        if found != key.to_dict():
            diff = {k: (found.get(k), v) for k, v in key.to_dict().items() if found.get(k) != v}
            raise ShardMismatchError(f"shard folder {folder} was written for other inputs (found, wanted): {diff}; "
                                     "use another folder or delete it")
        return
    atomic_write_json(path, key.to_dict())


def write_shard(folder: Path | str, index: int, key: ShardKey, study_ids: Sequence[str], image: np.ndarray,
                text: np.ndarray, bad: Sequence[dict[str, str]] = (), expected_ids: Sequence[str] | None = None) -> Path:
    """Write shard ``index`` atomically. ``study_ids`` are the rows (good images only);
    ``expected_ids`` all the studies the shard covers (default: ``study_ids``)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    text = np.ascontiguousarray(text, dtype=np.float32)
    if not (len(study_ids) == len(image) == len(text)):
        raise ValueError(f"shard {index}: {len(study_ids)} ids, {len(image)} image rows, {len(text)} text rows")
    meta = {**key.to_dict(), "shard": int(index), "ids": ids_digest(expected_ids or study_ids), "bad": list(bad),
            "image_dim": int(image.shape[1]) if image.ndim == 2 else 0, "text_dim": int(text.shape[1]) if text.ndim == 2 else 0}
    table = pa.table({"study_id": pa.array(list(study_ids), pa.string()), "image": _fixed(image), "text": _fixed(text)})
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path = shard_path(folder, index)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _fixed(matrix: np.ndarray) -> pa.Array:
    dim = int(matrix.shape[1]) if matrix.ndim == 2 else 0
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dim)


def shard_meta(path: Path) -> dict[str, Any] | None:
    """A shard's metadata, or ``None`` when the file is missing or unreadable (to be redone)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        return json.loads(metadata[META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def is_complete(folder: Path | str, index: int, key: ShardKey, expected_ids: Sequence[str]) -> bool:
    """True when shard ``index`` exists, is readable and was written for these inputs."""
    meta = shard_meta(shard_path(folder, index))
    if meta is None:
        return False
    return all(meta.get(k) == v for k, v in key.to_dict().items()) and meta.get("ids") == ids_digest(expected_ids)


def missing_shards(folder: Path | str, studies: Sequence[Study], key: ShardKey) -> list[int]:
    """Indexes of the shards still to embed."""
    return [i for i, (a, b) in enumerate(shard_slices(len(studies), key.shard_size))
            if not is_complete(folder, i, key, [s.study_id for s in studies[a:b]])]


@dataclass
class ShardFeatures:
    """Features read back from a shard folder, row-aligned with ``study_ids``."""

    study_ids: list[str]
    image: np.ndarray
    text: np.ndarray
    bad: list[dict[str, str]]
    key: dict[str, Any]


def read_shards(folder: Path | str) -> ShardFeatures:
    """Every shard of a folder in shard order; raises when one is missing or from other inputs."""
    folder = Path(folder)
    if not (folder / KEY_FILE).is_file():
        raise FileNotFoundError(f"no embedding shards at {folder} (missing {KEY_FILE}); "
                                "write them with `python -m index build --engine ray`")
    key = json.loads((folder / KEY_FILE).read_text())
    n_shards = len(shard_slices(int(key["n_studies"]), int(key["shard_size"])))
    ids: list[str] = []
    images, texts, bad = [], [], []
    for i in range(n_shards):
        path = shard_path(folder, i)
        meta = shard_meta(path)
        if meta is None or any(meta.get(k) != v for k, v in key.items()):
            raise ShardMismatchError(f"shard {path} is missing or was written for other inputs; rerun the ingest")
        table = pq.read_table(path)
        ids += table.column("study_id").to_pylist()
        images.append(_matrix(table.column("image"), meta["image_dim"]))
        texts.append(_matrix(table.column("text"), meta["text_dim"]))
        bad += meta.get("bad", [])
    return ShardFeatures(ids, np.concatenate(images), np.concatenate(texts), bad, key)


def _matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, dim)


def features_for(folder: Path | str, backbone, studies: Sequence[Study]) -> tuple[np.ndarray, np.ndarray]:
    """(image, text) frozen features of ``studies``, row-aligned, from a shard folder: the
    feature cache ``train.py --features DIR`` uses. The shards must come from the same
    backbone and preprocessing; studies absent from them (bad images) raise."""
    shards = read_shards(folder)
    for name in ("backbone_id", "preprocess_id"):
        if shards.key[name] != getattr(backbone, name):
            raise ShardMismatchError(f"shards at {folder} hold {name} {shards.key[name]!r}, "
                                     f"not {getattr(backbone, name)!r}")
    row = {sid: i for i, sid in enumerate(shards.study_ids)}
    absent = [s.study_id for s in studies if s.study_id not in row]
    if absent:
        raise ShardMismatchError(f"{len(absent)} studies have no features in {folder} (e.g. {absent[:3]}); "
                                 "bad images are skipped by the ingest: drop them from the data")
    rows = np.fromiter((row[s.study_id] for s in studies), dtype=np.int64, count=len(studies))
    return shards.image[rows], shards.text[rows]
