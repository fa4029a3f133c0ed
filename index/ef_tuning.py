"""Choose hnsw's query beam width ``ef`` from measured recall, at build and at ``index add``.

Why measured: a fixed ``ef`` does not hold recall as an index grows. ``python -m bench.search``
measured recall@10 0.988 at 100k x 512 but 0.623 at 1M x 512 with the same ``ef=64``; hnswlib's
own guidance is to tune ``ef`` against brute force on the data itself.

How: a seeded sample of the vectors is held out of the graph while the rest go in, then searched
in the graph and exactly, like fresh queries (a vector already in the graph finds itself and the
neighbours wired for it, which flatters recall), then inserted too. The chosen ``ef`` is the
smallest on :data:`EF_GRID` whose recall@10 reaches :data:`TARGET_RECALL` on every query set
(for the image graph also the report vectors, the distribution typed queries come from).
``M`` is chosen too where a rebuild is cheap (:func:`build_tuned`). Filtered searches are
unaffected: they keep the exact fallback of ``index.ann``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from index.ann import HnswIndex, normalise
from index.manifest import IMAGES, REPORTS, Manifest

log = logging.getLogger(__name__)

K = 10
TARGET_RECALL = 0.98
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 640, 768, 1024)
SAMPLE = 300  # queries per set: recall's standard error near 0.98 is ~0.003
CHUNK = 50_000  # vectors inserted per call
MIN_HELD = 50  # fewer new vectors than this: no held-out set of them (too noisy), the extra sets only
CHEAP_REBUILD_N = 20_000  # below this many vectors a second graph with a larger M is worth trying
M_STEPS = (16, 32)


@dataclass
class EfChoice:
    """What the tuning measured: the ef chosen and recall@10 at it, per query set."""

    ef: int
    recall_at_10: dict[str, float]
    reached: bool | None  # False: even the largest ef on the grid missed the target (used anyway); None: not measured
    M: int
    sweep: list[dict[str, Any]] = field(default_factory=list)

    def to_manifest(self, sample: int) -> dict[str, Any]:
        return {"target_recall_at_10": TARGET_RECALL, "k": K, "ef": self.ef, "M": self.M, "reached": self.reached,
                "recall_at_10": self.recall_at_10, "queries_per_set": sample,
                "method": "smallest ef on the grid reaching the target; queries: a seeded sample of the indexed "
                          "vectors held out of the graph until measured (and the other modality's vectors) vs exact search"}


def kth_exact_score(matrix: np.ndarray, queries: np.ndarray, k: int, skip: np.ndarray | None = None) -> np.ndarray:
    """Each query's k-th best exact similarity over the rows of ``matrix`` not in ``skip``
    (chunked: bounded memory at a million rows)."""
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), 32):
        sims = queries[start:start + 32] @ matrix.T
        if skip is not None and len(skip):
            sims[:, skip] = -np.inf
        out[start:start + 32] = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return out


def measured_recall(graph: HnswIndex, queries: np.ndarray, kth: np.ndarray, k: int) -> float:
    """recall@k counting ties: a found item is right when it is as similar as the true k-th
    (indexes hold exact duplicates, e.g. the many identical normal reports, which any order may
    return; counting by id would call a correct tie a miss)."""
    scores = graph.search(queries, k).scores
    return float(np.sum(scores >= kth[:, None] - 1e-5)) / (k * len(queries))


def choose_ef(graph: HnswIndex, matrix: np.ndarray, query_sets: Mapping[str, np.ndarray],
              target: float = TARGET_RECALL, grid=EF_GRID, skip: np.ndarray | None = None) -> EfChoice:
    """Smallest ef on ``grid`` reaching ``target`` recall@10 on every set of ``query_sets``
    (name -> queries); ``matrix`` holds the vectors in the graph, and the rows ``skip`` that are not
    (any order: recall counts ties, see ``measured_recall``, so only the true k-th score is needed).
    Leaves the graph at that ef."""
    n = len(matrix) - (0 if skip is None else len(skip))
    k = min(K, n)
    if k <= 0:
        return EfChoice(graph.ef, {name: 1.0 for name in query_sets}, True, graph.M)
    truths = {name: kth_exact_score(matrix, q, k, skip) for name, q in query_sets.items()}
    sweep, chosen = [], None
    for ef in grid:
        graph.set_ef(ef)
        recalls = {name: round(measured_recall(graph, q, truths[name], k), 4) for name, q in query_sets.items()}
        sweep.append({"ef": ef, **recalls})
        if min(recalls.values()) >= target:
            chosen = (ef, recalls)
            break
    reached = chosen is not None
    ef, recalls = chosen or (grid[-1], {k_: v for k_, v in sweep[-1].items() if k_ != "ef"})
    graph.set_ef(ef)
    return EfChoice(ef, recalls, reached, graph.M, sweep)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as unit-length float32 rows, without a copy when they already are (a million
    512-d vectors are 2 GB; the index's are normalised by the encoder and by ``build_index``)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.einsum("ij,ij->i", x, x)
    if np.all(np.abs(norms - 1) < 1e-4):
        return x
    return normalise(x)


def held_out_rows(n: int, sample: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """A seeded sample of row numbers ``< n`` (sorted)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(sample, n), replace=False))


