"""How fast and how right is the index? Prints ONE JSON document.

    python -m bench.search            # ~2-3 minutes on 2 cores
    python bench/search.py --big-n 20000   # quicker, smaller large case
    python -m bench.search --suite [--with-1m]   # what `python -m bench` reports (10k, 100k[, 1M])
    python -m bench.search --ef-construction-sweep   # build time vs recall at 100k (~5 min)

(a) a demo-sized gallery (4,000 x 256, 40 clusters): hnsw ef sweep (and M sweep) ->
    recall@10 against exact search, median / p95 single-query latency;
(b) 100k x 512 synthetic clustered vectors (200 gaussian clusters): build time and peak
    RSS (measured in a child process so nothing else inflates it), ef sweep, and median
    single-query latency of hnsw vs exact numpy at 10k and 100k items.
The defaults in ``index/ann.py`` (M, ef_construction, ef) are chosen from these figures:
the smallest ef whose recall@10 >= 0.98 in both cases, rounded up for margin.

Synthetic data: cluster centres uniform on the sphere; members = centre + isotropic
gaussian noise of the same expected norm (``spread=1``; within-cluster cosine ~0.5),
normalised. Queries are fresh draws from the same clusters, never gallery members.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as `python bench/search.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, log, machine, peak_rss_mb, rss_mb, run_isolated, scratch_dir  # noqa: E402
from index import ef_tuning  # noqa: E402
from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswIndex, exact_top_k  # noqa: E402

K = 10
# The 1M case's M: at M 16 the graph's recall@10 plateaus at 0.975 (ef 1024) on this gallery
# (bench/results/search_1m_m16.json), though a 100k proxy with as many vectors per cluster reached
# 0.987 at ef 384; M 32 reached 0.990 at ef 192 on that proxy.
M_1M = 32
EF_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 200)


def clustered_gallery(
    n: int, n_queries: int, dim: int, n_clusters: int, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries): L2-normalised gaussian clusters, queries drawn from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int, chunk: int = 10_000) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for start in range(0, m, chunk):  # chunked: generation must not dominate peak RSS
            size = min(chunk, m - start)
            x = centres[rng.integers(0, n_clusters, size)]
            x += (spread / np.sqrt(dim)) * rng.standard_normal((size, dim), dtype=np.float32)
            out[start : start + size] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k that the search returned."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def per_query_ms(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[float, float]:
    """Median and p95 of one-query-at-a-time latency (what the app does), in ms."""
    fn(queries[0])  # warm-up
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def _alternating_blocks_ms(fns: list[Callable[[np.ndarray], Any]], queries: np.ndarray, rounds: int = 2) -> list[list[float]]:
    """Per-query ms of several functions, each over all queries in turn, for ``rounds`` rounds:
    a drift in machine load hits all of them alike, while each block keeps its own data in
    cache (query-by-query alternation would let the exact scan evict the graph every time)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            fn(queries[0])  # warm-up
            for q in queries:
                start = time.perf_counter()
                fn(q)
                times[i].append((time.perf_counter() - start) * 1e3)
    return times


def ef_sweep(graph: HnswIndex, queries: np.ndarray, truth: np.ndarray, efs=EF_SWEEP) -> list[dict[str, float]]:
    rows = []
    for ef in efs:
        graph.set_ef(ef)
        found = np.concatenate([graph.search(q, K).ids for q in queries])
        median, p95 = per_query_ms(lambda q: graph.search(q, K), queries)
        rows.append({"ef": ef, "recall_at_10": round(recall_at_k(found, truth), 4),
                     "median_ms": round(median, 4), "p95_ms": round(p95, 4)})
    return rows


def smallest_ef(rows: list[dict[str, float]], target: float = 0.98) -> int | None:
    ok = [r["ef"] for r in rows if r["recall_at_10"] >= target]
    return min(ok) if ok else None


