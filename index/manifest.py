"""The index folder's on-disk contract: ``manifest.json``, file checksums, and the atomic swap.

An index folder holds ``images.hnsw``, ``reports.hnsw``, ``meta.sqlite`` and
``manifest.json``. The manifest is written last, names the model the vectors came from
(backbone id + trained-head checksum) and the sha256 of every other file, so a loader can
refuse a folder that belongs to another model or was damaged *before* handing any byte to
hnswlib (which trusts its input and may crash the process on a truncated file).

Saving never edits the live folder. ``publish()`` swaps a completely written staging
folder into place with two renames (see its docstring); a kill at any moment leaves either
the previous or the new index loadable.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from data.errors import IndexLoadError, IndexMismatchError, IndexCorruptError  # noqa: F401 (defined in data.errors, re-exported)
from data.atomic_io import atomic_write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGES = "images.hnsw"
REPORTS = "reports.hnsw"
META = "meta.sqlite"
DATA_FILES = (IMAGES, REPORTS, META)
# A Milvus index keeps its vectors in Milvus; its folder (``index.vector_store.artifacts_dir``) holds the rest.
HNSWLIB, MILVUS = "hnswlib", "milvus"
FAMILIARITY = "familiarity.safetensors"  # optional (trust.familiarity); checksummed when present
OPTIONAL_FILES = (FAMILIARITY,)

_STAGING = "staging"
_PREVIOUS = "previous"


@dataclass
class Manifest:
    backbone_id: str
    head_checksum: str
    embed_dim: int
    count: int
    M: int
    ef_construction: int
    ef: int
    data_version: str
    built_at: str
    updated_at: str
    build_seconds: float
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {sha256, bytes}
    format_version: int = FORMAT_VERSION
    space: str = "ip"
    data_root: str | None = None  # where relative image paths were rooted at build time
    run_dir: str | None = None  # the trained run the vectors came from (used by `index add`)
    store: str = HNSWLIB  # where the vectors live: this folder's graphs, or Milvus (index.vector_store)
    ef_tuning: dict[str, Any] | None = None  # how ef was chosen and the recall@10 it measured (index.ef_tuning)

    @property
    def data_files(self) -> tuple[str, ...]:
        """The files this kind of index folder cannot be without."""
        return DATA_FILES if self.store == HNSWLIB else (META,)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hnsw"] = {"M": d.pop("M"), "ef_construction": d.pop("ef_construction"), "ef": d.pop("ef")}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        hnsw = d.pop("hnsw")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known}, **hnsw)

    @property
    def identity(self) -> dict[str, Any]:
        return {"backbone_id": self.backbone_id, "head_checksum": self.head_checksum, "embed_dim": self.embed_dim}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "bytes": os.path.getsize(path)}


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk, so renames publish complete data."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_manifest(folder: Path, manifest: Manifest, extra_files: tuple[str, ...] = ()) -> None:
    """Checksum the data files (and optional ``extra_files``, e.g. ``index.frozen``'s vectors), then
    write ``manifest.json`` (always the last file written)."""
    folder = Path(folder)
    manifest.files = {}
    for name in dict.fromkeys((*manifest.data_files, *(n for n in OPTIONAL_FILES if (folder / n).is_file()), *extra_files)):
        fsync_path(folder / name)
        manifest.files[name] = file_digest(folder / name)
    atomic_write_json(folder / MANIFEST, manifest.to_dict())
    fsync_path(folder)


def read_manifest(index_dir: Path) -> Manifest:
    """Parse ``manifest.json``; a missing or unreadable one means the folder is not a usable index."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"no index at {index_dir}")
    path = index_dir / MANIFEST
    if not path.is_file():
        raise IndexCorruptError(f"{index_dir} has no {MANIFEST}: the index was never completely written")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{path} is not valid JSON ({exc}); rebuild the index") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{index_dir} has index format version {version!r}; this code reads version {FORMAT_VERSION}. "
            "Rebuild it with `python -m index build`."
        )
    try:
        return Manifest.from_dict(raw)
    except (KeyError, TypeError) as exc:
        raise IndexCorruptError(f"{path} lacks required fields ({exc}); rebuild the index") from exc


