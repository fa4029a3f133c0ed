"""Step 1 of training and of index building: embed every study once with the frozen backbone.

Features are cached on disk under a key made of the backbone id, its preprocessing and the
data version, in fixed-size chunks written atomically: an interrupted run resumes at the first
missing chunk instead of recomputing finished batches.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from data.atomic_io import atomic_write_json, atomic_write_npz
from data.dataset import studies_fingerprint
from data.images import load_radiograph
from data.paths import cache_root
from data.records import Study
from runtime.threads import map_bulk

CHUNK = 256  # studies per cache chunk


def feature_cache_dir(backbone, studies: Sequence[Study], root: Path | None = None) -> Path:
    """Cache folder for this backbone × preprocessing × data version × image files.

    The image files enter by size and modification time, so re-rendered or replaced images
    (same names, new pixels) never reuse stale features.
    """
    key = json.dumps([backbone.backbone_id, backbone.preprocess_id, studies_fingerprint(studies),
                      images_signature(studies)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(root or cache_root() / "features") / digest


def images_signature(studies: Sequence[Study]) -> str:
    """Hash of (size, mtime) of every study's image: cheap (no pixel reads) yet content-sensitive."""
    h = hashlib.sha256()
    for s in studies:
        try:
            st = Path(s.image_path).stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(b"missing;")
    return h.hexdigest()[:16]


def cached_frozen_features(
    backbone,
    studies: Sequence[Study],
    cache_dir: Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen image and report features of every study, row-aligned with ``studies``."""
    folder = Path(cache_dir) if cache_dir is not None else feature_cache_dir(backbone, studies)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        folder / "key.json",
        {"backbone_id": backbone.backbone_id, "preprocess_id": backbone.preprocess_id,
         "data_version": studies_fingerprint(studies), "n": len(studies)},
    )
    n_chunks = (len(studies) + CHUNK - 1) // CHUNK
    images, texts = [], []
    bar = tqdm(total=len(studies), desc=f"embedding ({backbone.name})", unit="study", disable=not progress)
    for c in range(n_chunks):
        chunk = studies[c * CHUNK : (c + 1) * CHUNK]
        path = folder / f"chunk{c:05d}.npz"
        cached = _read_chunk(path, len(chunk))
        if cached is None:
            cached = _embed_chunk(backbone, chunk, batch_size)
            _write_chunk(path, *cached)
        images.append(cached[0])
        texts.append(cached[1])
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(images), np.concatenate(texts)


def _embed_chunk(backbone, chunk: Sequence[Study], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and report features of one chunk as independent jobs on the bulk workers
    (``runtime.threads.map_bulk``: one per core, one torch thread each): the chunk's reports as
    one job, given first (the longest; and a Hugging Face fast tokenizer must not be used by
    two threads at once), and its image batches (decode -> preprocess -> forward)."""
    jobs = [("text", [s.report_text for s in chunk])]
    jobs += [("image", chunk[i : i + batch_size]) for i in range(0, len(chunk), batch_size)]

    def run(job) -> np.ndarray:
        kind, items = job
        if kind == "text":
            return backbone.encode_texts(items).numpy().astype(np.float32)
        return _embed_images(backbone, items, batch_size)

    results = map_bulk(run, jobs)
    return np.concatenate(results[1:]), results[0]


def _embed_images(backbone, studies: Sequence[Study], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(studies), batch_size):
        batch = studies[start : start + batch_size]
        pixels = torch.stack([backbone.preprocess(load_radiograph(s.image_path).image) for s in batch])
        out.append(backbone.encode_image_batch(pixels).numpy().astype(np.float32))
    return np.concatenate(out)


def _read_chunk(path: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            image, text = z["image"], z["text"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # damaged or truncated chunk: recompute it
    return (image, text) if len(image) == n and len(text) == n else None


def _write_chunk(path: Path, image: np.ndarray, text: np.ndarray) -> None:
    atomic_write_npz(path, image=image, text=text)
