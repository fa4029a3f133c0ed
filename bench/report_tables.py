"""The table specs ``python -m bench.report`` renders: one :class:`bench.report.Table` per generated block.

To add one, write a render function (the loaded JSON documents in, Markdown out) and append its
``Table`` to ``TABLES``; see ``bench/report.py``'s docstring for the four steps.
"""
from __future__ import annotations

from typing import Any

from bench.report_core import Table, cell, dig, rows_table

Docs = list[dict[str, Any]]


def _mean_sd(ms: dict[str, float] | None) -> str:
    return "—" if not ms else f"{ms['mean']:.3f} ± {ms['sd']:.3f}"


# --- evaluation (accuracy: independent of the machine's load) -------------------------------------

def ablation_table(docs: Docs) -> str:
    from bench.ablation import hybrid_markdown, phrase_markdown, to_markdown

    agg = docs[0]
    hybrid = hybrid_markdown(agg)
    return (to_markdown(agg) + f"\n\n{len(agg['runs'])} runs ({len(agg['variants'])} variants × "
            f"{len(next(iter(agg['variants'].values()))['seeds'])} seeds), test split, mean ± sd over seeds; "
            f"default chosen on validation: `{agg['winner_on_validation']}`.\n\n"
            f"Typed phrases and sides (default rule, stated before looking: {agg['rule']}):\n\n{phrase_markdown(agg)}"
            + (f"\n\nHybrid search with each variant's head as the dense channel (test):\n\n{hybrid}" if hybrid else ""))


def side_swap_table(docs: Docs) -> str:
    agg = docs[0]
    names = {"clip+supcon[findings]+bce": "default (`--w-side 0`)"}
    rows = []
    for name, row in agg["variants"].items():
        weight = name.rsplit(" x", 1)[1] if " x" in name else "1"
        label = names.get(name) or (f"`--w-side {weight}`" if name.endswith(("+side", f"+side x{weight}")) else name)
        rows.append([label, _mean_sd(row["val_nDCG@10"]), _mean_sd(dig(row, "val_phrase.finding_P@10")),
                     _mean_sd(dig(row, "val_phrase.side_swap_rate")), _mean_sd(dig(row, "test.t2i.nDCG@10")),
                     _mean_sd(dig(row, "test.i2t.nDCG@10")), _mean_sd(dig(row, "test_phrase.finding_P@10")),
                     _mean_sd(dig(row, "test_phrase.side_swap_rate"))])
    return rows_table(["variant", "val nDCG@10", "val phrase finding_P@10", "val phrase side-swap", "test t2i nDCG@10",
                       "test i2t nDCG@10", "test phrase finding_P@10", "test phrase side-swap"], rows)


def eval_table(docs: Docs) -> str:
    from evaluation.tables import format_phrase_table, format_table

    report = docs[0]
    head = (f"Test split: {report['n_test']} studies ({report.get('split_level', 'study')}-level, split "
            f"`{report.get('split_hash')}`), data `{report.get('data')}`.")
    return "\n\n".join(filter(None, [head, format_table(report), format_phrase_table(report)]))


def calibration_table(docs: Docs) -> str:
    c = docs[0].get("calibration") or {}
    return rows_table(["abnormal estimate (test split)", "ECE", "NLL"], [
        ["raw head", cell(c.get("ece_before")), cell(c.get("nll_before"))],
        ["temperature only", cell(c.get("ece_temperature_only")), "—"],
        [f"Platt scaling (fitted on {c.get('fitted_on', 'val')})", cell(c.get("ece_after")), cell(c.get("nll_after"))],
    ])


# --- performance (timings: marked when taken under load) ------------------------------------------

