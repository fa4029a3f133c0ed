"""How fast and how right is the index? Prints ONE JSON document.

    python -m bench.search            # ~2-3 minutes on 2 cores
    python bench/search.py --big-n 20000   # quicker, smaller large case

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
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as `python bench/search.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswIndex, exact_top_k  # noqa: E402

K = 10
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


def _maxrss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() == "Linux" else kb / 2**20  # macOS reports bytes


def _rss_mb() -> float | None:
    """Current resident set size (Linux), to separate the data's share from the build's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


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
    """Runs in a fresh child process so ``ru_maxrss`` measures this case alone."""
    gallery, queries = clustered_gallery(n, n_queries, dim, n_clusters=200, seed=2)
    rss_before = _rss_mb()
    peak_before = _maxrss_mb()
    start = time.perf_counter()
    graph = HnswIndex.create(gallery, M=DEFAULT_M, ef_construction=DEFAULT_EF_CONSTRUCTION)
    build_s = time.perf_counter() - start
    peak_build = _maxrss_mb()
    rss_after = _rss_mb()
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


def _child(conn, kwargs: dict[str, Any]) -> None:
    conn.send(big_case(**kwargs))
    conn.close()


def run_isolated(fn_kwargs: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn_kwargs))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-n", type=int, default=4000)
    parser.add_argument("--big-n", type=int, default=100_000)
    parser.add_argument("--small-n", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import hnswlib  # noqa: F401  (version below)
    from importlib.metadata import version

    report = {
        "machine": {"cpus": mp.cpu_count(), "python": platform.python_version(), "hnswlib": version("hnswlib"),
                    "numpy": np.__version__, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "k": K,
        "defaults": {"M": DEFAULT_M, "ef_construction": DEFAULT_EF_CONSTRUCTION, "ef": DEFAULT_EF},
        "demo_gallery": demo_case(args.demo_n, 256, args.queries),
        "large_gallery": run_isolated({"n": args.big_n, "dim": 512, "n_queries": args.queries,
                                       "small_n": min(args.small_n, args.big_n)}),
    }
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
