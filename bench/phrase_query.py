"""One typed query over a built index, counted by side: "small left pleural effusion" in dense mode.

    python -m bench.phrase_query                      # the offline demo's run and index
    python -m bench.phrase_query --query "right pneumothorax" --finding pneumothorax --k 8

Prints JSON: how many of the top k have the finding on the left only, the right only, both
sides, an unstated side, or not at all (the study's tags, read only to count), and the run's
collection's counts of each for chance. Issue #23 asks of dense mode: >= 3 left-only, <= 1 right-only
in the top 8 for "small left pleural effusion".
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from data.findings import LEFT, RIGHT, profile


def side_class(findings: Iterable, finding: str) -> str:
    """left-only | right-only | bilateral | unsided | absent: where a study has ``finding``."""
    sides = profile(findings).get(finding)
    if sides is None:
        return "absent"
    if sides == frozenset({LEFT}):
        return "left-only"
    if sides == frozenset({RIGHT}):
        return "right-only"
    return "bilateral" if sides else "unsided"


def count_sides(run_dir: Path, index_dir: Path, query: str, finding: str, k: int = 8) -> dict[str, Any]:
    """The top ``k`` of a dense text query over the index, counted by :func:`side_class`."""
    from index.engine import SearchEngine
    from model.retrieval_model import RetrievalModel
    from pipeline.steps import run_collection

    model = RetrievalModel.from_run(run_dir)
    engine = SearchEngine.load(index_dir, encoder=model)
    hits = engine.search_by_text(query, k=k).hits
    top = Counter(side_class(h.study.structured_findings, finding) for h in hits)
    everywhere = Counter(side_class(s.structured_findings, finding) for s in run_collection(run_dir)[0])
    return {"query": query, "finding": finding, "k": k, "top": dict(top), "index": dict(everywhere),
            "ranked": [side_class(h.study.structured_findings, finding) for h in hits]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pipeline.demo import default_index_dir, default_run_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=default_run_dir())
    p.add_argument("--index", type=Path, default=default_index_dir())
    p.add_argument("--query", default="small left pleural effusion")
    p.add_argument("--finding", default="pleural effusion")
    p.add_argument("--k", type=int, default=8)
    args = p.parse_args(argv)
    out = count_sides(args.run, args.index, args.query, args.finding, args.k)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
