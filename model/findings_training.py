"""What training and evaluation need from structured findings: codes, SupCon weights, probe targets.

Why here: the training loop (``model.training``) stays plain; this module turns
``Study.structured_findings`` into (1) the integer profile codes the graded metrics use
(:mod:`evaluation.relevance_metrics`), (2) the graded positives of finding-aware SupCon for each batch
(:class:`PairRelevance`) and (3) the 0/1 finding x side targets of the auxiliary probe (``--w-findings``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from data.findings import profile
from evaluation.relevance_metrics import encode_profiles, relevance_matrix

SUPCON_LABELS = ("binary", "findings")
MIN_PROBE_COUNT = 20  # a finding needs this many positive training studies to get probe targets


def study_codes(studies: Sequence) -> tuple[np.ndarray, list[str]]:
    """(N, F) profile codes of every study (positive findings only) and the finding names."""
    return encode_profiles([profile(s.structured_findings) for s in studies])


class PairRelevance:
    """Graded relevance (:func:`evaluation.relevance_metrics.relevance_matrix`) of any two studies, read from
    a table over their distinct finding profiles that is computed once. Finding-aware SupCon needs it
    for every batch; computing it per batch was half of each training epoch (1.17 of 2.3 s on the full
    demo), the table takes ~1.5 s once (1,321 distinct profiles among 3,955 studies)."""

    CHUNK = 64  # table rows per block: the (rows, U, F) temporaries stay small (7x faster than one block)

    def __init__(self, codes: np.ndarray) -> None:
        distinct, inverse = np.unique(np.asarray(codes), axis=0, return_inverse=True)
        self.profile_of = inverse.reshape(-1)
        self.table = np.concatenate([relevance_matrix(distinct[i:i + self.CHUNK], distinct)
                                     for i in range(0, len(distinct), self.CHUNK)]).astype(np.float32)

    def batch(self, rows: torch.Tensor) -> torch.Tensor:
        """Graded SupCon positives of one batch: relevance of every pair of its studies, (B, B) float32."""
        p = self.profile_of[rows.numpy()]
        return torch.from_numpy(self.table[np.ix_(p, p)])


def probe_targets(codes: np.ndarray, train_rows: np.ndarray, min_count: int = MIN_PROBE_COUNT) -> np.ndarray:
    """(N, 3 * F') 0/1 targets: for each finding frequent in the training split, present / on the
    left / on the right (bilateral sets both). Chosen from the training rows only."""
    frequent = np.flatnonzero((codes[train_rows] & 1).astype(bool).sum(axis=0) >= min_count)
    c = codes[:, frequent]
    return np.concatenate([(c & 1) > 0, (c & 2) > 0, (c & 4) > 0], axis=1).astype(np.float32)
