"""Composed queries on the test split: does "image with/without a phrase" find the phrase's finding
on the asked side while keeping the image's other findings? Prints ONE JSON document.

    python -m bench.composed                     # default offline run (.cache/runs/offline-demo)
    python -m bench.composed --run RUN --n 60

Queries are test-split studies (patient-level split of the run, never trained on); the gallery is
every demo study (what the app's index holds) minus the query itself. For each weight ``w``:

* **with** ``"left pleural effusion"`` on test studies without an effusion (normal ones, and
  abnormal ones for the "keeps the rest" question):
  - ``finding_on_side``: share of the top 10 that have a pleural effusion covering the left side;
  - ``other_overlap``: mean graded relevance (``data.findings.relevance``) between the query's own
    findings and each hit's findings *other than* the added one (1 = same other findings;
    a normal query scores 1 for a hit whose only finding is the added one);
  - ``right_only_effusion_share``: hits whose effusion is on the right only (the wrong side);
* **without** ``"pleural effusion"`` on test studies that have one: share of the top 10 that still
  have an effusion, and the same other-findings overlap.

``w = 0`` is the image alone; "phrase alone" (the text query without the image) is given too.
``results`` use the app's arithmetic (the phrase's direction from a neutral phrase, see
``webapp.composed``); ``plain_sum_results`` the plain ``normalise(z_img ± w z_text)`` for comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import ROOT, emit, log, machine, setup_environment

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
K = 10
EFFUSION = "pleural effusion"


def _profiles(studies):
    from data.findings import findings_from_tags, profile

    return [profile(findings_from_tags(s.tags)) for s in studies]


def _has_left_effusion(p) -> bool:
    return EFFUSION in p and "left" in p[EFFUSION]


def _other_overlap(query_p, hit_p) -> float:
    from data.findings import relevance

    q = {n: s for n, s in query_p.items() if n != EFFUSION}
    h = {n: s for n, s in hit_p.items() if n != EFFUSION}
    return relevance(q, h)


def evaluate(Z: np.ndarray, profiles: list, queries: list[int], make_query: Callable[[int], np.ndarray],
             hit_ok: Callable[[Any], bool]) -> dict[str, float]:
    """Top-10 (query excluded) of each query vector; share of hits passing ``hit_ok`` and other-findings overlap."""
    ok, overlap, wrong = [], [], []
    for qi in queries:
        scores = Z @ make_query(qi)
        scores[qi] = -np.inf
        top = np.argpartition(-scores, K)[:K]
        ok += [hit_ok(profiles[j]) for j in top]
        overlap += [_other_overlap(profiles[qi], profiles[j]) for j in top]
        wrong += [profiles[j].get(EFFUSION) == frozenset({"right"}) for j in top]
    return {"finding_share": round(float(np.mean(ok)), 3), "other_overlap": round(float(np.mean(overlap)), 3),
            "right_only_effusion_share": round(float(np.mean(wrong)), 3)}


def run(run_dir: Path | None = None, n: int = 60, seed: int = 0, data: Path | None = None) -> dict[str, Any]:
    from data.demo import load_demo_dataset
    from model.features import cached_frozen_features
    from model.retrieval_model import RetrievalModel
    from pipeline.demo import default_run_dir
    from webapp.composed import NEUTRAL_PHRASE, compose

    run_dir = Path(run_dir or default_run_dir())
    model = RetrievalModel.from_run(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    limit = int(config["data"][4:]) if str(config.get("data", ""))[4:].isdigit() else None
    if data is not None:
        from data.dataset import load_dataset

        studies = load_dataset(data)
    else:
        studies = load_demo_dataset(limit=limit)
    split = json.loads((run_dir / "split.json").read_text())
    started = time.perf_counter()
    image_feats, _ = cached_frozen_features(model.backbone, studies, progress=False)  # the cached features
    Z = model.project_image_features(image_feats)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    log(f"composed: gallery of {len(Z)} in {time.perf_counter() - started:.1f}s")
    profiles = _profiles(studies)
    row = {s.study_id: i for i, s in enumerate(studies)}
    test = [row[s] for s in split["test"] if s in row]
    rng = np.random.default_rng(seed)

    def pick(rows: list[int]) -> list[int]:
        return sorted(rng.choice(rows, size=min(n, len(rows)), replace=False).tolist()) if rows else []

    groups = {
        "normal + with 'left pleural effusion'": (pick([i for i in test if not profiles[i]]), "left pleural effusion", "with"),
        "abnormal (no effusion) + with 'left pleural effusion'":
            (pick([i for i in test if profiles[i] and EFFUSION not in profiles[i]]), "left pleural effusion", "with"),
        "effusion + without 'pleural effusion'": (pick([i for i in test if EFFUSION in profiles[i]]), "pleural effusion", "without"),
    }
    out: dict[str, Any] = {"run": str(run_dir), "gallery": len(Z), "k": K, "weights": list(WEIGHTS), "groups": {}}
    for name, (queries, phrase, mode) in groups.items():
        if not queries:
            out["groups"][name] = {"n_queries": 0}
            continue
        z_txt = model.embed_texts([phrase])[0]
        z_neutral = model.embed_texts([NEUTRAL_PHRASE])[0]
        hit_ok = _has_left_effusion if mode == "with" else (lambda p: EFFUSION in p)
        measure = "share of top-10 with a left-side pleural effusion" if mode == "with" else \
            "share of top-10 that still have a pleural effusion"
        rows, plain = {}, {}
        for w in WEIGHTS:
            rows[f"w={w:g}"] = evaluate(Z, profiles, queries, lambda qi: compose(Z[qi], z_txt, w, mode, z_neutral), hit_ok)
            plain[f"w={w:g}"] = evaluate(Z, profiles, queries, lambda qi: compose(Z[qi], z_txt, w, mode), hit_ok)
        rows["phrase alone"] = evaluate(Z, profiles, queries, lambda qi: z_txt / np.linalg.norm(z_txt), hit_ok)
        out["groups"][name] = {"n_queries": len(queries), "finding_share_means": measure, "results": rows,
                               "plain_sum_results": plain}
        log(f"composed: {name}: image alone {rows['w=0']}, w=1 {rows['w=1']}, phrase alone {rows['phrase alone']}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="trained run folder (default: the offline demo's)")
    p.add_argument("--data", type=Path, help="dataset folder the run was trained on (default: the offline demo)")
    p.add_argument("--n", type=int, default=60, help="test-split queries per group (>= 50)")
    args = p.parse_args(argv)
    setup_environment()
    report = {"machine": machine(), "composed": run(args.run, args.n, data=args.data)}
    emit(report)
    return report


if __name__ == "__main__":
    main()