def demo_case(n: int, dim: int, n_queries: int) -> dict[str, Any]:
    gallery, queries = clustered_gallery(n, n_queries, dim, n_clusters=40, seed=1)
    truth = exact_top_k(gallery, queries, K).ids
    out: dict[str, Any] = {"n": n, "dim": dim, "n_queries": n_queries, "clusters": 40, "by_M": {}}
    for M in (8, 16, 32):
        start = time.perf_counter()
        graph = HnswIndex.create(gallery, M=M, ef_construction=DEFAULT_EF_CONSTRUCTION)
        build_s = time.perf_counter() - start
        rows = ef_sweep(graph, queries, truth)
        out["by_M"][str(M)] = {"build_s": round(build_s, 3), "smallest_ef_recall_0.98": smallest_ef(rows), "sweep": rows}
    median, p95 = per_query_ms(lambda q: exact_top_k(gallery, q, K), queries)
    out["exact_median_ms"], out["exact_p95_ms"] = round(median, 4), round(p95, 4)
    return out


def filtered_case(
    graph: HnswIndex, gallery: np.ndarray, queries: np.ndarray, fractions=(0.5, 0.1, 0.05, 0.03, 0.01)
) -> list[dict]:
    """Filtered search as the engine runs it (hnswlib ``filter=`` above the subset threshold,
    exact over the subset below it) against exact search over the allowed subset, whose
    own latency (row gather + product) is given for comparison."""
    rng = np.random.default_rng(5)
    matrix = graph.vectors()
    rows = []
    for fraction in fractions:
        allowed = np.sort(rng.choice(len(gallery), int(fraction * len(gallery)), replace=False))
        truth = exact_top_k(gallery[allowed], queries, K, ids=allowed).ids
        results = [graph.search(q, K, allowed) for q in queries]
        found = np.concatenate([r.ids for r in results])
        median, p95 = per_query_ms(lambda q: graph.search(q, K, allowed), queries[:100])
        exact_ms, _ = per_query_ms(lambda q: exact_top_k(matrix[allowed], q, K, ids=allowed), queries[:100])
        rows.append({"allowed_fraction": fraction, "allowed": int(len(allowed)),
                     "answered_by_graph": float(np.mean([not r.exact for r in results])),
                     "only_allowed": bool(np.isin(found, allowed).all()),
                     "recall_at_10": round(recall_at_k(found, truth), 4),
                     "median_ms": round(median, 4), "p95_ms": round(p95, 4),
                     "exact_subset_median_ms": round(exact_ms, 4)})
    return rows


def big_case(n: int, dim: int, n_queries: int, small_n: int) -> dict[str, Any]:
    """Runs in a fresh child process (``run_isolated``) so its peak RSS is this case's alone."""
    gallery, queries = clustered_gallery(n, n_queries, dim, n_clusters=200, seed=2)
    rss_before = rss_mb()
    peak_before = peak_rss_mb()
    start = time.perf_counter()
    graph = HnswIndex.create(gallery, M=DEFAULT_M, ef_construction=DEFAULT_EF_CONSTRUCTION)
    build_s = time.perf_counter() - start
    peak_build = peak_rss_mb()
    rss_after = rss_mb()
    truth = exact_top_k(gallery, queries, K).ids
    rows = ef_sweep(graph, queries, truth)
    out: dict[str, Any] = {
        "n": n, "dim": dim, "n_queries": n_queries, "clusters": 200,
        "M": DEFAULT_M, "ef_construction": DEFAULT_EF_CONSTRUCTION,
        "build_s": round(build_s, 2),
        "build_threads": mp.cpu_count(),
        "rss_mb_before_build": rss_before and round(rss_before, 1),  # python + numpy + the 100k vectors
        "peak_rss_mb_before_build": round(peak_before, 1),
        "peak_rss_mb_after_build": round(peak_build, 1),  # the figure to size a machine by
        "rss_mb_growth_from_build": rss_after and rss_before and round(rss_after - rss_before, 1),
        "smallest_ef_recall_0.98": smallest_ef(rows),
        "sweep": rows,
    }
    graph.set_ef(DEFAULT_EF)
    out["filtered_at_default_ef"] = filtered_case(graph, gallery, queries)
    # hnsw vs exact, one query at a time, at the default ef, at small_n and n items.
    latency = {}
    small = HnswIndex.create(gallery[:small_n], M=DEFAULT_M, ef_construction=DEFAULT_EF_CONSTRUCTION)
    for size, g in ((small_n, small), (n, graph)):
        g.set_ef(DEFAULT_EF)
        matrix = gallery[:size]
        sub_truth = exact_top_k(matrix, queries, K).ids
        found = np.concatenate([g.search(q, K).ids for q in queries])
        hnsw_ms, hnsw_p95 = per_query_ms(lambda q: g.search(q, K), queries)
        exact_ms, exact_p95 = per_query_ms(lambda q: exact_top_k(matrix, q, K), queries)
        latency[str(size)] = {
            "ef": DEFAULT_EF,
            "recall_at_10": round(recall_at_k(found, sub_truth), 4),
            "hnsw_median_ms": round(hnsw_ms, 4), "hnsw_p95_ms": round(hnsw_p95, 4),
            "exact_median_ms": round(exact_ms, 4), "exact_p95_ms": round(exact_p95, 4),
            "exact_over_hnsw": round(exact_ms / hnsw_ms, 1),
        }
    out["hnsw_vs_exact"] = latency
    return out


