"""Side-swap rate of image queries (i2t, i2i): does a left finding bring back right ones?

Why: the phrase benchmark measures side errors of typed queries; an image query with a left
effusion can make the same mistake. Among the top-10 hits that share a sided finding with the
query (the query has it on the left only or the right only; the hit has it on a known side),
the share that has it only on the opposite side, pooled over (query, hit, finding) triples.
Chance: the same share over every gallery candidate (all but the query itself for i2i).
"""
from __future__ import annotations

import numpy as np

from evaluation.relevance_metrics import K

_PRESENT = 1


def _triples(query_codes: np.ndarray, hit_codes: np.ndarray) -> tuple[int, int]:
    """(shared sided triples, swapped ones) for queries (Q, F) against hits (Q, H, F)."""
    qs = (query_codes >> 1).astype(np.int64)[:, None, :]
    hs = (hit_codes >> 1).astype(np.int64)
    shared = ((qs == 1) | (qs == 2)) & ((hit_codes & _PRESENT) > 0) & (hs > 0)
    swapped = shared & ((hs & qs) == 0)
    return int(shared.sum()), int(swapped.sum())


def side_swap_rate(similarity: np.ndarray, query_codes: np.ndarray, gallery_codes: np.ndarray,
                   exclude_self: bool = False, k: int = K) -> dict[str, float | int | None]:
    """``side_swap_rate`` of the top-``k`` of each query row of ``similarity`` (queries x gallery),
    its chance level and the number of shared sided triples it is computed over."""
    sim = np.array(similarity, dtype=np.float64)
    q, g = np.asarray(query_codes), np.asarray(gallery_codes)
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    n, swaps = _triples(q, g[order])
    all_n = all_swaps = 0
    for start in range(0, len(q), 64):  # chance over every candidate, in blocks (Q x N x F booleans)
        block = q[start:start + 64]
        hits = np.broadcast_to(g[None], (len(block),) + g.shape)
        bn, bs = _triples(block, hits)
        if exclude_self:
            sn, ss = _triples(block, g[start:start + 64][:, None, :])
            bn, bs = bn - sn, bs - ss
        all_n, all_swaps = all_n + bn, all_swaps + bs
    return {"side_swap_rate": swaps / n if n else None, "n_sided_hits": n,
            "chance_side_swap_rate": all_swaps / all_n if all_n else None}