def bench_targets_table(docs: Docs) -> str:
    doc = docs[0]
    rows = []
    for path, t in sorted((doc.get("summary") or {}).items()):
        met = {True: "met", False: "**missed**", None: "—"}[t.get("met")]
        rows.append([f"`{path}`", cell(t.get("value")), t.get("target", "—"), met])
    parts = ", ".join(f"{p} {cell(dig(doc, f'{p}.part_seconds'), 0)} s" for p in
                      ("embed", "search", "query", "train_head", "startup", "familiarity") if dig(doc, f"{p}.part_seconds"))
    return (rows_table(["figure (bench key)", "measured", "target", ""], rows)
            + f"\n\nOne `python -m bench` run, {cell(doc.get('total_seconds'), 0)} s in all ({parts}).")


def serving_table(docs: Docs) -> str:
    """``python -m bench.serving``: each endpoint at 1, 4 and 16 raw-HTTP clients beside its CPU floor."""
    doc = docs[0]
    rows = []
    for name, e in doc["endpoints"].items():
        floor = e.get("floor") or {}
        for clients, level in e["clients"].items():
            rows.append([f"`{name}`", clients, cell(level.get("qps"), 1), cell(level.get("p50_ms"), 1),
                         cell(level.get("p95_ms"), 1), cell(level.get("errors")), cell(level.get("server_cpu_ms_per_query"), 1),
                         cell(floor.get("floor_qps"), 1), cell(level.get("floor_ratio"), 3)])
    targets = [f"`{k}` {cell(t.get('value'))} (target {t.get('target')}: {'met' if t.get('met') else '**missed**'})"
               for k, t in (doc.get("targets") or {}).items()]
    text = (rows_table(["endpoint", "clients", "queries/s", "p50 ms", "p95 ms", "errors", "server CPU ms/query",
                        "floor q/s", "measured / floor"], rows)
            + "\n\nFloor = cores ÷ (in-process CPU ms of the handler + the server's CPU ms per no-op call). "
            + "; ".join(targets) + ".")
    sweep = doc.get("concurrency_sweep")
    if sweep:
        srows = [[cell(r.get("concurrency")), cell(r.get("query_threads")), str(r.get("blas_threads")),
                  cell(r.get("search_workers", 0)), cell(r["/search_text"].get("qps"), 1),
                  cell(r["/search_text"].get("floor_ratio"), 3), cell(r["/search_image"].get("qps"), 1),
                  cell(r["/search_image"].get("floor_ratio"), 3)] for r in sweep["rows"]]
        taken = sweep.get("taken") or {}
        text += ("\n\nSettings compared at 16 clients (`--sweep`"
                 + (f", {taken['started']}, load average {taken['load_average'][0]}" if taken.get("started") else "")
                 + f"; rule: {sweep.get('rule')}; best: {sweep.get('best')}):\n\n"
                 + rows_table(["queue concurrency", "threads per query", "BLAS threads", "search workers", "text q/s",
                               "text / floor", "image q/s", "image / floor"], srows))
    return text


def search_1m_table(docs: Docs) -> str:
    """``python -m bench.search --only-1m``: one hnsw graph over 1M x 512 with the ef its build chose."""
    c = dig(docs[0], "search.cases.1000000") or {}
    tuning = c.get("ef_tuning") or {}
    reused = c.get("reused_index")
    rows = [
        ["gallery", f"{cell(c.get('n'))} × {c.get('dim')} ({c.get('clusters')} gaussian clusters), "
                    f"M {c.get('M')}, ef_construction {c.get('ef_construction')}"],
        ["ef chosen by the build (index.ef_tuning)", f"{c.get('ef')} (held-out recall@10 "
                                                     f"{cell(dig(tuning, 'recall_at_10.held_out'), 4)}, target ≥ 0.98"
                                                     + ("; **not reached** on the ef grid)" if tuning.get("reached") is False
                                                        else ")")],
        ["recall@10, fresh queries, at that ef", f"{cell(c.get('recall_at_10'), 4)} (target ≥ 0.98)"],
        ["recall@10 at the former fixed ef 64", cell(c.get("recall_at_10_at_fixed_ef_64"), 4)],
        ["hnsw p50 / p95, one query, one thread", f"{cell(c.get('hnsw_median_ms'), 3)} / {cell(c.get('hnsw_p95_ms'), 3)} ms"
                                                  " (target p50 ≤ 2 ms)"],
        ["exact search p50, one thread", f"{cell(c.get('exact_median_ms'), 1)} ms ({cell(c.get('exact_over_hnsw'), 1)}× hnsw)"],
        ["build + ef tuning", f"{cell(c.get('build_s'), 0)} s on {c.get('build_threads')} threads"],
        ["peak resident memory (vectors + graph + build)", f"{cell(c.get('peak_rss_mb'), 0)} MB"],
        ["load average after the build / around the timed queries",
         f"{c.get('load_average_after_build')} / {c.get('load_average_before_queries')} → {c.get('load_average_after_queries')}"],
    ]
    if reused:
        rows.append(["queries timed on a saved graph (`--reuse`)", f"built {reused.get('built_at')}"])
    return rows_table(["1M × 512, one graph", "measured"], rows)