def synthetic_studies(n: int) -> list:
    """Minimal metadata rows for ``index.build.build_index`` (the store is part of a build)."""
    from data.records import Study

    return [Study(study_id=f"s{i:07d}", patient_id=f"p{i // 2:07d}", image_paths=(f"images/s{i:07d}.png",),
                  findings="", impression="no acute disease" if i % 3 else "small left pleural effusion",
                  label=int(i % 3 == 0), tags=() if i % 3 else ("Pleural Effusion/left/small",), view="PA")
            for i in range(n)]


def scale_case(n: int, dim: int = 512, n_queries: int = 300, exact_queries: int | None = None,
               full_index: bool = False, M: int = DEFAULT_M, keep: str | None = None,
               reuse: str | None = None) -> dict[str, Any]:
    """One gallery size, in its own process (peak RSS is this case's): build time and memory,
    recall@10 at the default ef, single-query latency of hnsw vs exact numpy.

    ``full_index=True`` times the project's whole ``index.build.build_index`` (two graphs,
    images and reports, both given this gallery, + the SQLite store + manifest with
    checksums), then queries through the saved index as the engine loads it.

    One graph (``full_index=False``): ``keep`` saves it (and what its build measured, beside it as
    JSON) so that ``reuse`` can time its queries again later (e.g. on a quiet machine) without the
    long build; the gallery is re-drawn from its seed and checked against the saved fingerprint.
    """
    gallery, queries = clustered_gallery(n, n_queries, dim, n_clusters=200, seed=2)
    rss_data = rss_mb() and round(rss_mb(), 1)
    out: dict[str, Any] = {"n": n, "dim": dim, "n_queries": n_queries, "clusters": 200,
                           "M": M, "ef_construction": DEFAULT_EF_CONSTRUCTION,
                           "build_threads": mp.cpu_count(), "rss_mb_with_data": rss_data}
    started = time.perf_counter()
    if full_index:
        from index.build import build_index
        from index.engine import SearchEngine

        studies = synthetic_studies(n)
        folder = scratch_dir("bench-index-") / "index"
        graph_s: list[float] = []
        create = ef_tuning.build_tuned

        def timed_create(*args, **kwargs):  # time each graph (build + ef tuning) inside build_index
            t0 = time.perf_counter()
            made = create(*args, **kwargs)
            graph_s.append(round(time.perf_counter() - t0, 2))
            return made

        ef_tuning.build_tuned = timed_create  # what index.build calls
        rss_data = rss_mb() and round(rss_mb(), 1)
        started = time.perf_counter()
        try:
            build_index(folder, gallery, gallery, studies, {"backbone_id": "bench", "head_checksum": "", "embed_dim": dim})
        finally:
            ef_tuning.build_tuned = create
        out["what_is_built"] = "index.build.build_index: 2 hnsw graphs (images, reports) + SQLite store + manifest"
        out["build_s"] = round(time.perf_counter() - started, 2)
        out["build_s_per_graph"] = graph_s
        out["index_mb_on_disk"] = round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 1)
        engine = SearchEngine.load(folder, None)
        graph = engine.vector_store.graphs["images"]
        out["ef"], out["ef_tuning"] = engine.manifest.ef, engine.manifest.ef_tuning
        load_start = time.perf_counter()
        SearchEngine.load(folder, None)
        out["index_load_s"] = round(time.perf_counter() - load_start, 2)
    elif reuse:
        graph = _reuse_graph(Path(reuse), gallery, out)
    else:
        graph, choice = ef_tuning.build_tuned(gallery, M, DEFAULT_EF_CONSTRUCTION)
        out["what_is_built"] = "one hnsw graph, its ef chosen from measured recall (index.ef_tuning)"
        out["build_s"] = round(time.perf_counter() - started, 2)  # build + ef tuning
        out["ef"], out["ef_tuning"] = choice.ef, {**choice.to_manifest(ef_tuning.SAMPLE), "sweep": choice.sweep}
    if not reuse:
        out["rss_mb_after_build"] = rss_mb() and round(rss_mb(), 1)
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)  # whole process: data + graph(s) + build scratch
        out["rss_mb_growth_from_build"] = rss_data and out["rss_mb_after_build"] and round(out["rss_mb_after_build"] - rss_data, 1)
        out["load_average_after_build"] = [round(x, 2) for x in os.getloadavg()]
    if keep and not full_index:
        _keep_graph(Path(keep), graph, gallery, out)
    out["load_average_before_queries"] = [round(x, 2) for x in os.getloadavg()]
    truth = exact_top_k(gallery, queries, K).ids
    graph.set_ef(DEFAULT_EF)  # the former fixed default, for comparison
    out["recall_at_10_at_fixed_ef_64"] = round(recall_at_k(np.concatenate([graph.search(q, K).ids for q in queries]), truth), 4)
    graph.set_ef(out["ef"])  # the tuned ef: what the index serves with
    found = np.concatenate([graph.search(q, K).ids for q in queries])
    out["recall_at_10"] = round(recall_at_k(found, truth), 4)
    from threadpoolctl import threadpool_limits  # ships with scikit-learn

    hnsw_ms, hnsw_p95 = per_query_ms(lambda q: graph.search(q, K), queries)  # hnswlib: 1 thread per query
    exact_set = queries[: exact_queries or n_queries]
    with threadpool_limits(limits=1):  # like for like: the app gives each query one core
        paired = _alternating_blocks_ms([lambda q: graph.search(q, K), lambda q: exact_top_k(gallery, q, K)], exact_set)
    exact_all_ms, exact_all_p95 = per_query_ms(lambda q: exact_top_k(gallery, q, K), exact_set)
    hnsw_paired, exact_ms = float(np.median(paired[0])), float(np.median(paired[1]))
    out.update({
        "hnsw_median_ms": round(hnsw_ms, 4), "hnsw_p95_ms": round(hnsw_p95, 4),
        "exact_median_ms": round(exact_ms, 4), "exact_p95_ms": round(float(np.percentile(paired[1], 95)), 4),
        "exact_all_cores_median_ms": round(exact_all_ms, 4), "exact_all_cores_p95_ms": round(exact_all_p95, 4),
        "exact_queries_timed": len(exact_set),
        # both one thread per query, timed in alternating blocks (same machine load)
        "exact_over_hnsw": round(exact_ms / hnsw_paired, 1),
        "exact_all_cores_over_hnsw": round(exact_all_ms / hnsw_ms, 1),
    })
    if full_index:
        engine_ms, engine_p95 = per_query_ms(lambda q: engine.search_by_image_vector(q, k=K), queries[:100])
        out["engine_vector_query_median_ms"] = round(engine_ms, 4)  # hnsw + metadata rows -> hits
        out["engine_vector_query_p95_ms"] = round(engine_p95, 4)
    out["load_average_after_queries"] = [round(x, 2) for x in os.getloadavg()]
    return out


