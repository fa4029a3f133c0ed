"""Hybrid text search: the dense cross-modal ranking fused with the indexed reports' lexical and
structured channels (``SearchEngine.search_by_text(..., mode="hybrid")``).

Why three channels: the dense model reaches every image, including studies whose report is missing
or wrong, but it is nearly blind to side and polarity (the frozen text tower puts "left X" and
"right X" at cosine 0.975); BM25 (index.lexical) finds reports using the query's words; the
structured channel (index.report_findings) knows side, size and negation. They are fused by
reciprocal rank fusion (index.fusion); a finding the query negates excludes the reports asserting
it from every channel. Studies without a report are reached by the dense channel alone. Nothing
here reads a study's tags: they stay the relevance truth the benchmark scores against.

A phrase the parser cannot read (no finding, not a normal wording) falls back to dense, and the
result says so (``SearchResult.note``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from data.findings_text import ParsedPhrase
from data.report_findings import parse_query
from index.fusion import Fused, Ranking, rrf
from index.lexical import lexical_ranking
from index.report_findings import Query, count_reports, excluded, structured_ranking

MODES = ("dense", "hybrid")
DENSE, LEXICAL, STRUCTURED = "dense", "lexical", "structured"
DENSE_DEPTH = 50  # dense hits fused: deeper ones add < 1/110 each under RRF (validation: 50 ~ 100)
# Channel weights (weighted RRF), chosen on the VALIDATION split by a rule fixed beforehand: the best
# nDCG@10 among the weightings whose phrase side-swap is <= 0.03 (`python -m bench.hybrid --weight-grid`,
# re-run when the default head changed: the dense channel is the head's). With the knowledge-input head
# (dense, lexical, structured): (1,1,1) nDCG 0.870 swap 0.024; (1,1,5) 0.892 / 0.028; (1,1,8) 0.906 / 0.023;
# (1,1,12) 0.910 / 0.022; (0.5,1,5) 0.913 / 0.031 (over the limit); bench/results/hybrid_weights.json has all.
WEIGHTS = {DENSE: 1.0, LEXICAL: 1.0, STRUCTURED: 12.0}
NOT_UNDERSTOOD = ("The phrase names no finding the search knows, so it ran on image similarity alone "
                  "(dense); the indexed reports were not used.")
NO_REPORTS = "This index holds no report text, so the search ran on image similarity alone (dense)."


def check_mode(mode: str) -> str:
    """``mode`` lower-cased; ``ValueError`` (one line) unless it is dense or hybrid."""
    value = str(mode or "").strip().lower()
    if value not in MODES:
        raise ValueError(f"text mode must be one of {', '.join(MODES)}, not {mode!r}")
    return value


def understood(parsed: ParsedPhrase) -> bool:
    """Whether the report channels can use the phrase: it names a finding or is a normal wording."""
    return bool(parsed.findings) or parsed.normal


@dataclass(frozen=True)
class HybridRanking:
    """The fused list (best first, with each item's channels) and the reports the query excludes."""

    fused: Fused
    excluded: set[int]


def fuse(read: Query, text: str, parsed: ParsedPhrase, dense: Ranking | None, allowed: set[int] | None = None,
         weights: dict[str, float] | None = None) -> HybridRanking:
    """Fuse the dense ranking (``None``: reports only) with the report channels for one query."""
    channels = {LEXICAL: lexical_ranking(read, text, parsed, allowed),
                STRUCTURED: structured_ranking(read, parsed, allowed)}
    if dense is not None:
        channels = {DENSE: dense, **channels}
    drop = excluded(read, parsed)
    return HybridRanking(rrf(channels, weights or WEIGHTS, exclude=drop, tie_break=DENSE if dense else STRUCTURED),
                         drop)


def has_reports(engine: Any) -> bool:
    """Whether the engine's index holds report text (hybrid is then the app's default)."""
    return count_reports(engine.store.read) > 0


def hybrid_search(engine: Any, text: str, emb: np.ndarray, k: int, filters: Any, exact: bool,
                  familiarity: Any) -> Any:
    """The engine's hybrid text query (``emb``: the phrase's normalised embedding): a ``SearchResult``
    (``engine``: an ``index.engine.SearchEngine``, not imported here, which imports this module)."""
    parsed = parse_query(text)
    depth = max(int(k), DENSE_DEPTH)
    dense, ids, scores = engine.ranked(emb, depth, filters, "images", exact, "text")
    dense = replace(dense, familiarity=familiarity)
    note = "" if understood(parsed) else NOT_UNDERSTOOD
    if not note and not has_reports(engine):
        note = NO_REPORTS
    if note:
        return replace(dense, hits=engine.hits_at(ids[:int(k)], scores[:int(k)]), mode=DENSE, note=note)
    allowed = None
    if dense.filters.active:
        f = dense.filters
        allowed = set(engine.store.matching_ids(f.label, f.view, f.finding, f.side).tolist())
    ranking = fuse(engine.store.read, text, parsed, Ranking([int(i) for i in ids]), allowed)
    top = ranking.fused.ids[:int(k)]
    shown = engine.hits_at(np.array(top, dtype=np.int64), ranking.fused.scores[:len(top)])  # fused scores
    hits = [replace(h, channels=c) for h, c in zip(shown, ranking.fused.channels)]
    return replace(dense, hits=hits, mode="hybrid", n_below_floor=0)
