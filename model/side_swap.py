"""Side-swapped reports: the hard negative that teaches the head which side a finding is on.

Why: the frozen text tower barely tells "left pleural effusion" from "right pleural effusion"
(MiniLM cosine 0.975 between the two, 0.45 across findings), and InfoNCE over whole reports
rarely puts a study's report beside the same report with the sides swapped, so the head is
never asked to keep that small direction. Here each study with a one-sided finding gets its
report with "left" and "right" exchanged; during training that text is an extra negative for
the study's image (``model.loss.side_swap_loss``): the image must be closer to its own report
than to the same words on the other side.

The swapped texts' frozen features are cached beside the study features (``model.features``'s
folder for the same backbone and collection), so they are embedded once.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from data.atomic_io import atomic_write_npz
from data.findings import LEFT, RIGHT
from data.records import Study

_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER = {"left": "right", "right": "left"}
CACHE_FILE = "side_swapped_text.npz"


def swap_sides(text: str) -> str:
    """``text`` with the words left and right exchanged, keeping their capitalisation."""
    def other(match: re.Match) -> str:
        word = match.group(0)
        swapped = _OTHER[word.lower()]
        if word.isupper():
            return swapped.upper()
        return swapped.capitalize() if word[0].isupper() else swapped

    return _SIDE_WORD.sub(other, text)


def has_one_sided_finding(study: Study) -> bool:
    """A finding on the left or the right only (bilateral or unsided findings have no swap)."""
    return any(f.side in (LEFT, RIGHT) for f in study.structured_findings)


def swap_rows(studies: Sequence[Study]) -> np.ndarray:
    """Boolean mask of studies that get a side-swapped negative: a one-sided finding, and a
    report whose words change when the sides are swapped."""
    return np.array([has_one_sided_finding(s) and swap_sides(s.report_text) != s.report_text for s in studies],
                    dtype=bool)


def swapped_text_features(backbone, studies: Sequence[Study], cache_dir: Path | None = None,
                          batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features, mask): the frozen text features of every study's side-swapped report (zero
    rows where ``mask`` is False), row-aligned with ``studies``; cached in ``cache_dir``."""
    from model.features import feature_cache_dir

    mask = swap_rows(studies)
    path = Path(cache_dir or feature_cache_dir(backbone, studies)) / CACHE_FILE
    cached = _read(path, mask)
    if cached is not None:
        return cached, mask
    texts = [swap_sides(studies[i].report_text) for i in np.flatnonzero(mask)]
    feats = np.zeros((len(studies), int(backbone.text_dim)), np.float32)
    if texts:
        parts = [backbone.encode_texts(texts[i:i + batch_size]).numpy().astype(np.float32)
                 for i in range(0, len(texts), batch_size)]
        feats[mask] = np.concatenate(parts)
    atomic_write_npz(path, features=feats, mask=mask)
    return feats, mask


def _read(path: Path, mask: np.ndarray) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, stored = z["features"], z["mask"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return feats if stored.shape == mask.shape and bool((stored == mask).all()) else None