def space_table(docs: Docs) -> str:
    s = docs[0]["space"]
    installer = s.get("installer", "pip")
    install = cell(s.get("install_s"), 1, f" s ({installer})") if s.get("install_s") else "not timed in this run (a venv reused)"
    reused = "; ".join(f"{r.split(':')[0]} (`.cache/{r.rstrip('/').rsplit('/', 1)[-1]}`)" for r in s.get("reused") or [])
    reused = reused or "nothing (a real first start: phantoms, embedding, training, index)"
    return rows_table(["Space as pushed (`SPACE_ID=test python app.py`, no Makefile)", "measured"], [
        ["requirements.txt installed into a fresh venv", install],
        ["first page served (the progress page)", cell(s.get("first_page_s"), 1, " s")],
        ["search ready (`/search_text` in the page's config)", cell(s.get("search_ready_s"), 0, " s")],
        ["listening on", ", ".join(s.get("bound_to_when_ready") or s.get("bound_to") or []) or "—"],
        ["peak resident memory, app and its workers", cell(s.get("peak_rss_mb"), 0, " MB")],
        ["resident memory after the first query", cell(s.get("rss_after_query_mb"), 0, " MB")],
        ["`/search_text` \"small left pleural effusion\"", f"{dig(s, 'search_text.n_hits', '—')} hits"],
        ["reused from an earlier build", reused],
    ])


# --- the README's headline block --------------------------------------------------------------------

def headline(docs: Docs) -> str:
    agg = docs[0]
    default = agg["variants"][agg["winner_on_validation"]]
    paper = agg["variants"][agg["paper"]]
    ridge = agg["baselines"].get("offline (frozen) + ridge text->image", {})
    chance, ceiling = agg["chance"], agg["ceiling"]
    rows = []
    for direction in ("t2i", "i2t", "i2i"):
        rows.append([f"{direction} nDCG@10", _mean_sd(dig(default, f"test.{direction}.nDCG@10")),
                     _mean_sd(dig(paper, f"test.{direction}.nDCG@10")), cell(dig(ridge, f"{direction}.nDCG@10")),
                     cell(dig(chance, f"{direction}.nDCG@10")), cell(dig(ceiling, f"{direction}.nDCG@10"))])
    rows.append(["phrase finding_P@10", _mean_sd(dig(default, "test_phrase.finding_P@10")),
                 _mean_sd(dig(paper, "test_phrase.finding_P@10")),
                 cell(dig(agg, "baseline_phrase.offline (frozen) + ridge text->image.finding_P@10")), "—", "—"])
    return rows_table(["offline demo, test split", "default head", "paper's recipe", "frozen (ridge)", "chance",
                       "ceiling"], rows)


# Ratios and rates measured side by side: they move least with the host's load (absolute times: docs/performance.md).
HEADLINE_SPEED_KEYS = ("recall_at_10", "speedup", "overhead_ratio", "false_alarm_rate", "refused_share")


