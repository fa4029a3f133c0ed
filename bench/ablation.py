"""The ablation grid on cached frozen features: loss presets x SupCon labels (x finding probe, x side-swap term) x 3 seeds.

    python -m bench.ablation                    # full grid, 2 worker processes -> bench/results/ablation.{json,md}
    python -m bench.ablation --seeds 0 --variants paper findings   # a quick subset
    python -m bench.ablation --variants findings side side5 --out bench/results/side_swap   # the side-swap term
    python -m bench.ablation --variants paper findings phrases+side phrases+side5 phrases3+side5   # phrase views (#23)

Every run is ``model.training.train_head`` exactly as ``python train.py`` runs it, on the offline backbone's
cached features of the full demo and the default (seed-0) patient split, so all runs share the
same validation and test queries; the seed changes the head's init, dropout and batch order.
Test rows come from ``pipeline.run_report.evaluate_models`` (as eval.json). Per variant: mean +- sd
over seeds, and a paired bootstrap 95% CI of its difference to the paper's recipe
(clip+supcon+bce, binary SupCon) on the same test queries (per-query values averaged over seeds
first). The default of train.py is the variant with the best *validation* nDCG@10 (mean of i2t
and t2i over seeds) among those that train the abnormality classifier (BCE: the app shows its
probability) and whose *validation* phrase side-swap is <= 0.10 (else the lowest validation
side-swap; issue #23, :func:`choose_default`); test figures are never used to choose. Also
per variant: the second wording set (test only), i2t/i2i side-swap, and a paired bootstrap CI of
the phrase finding_P@10 and t2i nDCG@10 gains over the previous default (clip+supcon[findings]+bce).
Prints the wall time of the grid.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import log, machine, setup_environment
from data.atomic_io import atomic_write_json

# name -> (loss preset, supcon labels, finding-probe weight, side-swap weight, phrase-view weight, knowledge scale
#          [, flip-twin weight, flip pairs])  (the last two default to 0 / False: see flip_spec)
VARIANTS: dict[str, tuple] = {
    "clip": ("clip", "binary", 0.0, 0.0, 0.0, 0.0),
    "clip+supcon": ("clip+supcon", "binary", 0.0, 0.0, 0.0, 0.0),
    "clip+supcon[findings]": ("clip+supcon", "findings", 0.0, 0.0, 0.0, 0.0),
    "paper: clip+supcon+bce": ("clip+supcon+bce", "binary", 0.0, 0.0, 0.0, 0.0),
    "clip+supcon[findings]+bce": ("clip+supcon+bce", "findings", 0.0, 0.0, 0.0, 0.0),
    "clip+supcon[findings]+bce+probe": ("clip+supcon+bce", "findings", 1.0, 0.0, 0.0, 0.0),
    "clip+supcon[findings]+bce+side": ("clip+supcon+bce", "findings", 0.0, 1.0, 0.0, 0.0),
    "clip+supcon[findings]+bce+side x5": ("clip+supcon+bce", "findings", 0.0, 5.0, 0.0, 0.0),
    "clip+supcon[findings]+bce+phrases": ("clip+supcon+bce", "findings", 0.0, 0.0, 1.0, 0.0),
    "clip+supcon[findings]+bce+phrases+side": ("clip+supcon+bce", "findings", 0.0, 1.0, 1.0, 0.0),
    "clip+supcon[findings]+bce+phrases+side x5": ("clip+supcon+bce", "findings", 0.0, 5.0, 1.0, 0.0),
    "clip+supcon[findings]+bce+phrases x3+side x5": ("clip+supcon+bce", "findings", 0.0, 5.0, 3.0, 0.0),
    "clip+supcon[findings]+bce+phrases x5+side x5": ("clip+supcon+bce", "findings", 0.0, 5.0, 5.0, 0.0),
    # knowledge-enhanced text input (model.knowledge, --knowledge 2)
    "clip+supcon[findings]+bce+phrases+side x5+knowledge": ("clip+supcon+bce", "findings", 0.0, 5.0, 1.0, 2.0),
    "clip+supcon[findings]+bce+phrases x5+side x5+knowledge": ("clip+supcon+bce", "findings", 0.0, 5.0, 5.0, 2.0),
    # stronger side term / knowledge scale with the knowledge input (issue #23, session 4)
    "clip+supcon[findings]+bce+phrases x5+side x10+knowledge": ("clip+supcon+bce", "findings", 0.0, 10.0, 5.0, 2.0),
    "clip+supcon[findings]+bce+phrases x5+side x20+knowledge": ("clip+supcon+bce", "findings", 0.0, 20.0, 5.0, 2.0),
    "clip+supcon[findings]+bce+phrases x5+side x10+knowledge x3": ("clip+supcon+bce", "findings", 0.0, 10.0, 5.0, 3.0),
    # image-side flip twins (model.flip_twins, --w-flip W [--flip-pairs]; issue #23, session 4, helper F)
    "clip+supcon[findings]+bce+phrases x5+side x5+knowledge+flip": ("clip+supcon+bce", "findings", 0.0, 5.0, 5.0, 2.0, 1.0, False),
    "clip+supcon[findings]+bce+phrases x5+side x5+knowledge+flip x5": ("clip+supcon+bce", "findings", 0.0, 5.0, 5.0, 2.0, 5.0, False),
    "clip+supcon[findings]+bce+phrases x5+side x5+knowledge+flip pairs": ("clip+supcon+bce", "findings", 0.0, 5.0, 5.0, 2.0, 1.0, True),
    "clip+supcon[findings]+bce+phrases x5+side x5+knowledge+flip pairs x5": ("clip+supcon+bce", "findings", 0.0, 5.0, 5.0, 2.0, 5.0, True),
}
PAPER = "paper: clip+supcon+bce"
PREVIOUS_DEFAULT = "clip+supcon[findings]+bce"  # train.py's default before phrase views (issue #23)
SIDE_SWAP_LIMIT = 0.10  # the rule, stated before looking: validation phrase side-swap <= this
SHORT = {"paper": PAPER, "findings": PREVIOUS_DEFAULT, "probe": "clip+supcon[findings]+bce+probe",
         "side": "clip+supcon[findings]+bce+side", "side5": "clip+supcon[findings]+bce+side x5",
         "phrases": "clip+supcon[findings]+bce+phrases", "phrases+side": "clip+supcon[findings]+bce+phrases+side",
         "phrases+side5": "clip+supcon[findings]+bce+phrases+side x5",
         "phrases3+side5": "clip+supcon[findings]+bce+phrases x3+side x5",
         "phrases5+side5": "clip+supcon[findings]+bce+phrases x5+side x5",
         "phrases+side5+k": "clip+supcon[findings]+bce+phrases+side x5+knowledge",
         "phrases5+side5+k": "clip+supcon[findings]+bce+phrases x5+side x5+knowledge",
         "phrases5+side10+k": "clip+supcon[findings]+bce+phrases x5+side x10+knowledge",
         "phrases5+side20+k": "clip+supcon[findings]+bce+phrases x5+side x20+knowledge",
         "phrases5+side10+k3": "clip+supcon[findings]+bce+phrases x5+side x10+knowledge x3",
         # image-side flip twins (helper F)
         "phrases5+side5+k+flip": "clip+supcon[findings]+bce+phrases x5+side x5+knowledge+flip",
         "phrases5+side5+k+flip5": "clip+supcon[findings]+bce+phrases x5+side x5+knowledge+flip x5",
         "phrases5+side5+k+flippairs": "clip+supcon[findings]+bce+phrases x5+side x5+knowledge+flip pairs",
         "phrases5+side5+k+flippairs5": "clip+supcon[findings]+bce+phrases x5+side x5+knowledge+flip pairs x5"}
METRICS = ("nDCG@10", "finding_P@10", "R@10", "P@10", "mAP")
PHRASE_METRICS = ("nDCG@10", "finding_P@10", "side_swap_rate")
RESULTS = Path(__file__).resolve().parent / "results"


def flip_spec(variant: str) -> tuple[float, bool]:
    """(flip-twin weight, flip pairs) of a variant: 0 / False for the six-field entries made before them."""
    spec = VARIANTS[variant]
    return (float(spec[6]), bool(spec[7])) if len(spec) > 6 else (0.0, False)

_DATA: dict[str, Any] = {}


def load_data(variants: list[str] | None = None) -> dict[str, Any]:
    """Studies, cached features, the default split's rows, finding codes and phrase features (and the
    mirrored films' features when one of ``variants``, default all, has the flip-twin term)."""
    from bench.train_head import cached_demo_features, offline_backbone_identity
    from data.split import patient_split
    from model.factory import create_backbone
    from model.findings_training import study_codes
    from evaluation.phrase_benchmark import phrase_texts
    from evaluation.phrase_other_wording import OTHER_PHRASES
    from model.phrase_views import PhraseViews, phrase_view_features
    from model.side_swap import swapped_text_features
    from model.flip_twins import flipped_image_features

    found = cached_demo_features(offline_backbone_identity())
    if found is None:
        raise SystemExit("the full demo's features are not cached: run `python train.py` (or `python app.py`) once")
    studies, image, text = found
    split = patient_split(studies, seed=0)  # train.py's default split
    index_of = {s.study_id: i for i, s in enumerate(studies)}
    rows = {k: np.array([index_of[i] for i in split[k]], dtype=np.int64) for k in split}
    backbone = create_backbone("offline")
    phrase = backbone.encode_texts(phrase_texts()).numpy().astype(np.float32)
    swapped, swap_mask = swapped_text_features(backbone, studies)  # cached beside the features
    views = PhraseViews.build(studies, rows["train"])
    phrase_view_features(backbone, views, studies)  # cached beside the features
    other = backbone.encode_texts([p.text for p in OTHER_PHRASES]).numpy().astype(np.float32)
    from model.side_swap import swap_sides

    flipped = flipped_image_features(backbone, studies) if any(flip_spec(v)[0] for v in variants or VARIANTS) else None

    swapped_texts = [swap_sides(s.report_text) if m else "" for s, m in zip(studies, swap_mask)]
    return {"flipped": flipped, "swapped": swapped, "swap_mask": swap_mask, "swapped_texts": swapped_texts, "views": views, "other_phrase": other, "studies": studies, "image": image, "text": text, "rows": rows, "codes": study_codes(studies)[0],
            "labels": np.array([s.label for s in studies], dtype=np.int64), "phrase": phrase,
            "findings": [s.structured_findings for s in studies]}


