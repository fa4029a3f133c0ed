"""Knowledge-enhanced text input: what a text says, parsed, beside its frozen features (issue #23).

Why: the frozen text tower places "left effusion" and "right effusion" at cosine ~0.97 and reads
"no effusion" close to "effusion"; the head cannot separate what its input does not. In the spirit
of MedKLIP/KAD, every text the head reads (a report, a typed phrase, a side-swapped twin) also
gets a small vector of its parsed findings - per vocabulary finding: present (1, uncertain 0.5),
on the left, on the right (bilateral: both), negated - plus one "normal" bit, from the same
rule-based parser as the query chips (:func:`data.findings_text.parse_phrase`; never from tags).
The head's text projector reads ``[frozen features, scale * knowledge]`` (``--knowledge``), so a
parse is one more input, not a rule: the dense ranking still comes from the learned space.

A head trained with it records ``knowledge_dim`` and ``knowledge_scale`` in its config; every
caller turns texts into the head's input through :func:`text_inputs`, which is the identity for a
head without it (the paper's recipe, older runs).
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from data.findings import BILATERAL, LEFT, NEGATIVE, POSITIVE, RIGHT, VOCABULARY
from data.findings_text import parse_phrase

NAMES: tuple[str, ...] = tuple(sorted(VOCABULARY))
_COLUMN = {name: j for j, name in enumerate(NAMES)}
PER_FINDING = 4  # present, left, right, negated
KNOWLEDGE_DIM = PER_FINDING * len(NAMES) + 1  # + "normal"
DEFAULT_SCALE = 2.0  # the vector's weight beside unit-norm frozen features (chosen on validation)


@functools.lru_cache(maxsize=1 << 16)
def _vector(text: str) -> np.ndarray:
    parsed = parse_phrase(text)
    v = np.zeros(KNOWLEDGE_DIM, np.float32)
    for f in parsed.findings:
        j = _COLUMN.get(f.name)
        if j is None:
            continue
        at = PER_FINDING * j
        if f.certainty == NEGATIVE:
            v[at + 3] = 1.0
            continue
        v[at] = 1.0 if f.certainty == POSITIVE else 0.5
        v[at + 1] = float(f.side in (LEFT, BILATERAL))
        v[at + 2] = float(f.side in (RIGHT, BILATERAL))
    v[-1] = float(parsed.normal)
    v.setflags(write=False)
    return v


def knowledge_vectors(texts: Sequence[str], scale: float = DEFAULT_SCALE) -> np.ndarray:
    """(N, KNOWLEDGE_DIM) float32 parsed-findings vectors of ``texts`` (memoised per text)."""
    if len(texts) == 0:
        return np.zeros((0, KNOWLEDGE_DIM), np.float32)
    return np.stack([_vector(str(t or "")) for t in texts]) * np.float32(scale)


def head_knowledge(head) -> tuple[int, float]:
    """(knowledge_dim, scale) the head was built with; (0, 0.0) for a head without it."""
    config = getattr(head, "config", {}) or {}
    return int(config.get("knowledge_dim", 0)), float(config.get("knowledge_scale", 0.0))


def text_inputs(head, feats, texts: Sequence[str] | None):
    """The head's text input for frozen ``feats`` (numpy or torch, row-aligned with ``texts``):
    the features themselves for a head without knowledge input, else ``[feats, knowledge]``."""
    dim, scale = head_knowledge(head)
    if dim == 0:
        return feats
    if texts is None or len(texts) != len(feats):
        raise ValueError("this head reads the parsed findings of each text (knowledge input): "
                         "the texts must be given with their features")
    if isinstance(feats, torch.Tensor):
        return torch.cat([feats, torch.from_numpy(knowledge_vectors(texts, scale)).to(feats.dtype)], dim=1)
    return with_knowledge(feats, texts, scale)


def with_knowledge(feats: np.ndarray, texts: Sequence[str], scale: float) -> np.ndarray:
    """``[feats, scale * knowledge(texts)]`` for training inputs (before a head exists); identity at scale 0."""
    if scale <= 0:
        return feats
    return np.concatenate([np.asarray(feats, np.float32), knowledge_vectors(texts, scale)], axis=1)
