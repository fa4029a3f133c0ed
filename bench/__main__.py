"""The whole benchmark suite: ``python -m bench`` prints ONE JSON document (and saves it to
bench/out/latest.json). About 6-9 minutes on 2 cores; progress goes to stderr.

    python -m bench                      # embed, search, query, train_head, startup (warm), familiarity, hybrid, pacs_ingest, serving
    python -m bench --cold               # + cold start of the full demo (many minutes)
    python -m bench --with-1m            # + the 1M x 512 search case (2 GB; long hnsw build)
    python -m bench --only query embed   # some parts
    python -m bench --quick              # every part at smoke sizes (seconds to minutes; what the tests run)

Each part runs in its own process (``python -m bench.<part>``, also runnable alone), so one
part's threads, caches and peak memory never colour another's. Every figure that has a
target sits next to it as ``{"value", "target", "met"}``; ``summary`` collects them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, emit, log, machine, setup_environment

PARTS = ("embed", "search", "query", "train_head", "startup", "familiarity", "hybrid", "pacs_ingest", "serving")

# ``--quick``: the same parts at smoke sizes (the documented-commands test runs this; figures not for the README).
QUICK_ARGS = {
    "embed": ["--n", "8", "--reps", "1", "--no-runtimes"],
    "search": ["--demo-n", "300", "--big-n", "2000", "--small-n", "500", "--queries", "20"],
    "query": ["--backbones", "offline", "--n-image", "3", "--n-policy", "0", "--no-runtimes"],
    "train_head": ["--no-thread-compare", "--epochs", "2"],
    "startup": ["--warm-demo-limit", "40", "--warm-runs", "1"],
    "familiarity": ["--quick"],
    "hybrid": ["--no-quality", "--reps", "1"],
    "pacs_ingest": ["--reps", "1"],
    "serving": ["--seconds", "0.3", "--reps", "3", "--max-queries", "8"],
}


def part_command(part: str, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", f"bench.{part}"]
    if part == "search":
        cmd += ["--suite"] + (["--with-1m"] if args.with_1m else [])
    if part == "startup" and args.cold:
        cmd += ["--cold"]
    if args.quick:
        cmd += QUICK_ARGS.get(part, [])
    return cmd


def run_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    log(f"== {part} ==")
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(part_command(part, args), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        return {"error": f"exit code {done.returncode} (see stderr above)", "seconds": seconds}
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"error": "no JSON on stdout", "stdout_tail": done.stdout[-2000:], "seconds": seconds}
    result = report.get("search" if part == "search" else part, report)
    if isinstance(result, dict):
        result["part_seconds"] = seconds
        result["load_average_during"] = [report.get("machine", {}).get("load_average"),
                                         report.get("machine", {}).get("load_average_at_end")]
    log(f"== {part}: {seconds}s ==")
    return result


def collect_targets(node: Any, path: str = "") -> dict[str, Any]:
    """Every ``{"value", "target", "met"}`` in the report, by its dotted path."""
    found: dict[str, Any] = {}
    if isinstance(node, dict):
        if {"value", "target", "met"} <= set(node):
            return {path: node}
        for key, value in node.items():
            found.update(collect_targets(value, f"{path}.{key}" if path else key))
    return found


def add_search_targets(search: dict[str, Any]) -> None:
    """Recall, speed-up and build-time targets of the 100k case."""
    from bench.common import target

    cases = search.get("cases", {}) if isinstance(search, dict) else {}
    case = cases.get("100000")
    if not isinstance(case, dict):
        return
    project = next((v for k, v in cases.items() if k.startswith("100000x") and isinstance(v, dict)), None)
    search["targets_100k"] = {
        "recall_at_10": target(case.get("recall_at_10"), 0.98, "min"),
        "exact_over_hnsw_speedup": target(case.get("exact_over_hnsw"), 50, "min", "x"),
        "index_build_s_512d_two_graphs": target(case.get("build_s"), 60, "max", " s"),
        "one_graph_build_s_512d": target(max(case.get("build_s_per_graph") or [None]), 60, "max", " s")
        if case.get("build_s_per_graph") else None,
        f"index_build_s_{project['dim']}d_two_graphs": target(project.get("build_s"), 60, "max", " s") if project else None,
    }
    million = cases.get("1000000")
    if isinstance(million, dict):  # issue 26: recall that holds at a million, with the build's own ef
        search["targets_1m"] = {"recall_at_10": target(million.get("recall_at_10"), 0.98, "min"),
                                "hnsw_p50_ms_one_thread": target(million.get("hnsw_median_ms"), 2.0, "max", " ms")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    p.add_argument("--cold", action="store_true", help="also time a cold start of the full demo (many minutes)")
    p.add_argument("--with-1m", action="store_true", help="also the 1M x 512 search case (2 GB, long build)")
    p.add_argument("--quick", action="store_true", help="smoke sizes: checks every part runs (figures not comparable)")
    args = p.parse_args(argv)
    setup_environment()
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for part in args.only or PARTS:
        report[part] = run_part(part, args)
    if "search" in report:
        add_search_targets(report["search"])
    report["machine"]["load_average_at_end"] = machine()["load_average"]
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["summary"] = {k: v for k, v in collect_targets({p: report[p] for p in PARTS if p in report}).items() if v}
    emit(report, save_as="quick.json" if args.quick else "latest.json")  # smoke figures never replace a real run
    return report


if __name__ == "__main__":
    main()