BUILD_FIELDS = ("what_is_built", "M", "ef_construction", "build_threads", "build_s", "ef", "ef_tuning", "rss_mb_with_data",
                "rss_mb_after_build", "peak_rss_mb", "rss_mb_growth_from_build", "load_average_after_build")


def _fingerprint(gallery: np.ndarray) -> str:
    """A short digest of the gallery (a few rows): a reused graph must be over the same vectors."""
    import hashlib

    rows = gallery[np.linspace(0, len(gallery) - 1, 64).astype(np.int64)]
    return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()[:16]


def _keep_graph(path: Path, graph: HnswIndex, gallery: np.ndarray, out: dict[str, Any]) -> None:
    """Save the graph and, beside it (``.json``), what its build measured, for ``--reuse``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    graph.save(path)
    build = {k: out[k] for k in BUILD_FIELDS if k in out}
    meta = {"n": len(gallery), "dim": gallery.shape[1], "fingerprint": _fingerprint(gallery), "build": build,
            "built_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    out["kept_index"] = str(path)


def _reuse_graph(path: Path, gallery: np.ndarray, out: dict[str, Any]) -> HnswIndex:
    """The graph ``--keep-index`` saved, with its build's figures (not re-measured) in ``out``."""
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise SystemExit(f"--reuse {path}: no saved graph (and {meta_path.name}) there; build one with --keep-index")
    meta = json.loads(meta_path.read_text())
    if (meta["n"], meta["dim"], meta["fingerprint"]) != (len(gallery), gallery.shape[1], _fingerprint(gallery)):
        raise SystemExit(f"--reuse {path}: saved for another gallery ({meta['n']} x {meta['dim']})")
    out.update(meta["build"])
    out["reused_index"] = {"path": str(path), "built_at": meta.get("built_at"),
                           "note": "build figures are the saved build's; recall and latency measured now"}
    return HnswIndex.load(path, dim=gallery.shape[1], ef=int(meta["build"]["ef"]))


