"""Does the app answer the same on Milvus Lite as on the hnswlib folder, at the full demo's size?

    python -m bench.parity [--queries 200] [--out bench/results/engine_parity.json]

The full offline demo (3,955 studies: above ``EXACT_THRESHOLD``, so Milvus Lite serves it with
IVF_FLAT and hnswlib with its graph) is indexed into ``milvus://`` through the one builder
(``pipeline.steps.index_run``, features from the shared cache), then the same engine
(``index.engine.SearchEngine``) runs text and image-vector queries, unfiltered and filtered, on
both stores. Reported: recall@10 of each store against exact search over the same vectors, and of
Milvus against the hnswlib folder (chance: 10 / candidates; ceiling: 1.0), and the share of queries
with the very same top-10 ids. Nothing is chosen on these figures; they check parity (>= 0.98).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import log, scratch_dir

FILTERS = {"none": None, "abnormal": {"label": "abnormal"}, "pleural effusion": {"finding": "pleural effusion"},
           "left pleural effusion": {"finding": "pleural effusion", "side": "left"}}
PHRASES = ("large right pleural effusion", "small left pleural effusion", "cardiomegaly", "right upper lobe opacity",
           "left lower lobe atelectasis", "right pneumothorax", "calcified granuloma",
           "no acute cardiopulmonary abnormality")


def _recall(found: list[str], truth: list[str]) -> float:
    return len(set(found) & set(truth)) / max(len(truth), 1)


def measure(n_queries: int) -> dict:
    from index.engine import SearchEngine
    from model.retrieval_model import RetrievalModel
    from pipeline.demo import ensure_demo
    from pipeline.steps import index_run, run_collection

    run_dir, folder = ensure_demo()
    model = RetrievalModel.from_run(run_dir)
    studies, data_root = run_collection(run_dir)
    spec = f"milvus://{scratch_dir('parity-')}/demo.db#demo"
    started = time.perf_counter()
    index_run(run_dir, spec, studies, data_root=data_root, encoder=model, progress=False)
    build_s = time.perf_counter() - started
    hnsw, milvus = SearchEngine.load(folder, model), SearchEngine.load(spec, model)
    rng = np.random.default_rng(0)
    rows = rng.choice(hnsw.count, size=min(n_queries, hnsw.count), replace=False)
    image_queries = hnsw.vectors("images")[rows] + 0.02 * rng.standard_normal((len(rows), hnsw.manifest.embed_dim))
    text_queries = model.embed_texts(list(PHRASES))
    out: dict = {"n_studies": hnsw.count, "milvus_index": milvus.vector_store.search_params,
                 "milvus_build_s_with_artifacts": round(build_s, 1), "by_filter": {}}
    for name, filters in FILTERS.items():
        rec = {"milvus_vs_hnswlib": [], "milvus_vs_exact": [], "hnswlib_vs_exact": [], "same_top10": []}
        for q in [*image_queries, *text_queries]:
            a, b = (e.search_by_image_vector(q, 10, filters).study_ids for e in (milvus, hnsw))
            exact = hnsw.search_by_image_vector(q, 10, filters, exact=True).study_ids
            rec["milvus_vs_hnswlib"].append(_recall(a, b))
            rec["milvus_vs_exact"].append(_recall(a, exact))
            rec["hnswlib_vs_exact"].append(_recall(b, exact))
            rec["same_top10"].append(float(a == b))
        candidates = hnsw.search_by_image_vector(text_queries[0], 10, filters).n_candidates
        out["by_filter"][name] = {**{k: round(float(np.mean(v)), 4) for k, v in rec.items()},
                                  "queries": len(rec["same_top10"]), "candidates": candidates,
                                  "chance_recall": round(10 / max(candidates, 10), 4), "ceiling": 1.0}
        log(f"{name}: {out['by_filter'][name]}")
    milvus.close()
    hnsw.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=200, help="image-vector queries (plus 8 phrases)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    report = measure(args.queries)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