def verify_files(index_dir: Path, manifest: Manifest, checksums: bool = True) -> None:
    """Check every data file's size (and by default sha256) against the manifest.

    Sizes catch truncation instantly; the sha256 (about 1 s per GB) also catches bytes
    altered in place. Raises ``IndexCorruptError`` naming the file.
    """
    index_dir = Path(index_dir)
    for name in (*manifest.data_files, *sorted(set(manifest.files) - set(manifest.data_files))):
        path = index_dir / name
        expected = manifest.files.get(name)
        if expected is None:
            raise IndexCorruptError(f"{MANIFEST} in {index_dir} has no checksum for {name}")
        if not path.is_file():
            raise IndexCorruptError(f"{path} is missing; rebuild the index")
        size = os.path.getsize(path)
        if size != expected["bytes"]:
            raise IndexCorruptError(
                f"{path} is {size} bytes but the manifest says {expected['bytes']}: the file is "
                "truncated or was replaced. Rebuild with `python -m index build`."
            )
        if checksums:
            actual = file_digest(path)["sha256"]
            if actual != expected["sha256"]:
                raise IndexCorruptError(
                    f"{path} has sha256 {actual[:12]}... but the manifest says {expected['sha256'][:12]}...: "
                    "the file is corrupt. Rebuild with `python -m index build`."
                )


def check_identity(manifest: Manifest, identity: dict[str, Any], where: Path | str = "") -> None:
    """Refuse vectors from another model: their cosines against the encoder's queries are meaningless."""
    built = manifest.identity
    wanted = {
        "backbone_id": str(identity["backbone_id"]),
        "head_checksum": str(identity["head_checksum"]),
        "embed_dim": int(identity["embed_dim"]),
    }
    if built != wanted:
        raise IndexMismatchError(
            f"index {where} was built for backbone {built['backbone_id']!r}, head {built['head_checksum']!r}, "
            f"dim {built['embed_dim']}, but the encoder is backbone {wanted['backbone_id']!r}, head "
            f"{wanted['head_checksum']!r}, dim {wanted['embed_dim']}. Rebuild the index for this model "
            "(`python -m index build --run RUN_DIR --out INDEX_DIR`) or load the matching model."
        )


# --------------------------------------------------------------------------- the swap
def _sibling(index_dir: Path, kind: str) -> Path:
    return index_dir.parent / f".{index_dir.name}.{kind}-{uuid.uuid4().hex[:12]}"


def _siblings(index_dir: Path, kind: str) -> list[Path]:
    return sorted(index_dir.parent.glob(f".{index_dir.name}.{kind}-*"), key=lambda p: p.stat().st_mtime)


def recover_interrupted_swap(index_dir: Path) -> bool:
    """If a save was killed between its two renames, put the previous index back.

    Returns True when it restored one. Safe to call from several processes: only one
    rename can succeed, the others see the folder in place.
    """
    index_dir = Path(index_dir)
    if index_dir.exists():
        return False
    for previous in reversed(_siblings(index_dir, _PREVIOUS)):
        if (previous / MANIFEST).is_file():
            try:
                os.rename(previous, index_dir)
            except OSError:
                return index_dir.exists()
            fsync_path(index_dir.parent)
            return True
    return False


def _remove_leftovers(index_dir: Path) -> None:
    """Delete staging/previous folders of earlier interrupted saves (the live folder exists)."""
    for kind in (_STAGING, _PREVIOUS):
        for path in _siblings(index_dir, kind):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _writer_lock(index_dir: Path) -> Iterator[None]:
    """One writer per index folder (POSIX advisory lock; readers never take it)."""
    try:
        import fcntl
    except ImportError:  # Windows: single writer assumed
        yield
        return
    lock_path = index_dir.parent / f".{index_dir.name}.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_write(index_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder next to ``index_dir``; on normal exit, publish it.

    On an exception the staging folder is deleted and ``index_dir`` is untouched. The
    caller writes every file into the staging folder, ``manifest.json`` last.
    """
    index_dir = Path(index_dir).absolute()
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(index_dir):
        recover_interrupted_swap(index_dir)
        _remove_leftovers(index_dir)
        staging = _sibling(index_dir, _STAGING)
        staging.mkdir()
        try:
            yield staging
            if not (staging / MANIFEST).is_file():
                raise RuntimeError("staged index has no manifest; refusing to publish it")
            publish(staging, index_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def publish(staging: Path, index_dir: Path) -> None:
    """Swap a fully written ``staging`` folder in as ``index_dir``.

    1. ``rename(index_dir -> .NAME.previous-XXXX)`` (if an index exists)
    2. ``rename(staging -> index_dir)``
    3. delete the previous folder.

    Both folders are siblings on one filesystem, so each rename is atomic. A kill before
    (1) leaves the old index in place; between (1) and (2) leaves it intact under the
    ``previous`` name, and the next ``load``/save renames it back
    (``recover_interrupted_swap``); after (2) the new index is live and the leftover is
    deleted by the next save. A plain directory cannot be replaced by one rename, hence
    the two steps plus recovery.
    """
    previous = None
    if index_dir.exists():
        previous = _sibling(index_dir, _PREVIOUS)
        os.rename(index_dir, previous)
    try:
        os.rename(staging, index_dir)
    except BaseException:
        if previous is not None and not index_dir.exists():
            os.rename(previous, index_dir)
        raise
    fsync_path(index_dir.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