def headline_speed(docs: Docs) -> str:
    """The bench's load-robust targets for the README (a subset of docs/performance.md's table)."""
    summary = docs[0].get("summary") or {}
    picked = {k: v for k, v in summary.items() if any(word in k for word in HEADLINE_SPEED_KEYS)}
    return bench_targets_table([{**docs[0], "summary": picked}]).split("\n\nOne ")[0]


def text_search_table(docs: Docs) -> str:
    """Typed phrases over the demo index: dense (the head alone), hybrid and reports only, per split,
    beside chance and ceiling (``python -m bench.hybrid``)."""
    bench = docs[0]["phrase_benchmark"]
    rows = []
    for split in ("val", "test"):
        for name, row in bench[split].items():
            rows.append([split, name, cell(row.get("finding_P@10")), cell(row.get("side_swap_rate")),
                         cell(row.get("nDCG@10")), cell(row.get("negated_tag_rate")),
                         f"{cell(row.get('chance_finding_P@10'))} / {cell(row.get('ceiling_finding_P@10'))}",
                         cell(row.get("chance_side_swap_rate"))])
    return rows_table(["split", "text search", "finding_P@10", "side-swap", "nDCG@10", "negated in tags",
                       "finding_P@10 chance / ceiling", "side-swap chance"], rows)


# --- the test suite's wall time (issue 28) ------------------------------------------------------------

def suite_time_table(docs: Docs) -> str:
    rows = []
    for label, run in docs[0]["runs"].items():
        counts = ", ".join(f"{n} {kind}" for kind, n in run["counts"].items() if kind != "warnings")
        load = run.get("load_1min_during")
        slowest = "; ".join(f"`{t['test'].split('::')[-1]}` {t['seconds']:.0f} s" for t in run["slowest"][:3])
        rows.append([f"{label} (`{run['commit']}`)", counts, cell(run["pytest_wall_s"] / 60, 1, " min"),
                     f"{load[0]:.1f}–{load[1]:.1f}" if load else "—", slowest])
    return rows_table(["run", "tests", "pytest wall", "load (1 min) during", "three slowest"], rows)


TABLES: list[Table] = [
    Table("headline", ("bench/results/ablation.json",), headline, "python -m bench.ablation", page="README.md",
          timing=False),
    Table("headline-speed", ("bench/results/bench.json",), headline_speed, "python -m bench > bench/results/bench.json",
          page="README.md"),
    Table("text-search", ("bench/results/hybrid.json",), text_search_table, "python -m bench.hybrid --reps 3 --save "
          "bench/results/hybrid.json", page="README.md", timing=False),
    Table("ablation", ("bench/results/ablation.json",), ablation_table, "python -m bench.ablation",
          page="docs/evaluation.md", timing=False),
    Table("side-swap", ("bench/results/side_swap/ablation.json",), side_swap_table,
          "python -m bench.ablation --variants findings side side5 --out bench/results/side_swap",
          page="docs/evaluation.md", timing=False),
    Table("eval-default", ("bench/results/eval.json",), eval_table,
          "python -m pipeline && cp .cache/runs/offline-demo/eval.json bench/results/eval.json",
          page="docs/evaluation.md", timing=False),
    Table("calibration", ("bench/results/eval.json",), calibration_table,
          "python -m pipeline && cp .cache/runs/offline-demo/eval.json bench/results/eval.json",
          page="docs/trust.md", timing=False),
    Table("bench-targets", ("bench/results/bench.json",), bench_targets_table,
          "python -m bench > bench/results/bench.json"),
    Table("serving", ("bench/results/serving.json",), serving_table,
          "python -m bench.serving > bench/results/serving.json"),
    Table("search-1m", ("bench/results/search_1m.json",), search_1m_table,
          "python -m bench.search --only-1m --m-1m M --keep-index PATH > bench/results/search_1m.json"),
    Table("space", ("bench/results/space.json",), space_table,
          "python -m bench.space --reuse features --installer uv > bench/results/space.json", page="docs/serving.md"),
    Table("suite-time", ("bench/results/suite_time.json",), suite_time_table,
          "python -m bench.suite_time --label LABEL", page="docs/development.md"),
]
