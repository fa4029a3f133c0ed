"""Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009) of the hybrid text search's channels.

Why ranks and not scores: the channels score on unrelated scales (cosine, BM25, a structured match
grade), and RRF needs no calibration between them. Each channel gives an item
``weight / (k + rank)``; items a channel did not return get nothing from it. Ties inside a channel
(every report that says "left pleural effusion" is an equally full structured match) share one
rank (competition ranking: 1 + the number of strictly better items), so a channel does not invent
an order it does not have; the other channels then order the tied items.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

RRF_K = 60  # the constant of the original paper; a deep list's tail weighs little


@dataclass(frozen=True)
class Ranking:
    """One channel's answer: item ids best first, with scores (higher = better) to detect ties."""

    ids: Sequence[int]
    scores: Sequence[float] | None = None  # None: every item has its own rank

    def ranks(self) -> dict[int, int]:
        """Item -> 1-based competition rank."""
        out: dict[int, int] = {}
        for i, item in enumerate(self.ids):
            if item in out:
                continue
            tied = self.scores is not None and i > 0 and self.scores[i] == self.scores[i - 1]
            out[int(item)] = out[int(self.ids[i - 1])] if tied else i + 1
        return out


@dataclass(frozen=True)
class Fused:
    """A fused list: item ids best first, their fused scores and the channels that returned each."""

    ids: list[int]
    scores: list[float]
    channels: list[tuple[str, ...]]


def rrf(rankings: Mapping[str, Ranking], weights: Mapping[str, float] | None = None, k: int = RRF_K,
        exclude: set[int] | frozenset[int] = frozenset(), tie_break: str | None = None) -> Fused:
    """Fuse channel rankings by (weighted) RRF; ``exclude`` drops items from every channel.

    Equal fused scores are ordered by the ``tie_break`` channel's rank (then by item id), so the
    result is deterministic."""
    weights = weights or {}
    fused: dict[int, float] = {}
    found: dict[int, list[str]] = {}
    ranks = {name: r.ranks() for name, r in rankings.items()}
    for name, channel in ranks.items():
        w = float(weights.get(name, 1.0))
        for item, rank in channel.items():
            if item in exclude:
                continue
            fused[item] = fused.get(item, 0.0) + w / (k + rank)
            found.setdefault(item, []).append(name)
    second = ranks.get(tie_break or "", {})
    order = sorted(fused, key=lambda i: (-fused[i], second.get(i, 1 << 30), i))
    return Fused(order, [fused[i] for i in order], [tuple(found[i]) for i in order])