def one_million(M: int = M_1M, keep: str | None = None, reuse: str | None = None) -> dict[str, Any]:
    """The 1M x 512 case alone (what ``--with-1m`` adds; ``--only-1m`` runs just this)."""
    return run_isolated(scale_case, n=1_000_000, n_queries=100, exact_queries=20, full_index=False,
                        M=M, keep=keep, reuse=reuse)


def suite(sizes=(10_000, 100_000), with_1m: bool = False, n_queries: int = 300, project_dim: bool = True) -> dict[str, Any]:
    """The figures ``python -m bench`` reports: one isolated process per gallery size.

    The largest case (100k x 512) builds the full index (both graphs + store): it is also the
    index-build benchmark (target < 60 s, peak RSS reported). ``project_dim`` adds the same full
    build at the width this project's index really stores (the head's 256-d output), with fewer
    timed queries. 1M x 512 (2 GB of vectors; the build takes many minutes on 2 cores) runs
    only with ``with_1m``.
    """
    from model.head import RetrievalHead

    cases: dict[str, Any] = {}
    for n in (*sizes, *((1_000_000,) if with_1m else ())):
        log(f"search: {n:,} x 512 ...")
        cases[str(n)] = one_million() if n == 1_000_000 else run_isolated(
            scale_case, n=n, n_queries=n_queries, exact_queries=None if n < 100_000 else 100, full_index=(n == max(sizes)))
        c = cases[str(n)]
        log(f"search: {n:,}: build {c['build_s']}s, recall@10 {c['recall_at_10']}, "
            f"hnsw {c['hnsw_median_ms']} ms vs exact {c['exact_median_ms']} ms")
    if project_dim:
        n, dim = max(sizes), RetrievalHead(8, 8).embed_dim
        log(f"search: {n:,} x {dim} (the head's embedding width), full index ...")
        cases[f"{n}x{dim}"] = c = run_isolated(scale_case, n=n, dim=dim, n_queries=100, exact_queries=50, full_index=True)
        log(f"search: {n:,} x {dim}: build {c['build_s']}s, recall@10 {c['recall_at_10']}")
    if not with_1m:
        cases["1000000"] = "skipped: opt-in (python -m bench --with-1m / python -m bench.search --suite --with-1m)"
    return {"k": K, "defaults": {"M": DEFAULT_M, "ef_construction": DEFAULT_EF_CONSTRUCTION, "ef": DEFAULT_EF},
            "cases": cases}


