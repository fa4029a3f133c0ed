"""Choose hnsw's query beam width ``ef`` from measured recall, at build and at ``index add``.

Why measured: a fixed ``ef`` does not hold recall as an index grows. ``python -m bench.search``
measured recall@10 0.988 at 100k x 512 but 0.623 at 1M x 512 with the same ``ef=64``; hnswlib's
own guidance is to tune ``ef`` against brute force on the data itself.

How: a seeded sample of the index's own vectors is searched in the graph and exactly, each
query leaving itself out (it would otherwise be its own trivially found first neighbour, which
flatters recall); the chosen ``ef`` is the smallest on :data:`EF_GRID` whose recall@10 reaches
:data:`TARGET_RECALL` on every query set given (for the image graph also the report vectors,
the distribution typed queries come from: cross-modal queries sit off the graph's own data and
usually need a wider beam). ``M`` is chosen too where a rebuild is cheap (:func:`tune_graph`).
Filtered searches are unaffected: they keep the exact fallback of ``index.ann``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from index.ann import HnswIndex, normalise

log = logging.getLogger(__name__)

K = 10
TARGET_RECALL = 0.98
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
SAMPLE = 300  # queries per set: recall's standard error near 0.98 is ~0.003
CHEAP_REBUILD_N = 20_000  # below this many vectors a second graph with a larger M is worth trying
M_STEPS = (16, 32)


@dataclass
class EfChoice:
    """What the tuning measured: the ef chosen and recall@10 at it, per query set."""

    ef: int
    recall_at_10: dict[str, float]
    reached: bool  # False: even the largest ef on the grid missed the target (it is used anyway)
    M: int
    sweep: list[dict[str, Any]] = field(default_factory=list)

    def to_manifest(self, sample: int) -> dict[str, Any]:
        return {"target_recall_at_10": TARGET_RECALL, "k": K, "ef": self.ef, "M": self.M, "reached": self.reached,
                "recall_at_10": self.recall_at_10, "queries_per_set": sample,
                "method": "smallest ef on the grid reaching the target; queries: a seeded sample of the index's "
                          "own vectors (each leaving itself out) vs exact search"}


def kth_exact_score(matrix: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None) -> np.ndarray:
    """Each query's k-th best exact similarity (chunked: bounded memory at a million rows); row
    ``exclude[i]`` never counts for query ``i``."""
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), 32):
        sims = queries[start:start + 32] @ matrix.T
        if exclude is not None:
            sims[np.arange(len(sims)), exclude[start:start + 32]] = -np.inf
        out[start:start + 32] = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return out


def _recall(graph: HnswIndex, queries: np.ndarray, kth: np.ndarray, k: int, exclude: np.ndarray | None) -> float:
    """recall@k counting ties: a found item is right when it is as similar as the true k-th
    (indexes hold exact duplicates, e.g. the many identical normal reports, which any order may
    return; counting by id would call a correct tie a miss)."""
    result = graph.search(queries, k + (exclude is not None))
    hits = 0
    for i, (ids, scores) in enumerate(zip(result.ids, result.scores)):
        keep = [s for r, s in zip(ids, scores) if exclude is None or r != exclude[i]][:k]
        hits += sum(s >= kth[i] - 1e-5 for s in keep)
    return hits / (k * len(queries))


def choose_ef(graph: HnswIndex, matrix: np.ndarray, query_sets: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
              target: float = TARGET_RECALL, grid=EF_GRID) -> EfChoice:
    """Smallest ef on ``grid`` reaching ``target`` recall@10 on every set of ``query_sets``
    (name -> (queries, row each query must leave out, or None)); leaves the graph at that ef."""
    n = len(matrix)
    k = min(K, n - 1) if n > 1 else 0
    if k <= 0:
        return EfChoice(graph.ef, {name: 1.0 for name in query_sets}, True, graph.M)
    truths = {name: kth_exact_score(matrix, q, k, ex) for name, (q, ex) in query_sets.items()}
    sweep, chosen = [], None
    for ef in grid:
        graph.set_ef(ef)
        recalls = {name: round(_recall(graph, q, truths[name], k, ex), 4) for name, (q, ex) in query_sets.items()}
        sweep.append({"ef": ef, **recalls})
        if min(recalls.values()) >= target:
            chosen = (ef, recalls)
            break
    reached = chosen is not None
    ef, recalls = chosen or (grid[-1], {k_: v for k_, v in sweep[-1].items() if k_ != "ef"})
    graph.set_ef(ef)
    return EfChoice(ef, recalls, reached, graph.M, sweep)


def own_sample(matrix: np.ndarray, sample: int = SAMPLE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(queries, their own rows): a seeded sample of the index's vectors, each to leave itself out."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(matrix), size=min(sample, len(matrix)), replace=False))
    return np.ascontiguousarray(matrix[rows]), rows


def tune_graph(vectors: np.ndarray, build: Callable[[np.ndarray, int], HnswIndex], M: int,
               extra_queries: Mapping[str, np.ndarray] | None = None, sample: int = SAMPLE,
               target: float = TARGET_RECALL, grid=EF_GRID) -> tuple[HnswIndex, EfChoice]:
    """Build with ``M`` and choose its ef; where a rebuild is cheap (< CHEAP_REBUILD_N vectors)
    and that ef is the grid's slowest half, also try the next M and keep the one needing the
    smaller ef (only on the full grid: a caller giving its own ef keeps its M). ``build(vectors, M)`` makes the graph; ``extra_queries`` are more query sets
    (e.g. the report vectors for the image graph), searched without leaving anything out."""
    matrix = normalise(vectors)
    sets = {"own": own_sample(matrix, sample)}
    for name, q in (extra_queries or {}).items():
        sets[name] = (own_sample(normalise(q), sample, seed=1)[0], None)
    graph = build(matrix, M)
    choice = choose_ef(graph, matrix, sets, target, grid)
    larger = [m for m in M_STEPS if m > M]
    if tuple(grid) == EF_GRID and len(matrix) < CHEAP_REBUILD_N and larger and (not choice.reached or choice.ef > EF_GRID[len(EF_GRID) // 2]):
        other = build(matrix, larger[0])
        other_choice = choose_ef(other, matrix, sets, target, grid)
        if other_choice.reached and (not choice.reached or other_choice.ef < choice.ef):
            graph, choice = other, other_choice
    log.info("hnsw ef %d (M %d): recall@10 %s (target %.2f)", choice.ef, choice.M, choice.recall_at_10, target)
    return graph, choice


def retune(graph: HnswIndex, extra_queries: Mapping[str, np.ndarray] | None = None, sample: int = SAMPLE,
           target: float = TARGET_RECALL) -> EfChoice:
    """Choose the ef of a grown graph (``index add``: its M stays, a rebuild is not cheap)."""
    matrix = graph.vectors()
    sets = {"own": own_sample(matrix, sample)}
    for name, q in (extra_queries or {}).items():
        sets[name] = (own_sample(normalise(q), sample, seed=1)[0], None)
    return choose_ef(graph, matrix, sets, target)


def combine(choices: Mapping[str, EfChoice], sample: int = SAMPLE) -> tuple[int, dict[str, Any]]:
    """One ef for the index (the manifest has one, shared by both graphs): the largest chosen,
    with what each graph measured."""
    ef = max(c.ef for c in choices.values())
    record = {name: c.to_manifest(sample) for name, c in choices.items()}
    return ef, {"ef": ef, "graphs": record}