def run_one(variant: str, seed: int, epochs: int | None = None) -> dict[str, Any]:
    """One training run + its test evaluation and its validation scores (for choosing)."""
    import torch

    from pipeline.run_report import evaluate_models, project
    from evaluation.phrase_benchmark import benchmark, phrase_texts
    from model.knowledge import text_inputs, with_knowledge
    from model.training import train_head
    from pipeline.options import parse_training_args

    d = _DATA
    loss, supcon_labels, w_findings, w_side, w_phrase, knowledge = VARIANTS[variant][:6]
    w_flip, flip_pairs = flip_spec(variant)
    argv = ["--quiet", "--loss", loss, "--supcon-labels", supcon_labels, "--w-findings", str(w_findings),
            "--w-side", str(w_side), "--w-phrase", str(w_phrase), "--knowledge", str(knowledge),
            "--w-flip", str(w_flip), "--seed", str(seed)] + (["--epochs", str(epochs)] if epochs else [])
    argv += ["--flip-pairs"] if flip_pairs else []
    args = parse_training_args(argv)
    torch.manual_seed(seed)
    np.random.seed(seed)
    Xi, Xt = torch.from_numpy(d["image"]), torch.from_numpy(d["text"])
    y = torch.from_numpy(d["labels"]).float()
    reports = [s.report_text for s in d["studies"]]
    views = dataclasses.replace(d["views"], features=with_knowledge(d["views"].features, d["views"].texts, knowledge))
    t0 = time.time()
    trained = train_head(args, d["image"].shape[1], d["text"].shape[1], Xi,
                         torch.from_numpy(with_knowledge(d["text"], reports, knowledge)), y, d["rows"], d["labels"],
                         d["codes"], swapped=(torch.from_numpy(with_knowledge(d["swapped"], d["swapped_texts"], knowledge)),
                                              d["swap_mask"]) if w_side or flip_pairs else None,
                         views=views if w_phrase else None,
                         flipped=(torch.from_numpy(d["flipped"][0]), d["flipped"][1]) if w_flip else None)
    seconds = time.time() - t0
    backbone = type("B", (), {"name": "offline", "shared_space": False})()
    report = evaluate_models(backbone, trained.head, Xi, Xt, d["labels"], d["rows"], d["codes"], d["findings"], 0,
                             phrase_feats=d["phrase"], keep_per_query=True, other_phrase_feats=d["other_phrase"],
                             report_texts=reports)
    tuned = "offline + head (fine-tuned)"
    val = d["rows"]["val"]
    val_phrase = benchmark(project(trained.head, torch.from_numpy(text_inputs(trained.head, d["phrase"], phrase_texts())),
                                   "text"),
                           project(trained.head, Xi[val], "image"), [d["findings"][i] for i in val])
    hybrid = _hybrid(trained.head, project(trained.head, Xi[d["rows"]["test"]], "image"), d)
    per_query = report.pop("_per_query")
    per_phrase = report["phrase_benchmark"][tuned].pop("_per_phrase")
    return {
        "variant": variant, "seed": seed, "seconds": round(seconds, 1), "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history), "val_nDCG@10": max(h["val_score"] for h in trained.history),
        "val_phrase": val_phrase, "val_side": _val_side(trained.head, Xi, d),
        "test": report["models"][tuned], "test_phrase": report["phrase_benchmark"][tuned],
        "test_phrase_other": report["phrase_benchmark_other_wording"][tuned], **hybrid,
        "per_phrase": {m: v.tolist() for m, v in per_phrase.items()},
        "per_query": {dr: {m: per_query[tuned][dr][m].tolist() for m in ("nDCG@10", "finding_P@10")}
                      for dr in ("i2t", "t2i", "i2i")},
        "baselines": {k: v for k, v in report["models"].items() if k != tuned},
        "baseline_phrase": {k: v for k, v in report["phrase_benchmark"].items() if k != tuned},
        "baseline_phrase_other": {k: v for k, v in report["phrase_benchmark_other_wording"].items() if k != tuned},
        "chance": report["chance"], "ceiling": report["ceiling"], "comparisons": report["comparisons"],
    }