def ef_construction_case(n: int = 100_000, dim: int = 512, n_queries: int = 300,
                         values=(64, 100, 128, 200), efs=(32, 48, 64, 96)) -> dict[str, Any]:
    """Build time vs recall: the same 100k gallery built with each ef_construction (M fixed),
    recall@10 and latency at several query ef. What chose DEFAULT_EF_CONSTRUCTION."""
    gallery, queries = clustered_gallery(n, n_queries, dim, n_clusters=200, seed=2)
    truth = exact_top_k(gallery, queries, K).ids
    rows = []
    for ef_c in values:
        start = time.perf_counter()
        graph = HnswIndex.create(gallery, M=DEFAULT_M, ef_construction=ef_c)
        build_s = time.perf_counter() - start
        sweep = ef_sweep(graph, queries, truth, efs=efs)
        rows.append({"ef_construction": ef_c, "M": DEFAULT_M, "build_s": round(build_s, 2),
                     "smallest_ef_recall_0.98": smallest_ef(sweep), "sweep": sweep})
        print(f"ef_construction {ef_c}: build {build_s:.1f}s, "
              + ", ".join(f"ef {r['ef']}: {r['recall_at_10']}" for r in sweep), file=sys.stderr, flush=True)
        del graph
    return {"n": n, "dim": dim, "n_queries": n_queries, "build_threads": mp.cpu_count(), "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-n", type=int, default=4000)
    parser.add_argument("--big-n", type=int, default=100_000)
    parser.add_argument("--small-n", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--suite", action="store_true",
                        help="only the figures python -m bench reports: 10k and 100k (full index build) cases")
    parser.add_argument("--with-1m", action="store_true", help="with --suite: add the 1M x 512 case (2 GB, long build)")
    parser.add_argument("--only-1m", action="store_true", help="only the 1M x 512 case (build, tuned ef, recall, latency)")
    parser.add_argument("--m-1m", type=int, default=M_1M, help=f"hnsw M of the 1M graph (default {M_1M})")
    parser.add_argument("--keep-index", metavar="PATH", help="save the 1M graph there (+ PATH.json) for --reuse")
    parser.add_argument("--reuse", metavar="PATH", help="time the 1M case on a graph --keep-index saved (no build)")
    parser.add_argument("--ef-construction-sweep", action="store_true",
                        help="build the big gallery with several ef_construction values: build time vs recall")
    parser.add_argument("--ef-construction-values", type=int, nargs="+", default=[64, 100, 128, 200],
                        help="with --ef-construction-sweep")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.suite or args.only_1m or args.ef_construction_sweep:
        report: dict[str, Any] = {"machine": machine()}
        if args.only_1m:
            report["search"] = {"k": K, "cases": {"1000000": one_million(args.m_1m, args.keep_index, args.reuse)}}
        elif args.suite:
            report["search"] = suite(sizes=(args.small_n, args.big_n), with_1m=args.with_1m, n_queries=args.queries)
        else:
            report["ef_construction_sweep"] = run_isolated(ef_construction_case, n=args.big_n, n_queries=args.queries,
                                                           values=tuple(args.ef_construction_values))
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        emit(report)
        return
    import hnswlib  # noqa: F401  (version below)
    from importlib.metadata import version

    report = {
        "machine": {"cpus": mp.cpu_count(), "python": platform.python_version(), "hnswlib": version("hnswlib"),
                    "numpy": np.__version__, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "k": K,
        "defaults": {"M": DEFAULT_M, "ef_construction": DEFAULT_EF_CONSTRUCTION, "ef": DEFAULT_EF},
        "demo_gallery": demo_case(args.demo_n, 256, args.queries),
        "large_gallery": run_isolated(big_case, n=args.big_n, dim=512, n_queries=args.queries,
                                      small_n=min(args.small_n, args.big_n)),
    }
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
