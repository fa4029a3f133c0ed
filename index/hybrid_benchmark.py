"""The findings-phrase benchmark's "hybrid" and "reports only" rows (eval.json ``phrase_benchmark``).

Why here and not in model/: the rows need the report channels (index layer). They are scored by
the same :func:`evaluation.phrase_benchmark.benchmark` as the dense rows, over the same gallery (the
test images with their reports), so the rows compare like for like: the fused order is handed to
it as a score matrix against an identity gallery (``scores @ I = scores``), which keeps this
module out of that file (owned by the phrase-training work). Relevance comes from the tags, which
the channels never read: the reports are indexed from their text alone.

``negated_tag_rate``: over the negated phrases ("no pleural effusion"), the share of top-10 hits
whose tags carry the negated finding (the issue's "≤ 2%" criterion).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.findings import profile
from data.report_findings import parse_query
from data.records import Study
from index.fusion import Ranking
from index.hybrid import DENSE_DEPTH, fuse, understood
from index.store import MetadataStore, write_store
from evaluation.phrase_benchmark import PHRASES, Phrase, benchmark
from evaluation.relevance_metrics import K

ROWS = ("hybrid", "reports only")


def fused_scores(store: MetadataStore, phrases: Sequence[Phrase], dense_sim: np.ndarray | None,
                 weights: dict[str, float] | None = None) -> np.ndarray:
    """Scores (phrases x gallery) whose descending order is each phrase's fused ranking.

    Fused items first (in fused order), then the rest by dense similarity (``dense_sim``, cosine
    in [-1, 1]) or, for reports only, by row; reports the phrase excludes come last."""
    n = len(store)
    out = np.zeros((len(phrases), n), dtype=np.float64)
    for i, p in enumerate(phrases):
        base = dense_sim[i] if dense_sim is not None else -np.arange(n) / max(n, 1)
        parsed = parse_query(p.text)
        if not understood(parsed) and dense_sim is not None:
            out[i] = base  # the engine's fallback: dense alone
            continue
        dense = None
        if dense_sim is not None:
            top = np.argsort(-dense_sim[i], kind="stable")[:DENSE_DEPTH]
            dense = Ranking(top.tolist())
        ranking = fuse(store.read, p.text, parsed, dense, weights=weights)
        out[i] = base - 10.0
        ids = ranking.fused.ids
        out[i, ids] = 10.0 + (len(ids) - np.arange(len(ids)))
        out[i, sorted(ranking.excluded)] = base[sorted(ranking.excluded)] - 20.0
    return out


def negated_tag_rate(scores: np.ndarray, phrases: Sequence[Phrase], study_findings: Sequence, k: int = K) -> float | None:
    """Share of the negated phrases' top-k hits whose tags carry the finding they negate."""
    bad = total = 0
    for i, p in enumerate(phrases):
        if not p.negated or p.finding is None:
            continue
        for j in np.argsort(-scores[i], kind="stable")[:k]:
            total += 1
            bad += p.finding in profile(study_findings[j])
    return bad / total if total else None


def hybrid_rows(phrase_emb: np.ndarray, image_emb: np.ndarray, studies: Sequence[Study],
                phrases: Sequence[Phrase] = PHRASES, weights: dict[str, float] | None = None) -> dict[str, Any]:
    """``{"hybrid": row, "reports only": row}`` for any phrase list, over ``studies`` (the gallery,
    row-aligned with ``image_emb``; ``phrase_emb`` row-aligned with ``phrases``)."""
    findings = [s.structured_findings for s in studies]
    dense_sim = np.asarray(phrase_emb, np.float64) @ np.asarray(image_emb, np.float64).T
    eye = np.eye(len(studies))
    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp) / "meta.sqlite", studies)
        store = MetadataStore.load(Path(tmp) / "meta.sqlite")
    try:
        rows = {}
        for name, sim in (("hybrid", dense_sim), ("reports only", None)):
            scores = fused_scores(store, phrases, sim, weights)
            rows[name] = {**benchmark(scores, eye, findings, phrases), "negated_tag_rate":
                          negated_tag_rate(scores, phrases, findings)}
        return rows
    finally:
        store.close()