def insert_tuned(graph: HnswIndex, vectors: np.ndarray, labels: np.ndarray, in_graph: np.ndarray,
                 extra_queries: Mapping[str, np.ndarray] | None = None, sample: int = SAMPLE,
                 target: float = TARGET_RECALL, grid=EF_GRID) -> EfChoice:
    """Insert ``vectors`` (labels ``labels``) into ``graph`` and choose its ef on the way.

    All but a held-out sample go in first; the sample then queries the graph like a fresh query
    would (a vector already in the graph finds itself and the neighbours wired for it: recall
    measured that way is flattering, e.g. 0.986 where fresh queries got 0.965 at M=32), its truth
    exact over ``in_graph`` (the vectors already in the graph) plus the inserted ones; then the sample goes in too. ``extra_queries`` (never inserted) are further sets, e.g.
    the report vectors for the image graph, the distribution typed queries come from. With
    fewer than 10 x MIN_HELD vectors to insert, only the extra sets are measured (or nothing: the
    graph's ef is kept, with ``reached`` None)."""
    vectors, labels = _unit_rows(vectors), np.asarray(labels, np.int64)
    size = min(sample, len(vectors) // 10)  # at most a tenth: the graph measured is nearly the whole one
    held = held_out_rows(len(vectors), size) if size >= MIN_HELD else np.zeros(0, np.int64)
    first = np.setdiff1d(np.arange(len(vectors)), held)
    for start in range(0, len(first), CHUNK):  # chunks: no second copy of a million vectors
        rows = first[start:start + CHUNK]
        graph.add_labelled(vectors[rows], labels[rows])
    matrix = np.concatenate([in_graph, vectors]) if len(in_graph) else vectors  # no copy when building
    sets = {"held_out": vectors[held]} if len(held) else {}
    for name, q in (extra_queries or {}).items():
        if len(q) >= MIN_HELD:
            q = normalise(q)
            sets[name] = q[held_out_rows(len(q), sample, seed=1)]
    if sets:
        choice = choose_ef(graph, matrix, sets, target, grid, skip=len(in_graph) + held)
    else:
        choice = EfChoice(graph.ef, {}, None, graph.M)
    graph.add_labelled(vectors[held], labels[held])
    graph.set_ef(choice.ef)
    return choice


def build_tuned(vectors: np.ndarray, M: int, ef_construction: int, extra_queries: Mapping[str, np.ndarray] | None = None,
                sample: int = SAMPLE, target: float = TARGET_RECALL, grid=EF_GRID) -> tuple[HnswIndex, EfChoice]:
    """A graph over ``vectors`` (labels 0..n-1) with its ef chosen by :func:`insert_tuned`. Where a
    rebuild is cheap (< CHEAP_REBUILD_N vectors, full grid) and that ef is in the grid's slow half
    or misses the target, the next M is tried too and the one needing the smaller ef kept."""
    def build(m: int) -> tuple[HnswIndex, EfChoice]:
        graph = HnswIndex.empty(vectors.shape[1], len(vectors), M=m, ef_construction=ef_construction)
        return graph, insert_tuned(graph, vectors, np.arange(len(vectors)), np.zeros((0, vectors.shape[1]), np.float32),
                                   extra_queries, sample, target, grid)

    graph, choice = build(M)
    larger = [m for m in M_STEPS if m > M]
    if (tuple(grid) == EF_GRID and len(vectors) < CHEAP_REBUILD_N and larger
            and (not choice.reached or choice.ef > EF_GRID[len(EF_GRID) // 2])):
        other, other_choice = build(larger[0])
        if other_choice.reached and (not choice.reached or other_choice.ef < choice.ef):
            graph, choice = other, other_choice
    log.info("hnsw ef %d (M %d): recall@10 %s (target %.2f)", choice.ef, choice.M, choice.recall_at_10, target)
    return graph, choice


def combine(choices: Mapping[str, EfChoice], sample: int = SAMPLE) -> tuple[int, dict[str, Any]]:
    """One ef for the index (the manifest has one, shared by both graphs): the largest chosen,
    with what each graph measured."""
    ef = max(c.ef for c in choices.values())
    record = {name: c.to_manifest(sample) for name, c in choices.items()}
    return ef, {"ef": ef, "graphs": record}


def tuned_graphs(image_emb: np.ndarray, report_emb: np.ndarray, M: int, ef_construction: int,
                 ef: int | None) -> tuple[HnswIndex, HnswIndex, int, dict[str, Any]]:
    """Both graphs with the ef (and M) ``index.ef_tuning`` chose; a given ``ef`` is kept, its recall measured."""
    grid = (ef,) if ef else EF_GRID
    images, image_choice = build_tuned(image_emb, M, ef_construction, {"reports": report_emb}, grid=grid)
    reports, report_choice = build_tuned(report_emb, M, ef_construction, {"images": image_emb}, grid=grid)
    chosen, record = combine({IMAGES: image_choice, REPORTS: report_choice})
    record["chosen_by"] = "given (--ef): recall measured only" if ef else "measured recall (index.ef_tuning)"
    for graph in (images, reports):
        graph.set_ef(chosen)
    return images, reports, chosen, record


def grow_tuned(index_dir: Path, staging: Path, manifest: Manifest, image_emb: np.ndarray,
               report_emb: np.ndarray) -> tuple[int, dict[str, Any]]:
    """Both graphs grown by the new vectors into ``staging``, their ef chosen again from measured
    recall as they grow (``index.ef_tuning.insert_tuned``; their M stays: no rebuild)."""
    new_count = manifest.count + len(image_emb)
    choices = {}
    for name, emb, other in ((IMAGES, image_emb, {"reports": report_emb}), (REPORTS, report_emb, {"images": image_emb})):
        graph = HnswIndex.load(index_dir / name, dim=manifest.embed_dim, ef=manifest.ef)
        old = graph.vectors()
        choices[name] = insert_tuned(graph, emb, np.arange(manifest.count, new_count), old, other)
        if len(graph) != new_count:
            raise RuntimeError(f"{name}: expected {new_count} items after adding, found {len(graph)}")
        graph.save(staging / name)
    chosen, record = combine(choices)
    record["chosen_by"] = "measured recall after index add (index.ef_tuning)"
    return chosen, record
