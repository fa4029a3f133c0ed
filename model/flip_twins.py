"""Flip twins: each one-sided study's film mirrored left-right, the image-side hard negative.

Why: the side-swap term (``model.side_swap``) teaches the TEXT side which side a finding is on,
but the image side stayed the limit (i2i side-swap 0.17; a linear left/right probe on the frozen
image features of the former 2x2-grid tower reached validation AUROC 0.73 only, ``bench.side_probe``;
the blocks[4] 4x4-grid tower of ``model.offline_tower`` reaches 0.85). A horizontally
mirrored film is a mirror patient whose findings' sides are exchanged, so for a study with a
one-sided finding its report must be closer to its own image than to the mirrored one
(``model.loss.flip_twin_loss``), and optionally the mirrored image pairs with the side-swapped
report. Only studies of :func:`model.side_swap.swap_rows` get a twin (the others are zero rows).

The twins' frozen image features are embedded once and cached beside the study features
(``model.features.feature_cache_dir``: backbone id, preprocessing, data version and image files
in the key), in chunks written atomically, so an interrupted run resumes at the first missing one.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from data.atomic_io import atomic_write_npz
from data.images import load_radiograph
from data.records import Study
from model.side_swap import swap_rows
from runtime.threads import map_bulk

CACHE_FOLDER = "flipped_image"  # inside the study features' folder
CHUNK = 256  # studies per cache chunk (as model.features)


def mirror(image: Image.Image) -> Image.Image:
    """The film mirrored left-right (image x -> 1 - x): the mirror patient's film."""
    return ImageOps.mirror(image)


def flipped_image_features(backbone, studies: Sequence[Study], cache_dir: Path | None = None, batch_size: int = 32,
                           progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(features, mask): frozen image features of every masked study's mirrored film (zero rows
    where ``mask`` is False), row-aligned with ``studies``; ``mask`` is :func:`swap_rows`."""
    from model.features import feature_cache_dir

    mask = swap_rows(studies)
    folder = Path(cache_dir or feature_cache_dir(backbone, studies)) / CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    bar = tqdm(total=int(mask.sum()), desc=f"embedding flip twins ({backbone.name})", unit="image", disable=not progress)
    for c in range(0, len(studies), CHUNK):
        chunk_mask = mask[c:c + CHUNK]
        path = folder / f"chunk{c // CHUNK:05d}.npz"
        feats = _read_chunk(path, chunk_mask, backbone.backbone_id)
        if feats is None:
            feats = _embed_chunk(backbone, studies[c:c + CHUNK], chunk_mask, batch_size)
            atomic_write_npz(path, features=feats, mask=chunk_mask, backbone_id=np.array(backbone.backbone_id))
        parts.append(feats)
        bar.update(int(chunk_mask.sum()))
    bar.close()
    if not parts:
        return np.zeros((0, int(backbone.image_dim)), np.float32), mask
    return np.concatenate(parts), mask


def _embed_chunk(backbone, chunk: Sequence[Study], mask: np.ndarray, batch_size: int) -> np.ndarray:
    """The chunk's masked films, mirrored, through the frozen image tower in batches on the bulk
    workers (``runtime.threads.map_bulk``); zero rows for the others."""
    at = np.flatnonzero(mask)
    batches = [at[i:i + batch_size] for i in range(0, len(at), batch_size)]

    def run(rows: np.ndarray) -> np.ndarray:
        pixels = torch.stack([backbone.preprocess(mirror(load_radiograph(chunk[i].image_path).image)) for i in rows])
        return backbone.encode_image_batch(pixels).numpy().astype(np.float32)

    out = np.zeros((len(chunk), int(backbone.image_dim)), np.float32)
    if batches:
        out[at] = np.concatenate(map_bulk(run, batches))
    return out


def _read_chunk(path: Path, mask: np.ndarray, backbone_id: str) -> np.ndarray | None:
    """A chunk written for this mask by this backbone, else None (missing, damaged or stale: embed again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, stored, owner = z["features"], z["mask"], str(z["backbone_id"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if owner != backbone_id or stored.shape != mask.shape or not bool((stored == mask).all()):
        return None
    return feats