def _hybrid(head, test_image_emb: np.ndarray, d: dict[str, Any]) -> dict[str, Any]:
    """The hybrid search's phrase rows (index.hybrid_benchmark) with this head's dense channel, both
    wording sets, over the test studies' own reports (as eval.json's ``phrase_benchmark["hybrid"]``)."""
    import torch

    from evaluation.phrase_benchmark import PHRASES
    from evaluation.phrase_other_wording import OTHER_PHRASES
    from index.hybrid_benchmark import hybrid_rows
    from model.knowledge import text_inputs
    from pipeline.run_report import project

    test = [d["studies"][i] for i in d["rows"]["test"]]
    out = {}
    for key, feats, phrases in (("test_hybrid", d["phrase"], PHRASES), ("test_hybrid_other", d["other_phrase"], OTHER_PHRASES)):
        emb = project(head, torch.from_numpy(text_inputs(head, feats, [p.text for p in phrases])), "text")
        out[key] = hybrid_rows(emb, test_image_emb, test, phrases)["hybrid"]
    return out


def _val_side(head, Xi, d: dict[str, Any]) -> dict[str, float]:
    """Side on the image side, validation only: i2i side-swap among the validation images, and a linear
    left-vs-right probe (bench.side_probe's) on the head's image embeddings, fitted on train, AUROC on val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from bench.side_probe import one_side
    from data.findings import LEFT
    from evaluation.side_metrics import side_swap_rate
    from pipeline.run_report import project

    val = d["rows"]["val"]
    emb = project(head, Xi, "image")
    swap = side_swap_rate(emb[val] @ emb[val].T, d["codes"][val], d["codes"][val], exclude_self=True)["side_swap_rate"]
    side = [one_side(s) for s in d["studies"]]
    parts = {p: [i for i in d["rows"][p] if side[i]] for p in ("train", "val")}
    probe = LogisticRegression(max_iter=2000).fit(emb[parts["train"]], [side[i] == LEFT for i in parts["train"]])
    auroc = roc_auc_score([side[i] == LEFT for i in parts["val"]], probe.predict_proba(emb[parts["val"]])[:, 1])
    return {"i2i_side_swap_rate": float(swap), "image_side_probe_auroc": float(auroc)}


def _init_worker(data: dict[str, Any]) -> None:
    _DATA.update(data)


def _mean_sd(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def _paired(rs: list[dict[str, Any]], ref: dict[int, dict[str, Any]], get, n_bootstrap: int) -> dict[str, Any]:
    """Paired bootstrap CI of (variant - reference) on the same queries, per-query values averaged over seeds."""
    from evaluation.relevance_metrics import paired_bootstrap_diff

    paired = [r for r in rs if r["seed"] in ref]
    return paired_bootstrap_diff(np.mean([get(r) for r in paired], axis=0),
                                 np.mean([get(ref[r["seed"]]) for r in paired], axis=0), n_bootstrap)


def choose_default(rows: dict[str, Any]) -> str:
    """The rule stated before looking (issue #23): the best VALIDATION nDCG@10 among the variants
    that train the classifier (BCE: the app shows its probability) and whose VALIDATION phrase
    side-swap is <= SIDE_SWAP_LIMIT; if none qualifies, the lowest validation side-swap."""
    eligible = [v for v in rows if VARIANTS[v][0].endswith("+bce")] or list(rows)
    safe = [v for v in eligible if rows[v]["val_phrase"]["side_swap_rate"]["mean"] <= SIDE_SWAP_LIMIT]
    if safe:
        return max(safe, key=lambda v: rows[v]["val_nDCG@10"]["mean"])
    return min(eligible, key=lambda v: rows[v]["val_phrase"]["side_swap_rate"]["mean"])


def aggregate(runs: list[dict[str, Any]], n_bootstrap: int = 2000) -> dict[str, Any]:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    out: dict[str, Any] = {}
    paper = {r["seed"]: r for r in by_variant.get(PAPER, [])}
    previous = {r["seed"]: r for r in by_variant.get(PREVIOUS_DEFAULT, [])}
    for variant, rs in by_variant.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        row: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "seconds": _mean_sd([r["seconds"] for r in rs]),
                               "best_epoch": _mean_sd([r["best_epoch"] for r in rs]),
                               "val_nDCG@10": _mean_sd([r["val_nDCG@10"] for r in rs]),
                               "val_phrase": {m: _mean_sd([r["val_phrase"][m] for r in rs]) for m in PHRASE_METRICS},
                               "test": {dr: {m: _mean_sd([r["test"][dr][m] for r in rs])
                                             for m in METRICS + ("side_swap_rate",) if m in rs[0]["test"][dr]}
                                        for dr in ("i2t", "t2i", "i2i")},
                               "test_phrase": {m: _mean_sd([r["test_phrase"][m] for r in rs]) for m in PHRASE_METRICS},
                               "test_phrase_other_wording": {m: _mean_sd([r["test_phrase_other"][m] for r in rs])
                                                             for m in PHRASE_METRICS}}
        if all("val_side" in r for r in rs):  # image-side figures on validation (runs before them have none)
            row["val_side"] = {m: _mean_sd([r["val_side"][m] for r in rs]) for m in rs[0]["val_side"]}
        for key in ("test_hybrid", "test_hybrid_other"):  # runs made before the hybrid rows existed have none
            if all(key in r for r in rs):
                row[key] = {m: _mean_sd([r[key][m] for r in rs]) for m in PHRASE_METRICS + ("negated_tag_rate",)}
        if variant != PAPER and paper:
            row["diff_vs_paper"] = {dr: {m: _paired(rs, paper, lambda r, dr=dr, m=m: r["per_query"][dr][m], n_bootstrap)
                                         for m in ("nDCG@10", "finding_P@10")} for dr in ("i2t", "t2i", "i2i")}
        if variant != PREVIOUS_DEFAULT and previous:
            row["diff_vs_previous_default"] = {
                "phrase finding_P@10": _paired(rs, previous, lambda r: r["per_phrase"]["finding_P@10"], n_bootstrap),
                "t2i nDCG@10": _paired(rs, previous, lambda r: r["per_query"]["t2i"]["nDCG@10"], n_bootstrap)}
        out[variant] = row
    first = runs[0]
    return {"variants": out, "winner_on_validation": choose_default(out), "paper": PAPER,
            "previous_default": PREVIOUS_DEFAULT, "rule": f"best validation nDCG@10 among +bce variants with validation "
            f"phrase side-swap <= {SIDE_SWAP_LIMIT}; else the lowest validation side-swap",
            "baselines": first["baselines"], "baseline_phrase": first["baseline_phrase"],
            "baseline_phrase_other_wording": first["baseline_phrase_other"],
            "chance": first["chance"], "ceiling": first["ceiling"],
            "chance_side_swap": {dr: first["test"][dr].get("chance_side_swap_rate") for dr in ("i2t", "i2i")},
            "chance_phrase": {k: first["test_phrase"][k] for k in ("chance_finding_P@10", "ceiling_finding_P@10",
                                                                   "chance_side_swap_rate")},
            "chance_phrase_other_wording": {k: first["test_phrase_other"][k] for k in (
                "chance_finding_P@10", "ceiling_finding_P@10", "chance_side_swap_rate")}}


def _fmt(ms: dict[str, float]) -> str:
    return f"{ms['mean']:.3f} ± {ms['sd']:.3f}"


def to_markdown(agg: dict[str, Any]) -> str:
    lines = ["| variant | val nDCG@10 | i2t nDCG@10 | t2i nDCG@10 | i2i nDCG@10 | t2i finding_P@10 | i2t R@10 | t2i P@10 "
             "| phrase finding_P@10 | phrase side-swap | Δ i2t nDCG@10 vs paper [95% CI] | Δ t2i nDCG@10 vs paper [95% CI] |",
             "|---|" + "---|" * 11]
    for v, row in agg["variants"].items():
        t, ph = row["test"], row["test_phrase"]
        diffs = []
        for dr in ("i2t", "t2i"):
            dd = row.get("diff_vs_paper", {}).get(dr, {}).get("nDCG@10")
            diffs.append(f"{dd['diff']:+.3f} [{dd['ci95'][0]:+.3f}, {dd['ci95'][1]:+.3f}]" if dd else "—")
        mark = " **(default)**" if v == agg["winner_on_validation"] else ""
        lines.append(f"| {v}{mark} | {_fmt(row['val_nDCG@10'])} | {_fmt(t['i2t']['nDCG@10'])} | {_fmt(t['t2i']['nDCG@10'])} "
                     f"| {_fmt(t['i2i']['nDCG@10'])} | {_fmt(t['t2i']['finding_P@10'])} | {_fmt(t['i2t']['R@10'])} "
                     f"| {_fmt(t['t2i']['P@10'])} | {_fmt(ph['finding_P@10'])} | {_fmt(ph['side_swap_rate'])} | "
                     + " | ".join(diffs) + " |")
    for name, dirs in agg["baselines"].items():
        cells = [f"{dirs[dr]['nDCG@10']:.3f}" if dr in dirs else "—" for dr in ("i2t", "t2i", "i2i")]
        tf = f"{dirs['t2i']['finding_P@10']:.3f}" if "t2i" in dirs else "—"
        r10 = f"{dirs['i2t']['R@10']:.3f}" if "i2t" in dirs else "—"
        p10 = f"{dirs['t2i']['P@10']:.3f}" if "t2i" in dirs else "—"
        ph = agg["baseline_phrase"].get(name)
        phf = f"{ph['finding_P@10']:.3f} | {ph['side_swap_rate']:.3f}" if ph else "— | —"
        lines.append(f"| {name} | — | {' | '.join(cells)} | {tf} | {r10} | {p10} | {phf} | — | — |")
    for ref in ("chance", "ceiling"):
        rr = agg[ref]
        lines.append(f"| *{ref}* | — | {rr['i2t']['nDCG@10']:.3f} | {rr['t2i']['nDCG@10']:.3f} | {rr['i2i']['nDCG@10']:.3f} "
                     f"| {rr['t2i']['finding_P@10']:.3f} | {rr['i2t']['R@10']:.3f} | {rr['t2i']['P@10']:.3f} | — | — | — | — |")
    return "\n".join(lines)


def _ci(dd: dict[str, Any] | None) -> str:
    return f"{dd['diff']:+.3f} [{dd['ci95'][0]:+.3f}, {dd['ci95'][1]:+.3f}]" if dd else "—"


def phrase_markdown(agg: dict[str, Any]) -> str:
    """Typed phrases and sides: what the default rule reads (validation) beside the test figures."""
    lines = ["| variant | val phrase side-swap | val nDCG@10 | phrase finding_P@10 | phrase side-swap | other-wording "
             "finding_P@10 | other-wording side-swap | i2t side-swap | i2i side-swap | Δ phrase finding_P@10 vs "
             "previous default [95% CI] | Δ t2i nDCG@10 vs previous default [95% CI] |", "|---|" + "---|" * 10]
    for v, row in agg["variants"].items():
        t, ph, ot = row["test"], row["test_phrase"], row["test_phrase_other_wording"]
        dd = row.get("diff_vs_previous_default", {})
        mark = " **(default)**" if v == agg["winner_on_validation"] else ""
        sides = [_fmt(t[dr]["side_swap_rate"]) if "side_swap_rate" in t[dr] else "—" for dr in ("i2t", "i2i")]
        lines.append(f"| {v}{mark} | {_fmt(row['val_phrase']['side_swap_rate'])} | {_fmt(row['val_nDCG@10'])} "
                     f"| {_fmt(ph['finding_P@10'])} | {_fmt(ph['side_swap_rate'])} | {_fmt(ot['finding_P@10'])} "
                     f"| {_fmt(ot['side_swap_rate'])} | {' | '.join(sides)} | {_ci(dd.get('phrase finding_P@10'))} "
                     f"| {_ci(dd.get('t2i nDCG@10'))} |")
    for name, ph in agg["baseline_phrase"].items():
        ot = agg["baseline_phrase_other_wording"].get(name, {})
        lines.append(f"| {name} | — | — | {ph['finding_P@10']:.3f} | {ph['side_swap_rate']:.3f} "
                     f"| {ot.get('finding_P@10', float('nan')):.3f} | {ot.get('side_swap_rate', float('nan')):.3f} "
                     f"| — | — | — | — |")
    c, o, cs = agg["chance_phrase"], agg["chance_phrase_other_wording"], agg["chance_side_swap"]
    fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    lines.append(f"| *chance* | — | — | {fmt(c['chance_finding_P@10'])} | {fmt(c['chance_side_swap_rate'])} "
                 f"| {fmt(o['chance_finding_P@10'])} | {fmt(o['chance_side_swap_rate'])} | {fmt(cs['i2t'])} "
                 f"| {fmt(cs['i2i'])} | — | — |")
    lines.append(f"| *ceiling* | — | — | {fmt(c['ceiling_finding_P@10'])} | 0.000 | {fmt(o['ceiling_finding_P@10'])} "
                 f"| 0.000 | 0.000 | 0.000 | — | — |")
    return "\n".join(lines)


def hybrid_markdown(agg: dict[str, Any]) -> str:
    """Hybrid search (dense channel = each variant's head; lexical + structured over the test reports)."""
    lines = ["| variant (dense channel) | hybrid finding_P@10 | hybrid side-swap | negated finding in tags "
             "| other-wording finding_P@10 | other-wording side-swap |", "|---|---|---|---|---|---|"]
    for v, row in agg["variants"].items():
        if "test_hybrid" in row:
            h, o = row["test_hybrid"], row.get("test_hybrid_other", {})
            cell = lambda r, m: _fmt(r[m]) if m in r else "—"  # noqa: E731
            lines.append(f"| {v} | {cell(h, 'finding_P@10')} | {cell(h, 'side_swap_rate')} | {cell(h, 'negated_tag_rate')} "
                         f"| {cell(o, 'finding_P@10')} | {cell(o, 'side_swap_rate')} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _run_file(folder: Path, variant: str, seed: int) -> Path:
    return folder / f"{''.join(c if c.isalnum() else '_' for c in variant)}-seed{seed}.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", help=f"subset: full names or {', '.join(SHORT)}")
    p.add_argument("--workers", type=int, default=2, help="parallel training processes (1 torch thread each)")
    p.add_argument("--epochs", type=int, help="override the maximum epochs (quick checks only)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="keep each finished run here as JSON and skip the runs already there (an interrupted grid resumes)")
    args = p.parse_args(argv)
    setup_environment()
    variants = [SHORT.get(v, v) for v in (args.variants or VARIANTS)]
    t0 = time.time()
    data = load_data(variants)
    jobs = [(v, s) for s in args.seeds for v in variants]
    runs: list[dict[str, Any]] = []
    if args.resume:
        args.resume.mkdir(parents=True, exist_ok=True)
        done = [(v, s) for v, s in jobs if _run_file(args.resume, v, s).is_file()]
        runs = [json.loads(_run_file(args.resume, v, s).read_text()) for v, s in done]
        jobs = [j for j in jobs if j not in done]
    log(f"ablation: {len(jobs)} runs on {args.workers} worker(s) ({len(runs)} already done)")
    if args.workers <= 1:  # in this process
        _init_worker(data)
        results = (run_one(v, s, args.epochs) for v, s in jobs)
    else:  # spawn, not fork: a forked child inherits the parent's torch/tokenizer thread pools and can hang
        pool = ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(data,))
        results = (f.result() for f in as_completed([pool.submit(run_one, v, s, args.epochs) for v, s in jobs]))
    for r in results:
        runs.append(r)
        if args.resume:
            atomic_write_json(_run_file(args.resume, r["variant"], r["seed"]), r)
        log(f"  {r['variant']:<34} seed {r['seed']}  val {r['val_nDCG@10']:.4f}  test t2i nDCG {r['test']['t2i']['nDCG@10']:.4f}"
            f"  ({r['seconds']:.0f}s, {r['epochs_run']} epochs)")
    if args.workers > 1:
        pool.shutdown()
    runs.sort(key=lambda r: (variants.index(r["variant"]), r["seed"]))  # finished in any order; tables in a fixed one
    agg = aggregate(runs)
    agg.update({"wall_s": round(time.time() - t0, 1), "workers": args.workers, "machine": machine(),
                "command": "python -m bench.ablation " + " ".join(sys.argv[1:] if argv is None else argv)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(
        {**agg, "runs": [{k: v for k, v in r.items() if k not in ("per_query", "per_phrase")} for r in runs]}, indent=1))
    md = to_markdown(agg)
    (args.out / "ablation.md").write_text(
        f"# Ablation ({len(args.seeds)} seeds per variant, test split; default chosen on validation)\n\n{md}\n\n"
        f"## Typed phrases and sides\n\nDefault rule (stated before looking): {agg['rule']}.\n\n"
        f"{phrase_markdown(agg)}\n\n"
        + (f"## Hybrid search, dense channel of each variant ({len(args.seeds)} seeds, test)\n\n{hybrid_markdown(agg)}\n\n" if hybrid_markdown(agg) else "") +
        f"Grid wall time: {agg['wall_s']:.0f} s on {args.workers} worker(s) (`{agg['command']}`; "
        f"load average at the end {agg['machine'].get('load_average')}).\n")
    print(md)
    print(json.dumps({"ablation_wall_s": agg["wall_s"], "winner_on_validation": agg["winner_on_validation"]}))
    return agg


if __name__ == "__main__":
    main()
