"""Trust on unfamiliar inputs (issue 14), measured on the offline demo: one JSON document.

    python -m bench.familiarity            # needs the built demo (python -m pipeline)

* ``false_alarms``: a familiarity model fitted on the train+val studies' frozen features, asked
  about the held-out test studies (never in it): share not called ``familiar`` (target <= 5%).
* ``pediatric_films``: the 16 real films against the full phantom index: verdict counts
  (target: none ``not_radiograph``, all ``unlike_index``).
* ``non_radiographs``: 50+ photos, colour images, noise, gradients, text pages and the app's
  screenshot (``data.probes``) through the app's decoder and the engine (target >= 95% refused).
* ``text``: IU-style finding phrases (all ``familiar``) and non-clinical phrases (all warned).
* ``cost_ms``: what the check adds to one query on top of the embedding (target < 5 ms on
  2 cores): pixel checks + radiograph check + neighbour score for an image, the score for a text;
  ``radiograph_check_ms`` is the index-independent radiograph check alone (issue 25).
* ``film_indexes`` (issue 25, ``--part films``): indexes that are not the demo, built with the demo's
  model: augmented copies of 14 real pediatric films, and those plus 300 demo phantoms. Probes
  refused with no hits (target >= 98%), held-out films and phantoms refused (target 0), the
  calibration report stored at build, and what the old index-relative rule would have refused.

    python -m bench.familiarity --part cost      # or films, or all (default)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, log, machine, scratch_dir, setup_environment, summary, target


QUICK_STRIDE = 6  # --quick: every 6th probe, phrase and held-out input


def split_rows(run_dir: Path, studies) -> dict[str, np.ndarray]:
    split = json.loads((Path(run_dir) / "split.json").read_text())
    row = {s.study_id: i for i, s in enumerate(studies)}
    return {k: np.array([row[i] for i in ids if i in row], dtype=np.int64) for k, ids in split.items()}


def false_alarms(run_dir: Path, studies, backbone, limit: int | None = None) -> dict[str, Any]:
    """Fit on train+val (frozen features from the cache), assess every test study (or the first ``limit``)
    with its pixels."""
    from data.images import load_radiograph
    from trust.familiarity import FAMILIAR, FamiliarityModel
    from model.features import cached_frozen_features

    image_feats, _ = cached_frozen_features(backbone, studies, progress=False)
    rows = split_rows(run_dir, studies)
    fitted = np.concatenate([rows["train"], rows["val"]])
    model = FamiliarityModel.fit(image_feats[fitted], backbone_id=backbone.backbone_id)  # with its radiograph check
    verdicts = [model.assess_image(load_radiograph(studies[i].image_path).image, image_feats[i][None]).verdict
                for i in rows["test"][:limit]]
    counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
    rate = 1.0 - counts.get(FAMILIAR, 0) / max(len(verdicts), 1)
    return {"n_index": int(len(fitted)), "n_test": len(verdicts), "verdicts": counts,
            "false_alarm_rate": target(round(rate, 4), 0.05, "max")}


def engine_verdicts(engine, inputs: list[tuple[str, Any]], detail: bool = False) -> dict[str, Any]:
    """name -> verdict of each image input (path or encoded bytes) through the app's decoder
    (with ``detail``: (verdict, decided_by, number of hits))."""
    from data.images import load_radiograph

    out = {}
    for name, source in inputs:
        loaded = load_radiograph(source)
        result = engine.search_by_image(loaded.image, k=5, colour=loaded.colourfulness)
        fam = result.familiarity
        out[name] = (fam.verdict, fam.decided_by, len(result.hits)) if detail else fam.verdict
    return out


def counts_of(verdicts: dict[str, str]) -> dict[str, int]:
    values = list(verdicts.values())
    return {v: values.count(v) for v in sorted(set(values))}


def text_verdicts(engine, phrases) -> dict[str, str]:
    return {p: engine.search_by_text(p, k=5).familiarity.verdict for p in phrases}


def cost_ms(engine, image, text: str, repeats: int = 200) -> dict[str, Any]:
    """Time of the familiarity work alone, on features computed once (what a query adds)."""
    from trust.familiarity import pixel_check

    fam = engine.familiarity
    feats, _ = engine.encoder.embed_images_with_features([image])
    text_feats, _ = engine.encoder.embed_text_with_features(text)
    image_ms, text_ms, check_ms = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fam.assess_image(image, feats, 0.0)
        t1 = time.perf_counter()
        if fam.radiograph is not None:
            fam.radiograph.probability(feats)
        check_ms.append((time.perf_counter() - t1) * 1e3)
        t1 = time.perf_counter()
        fam.assess_text(text, text_feats)
        t2 = time.perf_counter()
        image_ms.append((t1 - t0) * 1e3)
        text_ms.append((t2 - t1) * 1e3)
    t0 = time.perf_counter()
    for _ in range(repeats):
        pixel_check(image, 0.0)
    pixel = (time.perf_counter() - t0) * 1e3 / repeats
    img, txt = summary(image_ms), summary(text_ms)
    return {"image": img, "text": txt, "pixel_checks_ms": round(pixel, 3),
            "radiograph_check_ms": summary(check_ms) if fam.radiograph is not None else None,
            "n_reference_images": int(len(fam.image.reference)),
            "n_reference_sentences": int(len(fam.text.reference)) if fam.text is not None else 0,
            "image_p50_ms": target(img["median_ms"], 5.0, "max", " ms"),
            "text_p50_ms": target(txt["median_ms"], 5.0, "max", " ms")}


def film_indexes(model, studies, films, copies: int = 8, n_phantoms: int = 300, stride: int = 1) -> dict[str, Any]:
    """The issue-25 criteria on indexes that are not the demo (see the module docstring)."""
    from data.augment import png_bytes, variants, write_film_manifest
    from data.manifest import load_manifest
    from data.paths import cache_root
    from data.probes import non_radiographs
    from data.split import patient_split
    from index.build import build_from_encoder
    from index.engine import SearchEngine
    from trust.familiarity import NOT_RADIOGRAPH, FamiliarityModel
    from trust.report import trust_report
    from PIL import Image

    held = [next(f for f in films if "NORMAL" in f.name), next(f for f in films if "NORMAL" not in f.name)]
    film_studies = load_manifest(write_film_manifest([f for f in films if f not in held],
                                                     cache_root() / "tests" / f"film-index-{copies}", copies)).studies
    test_ids = set(patient_split(studies, seed=0)["test"])
    phantoms = [s for s in studies if s.study_id not in test_ids][:n_phantoms]
    held_inputs = [(f.name, f) for f in held]
    for f in held:
        with Image.open(f) as img:
            held_inputs += [(f"{f.stem}#{j}", png_bytes(c)) for j, c in enumerate(variants(img.convert("L"), 3, 99))]
    held_inputs += [(s.study_id, s.image_path) for s in studies if s.study_id in test_ids][:40:stride]
    probes = non_radiographs()[::stride]
    out: dict[str, Any] = {}
    root = scratch_dir("trust-indexes")
    for name, indexed in {"films": film_studies, "mixed": film_studies + phantoms}.items():
        log(f"index {name}: {len(indexed)} studies")
        t0 = time.perf_counter()
        build_from_encoder(root / name, model, indexed, progress=False)
        build_s = time.perf_counter() - t0
        engine = SearchEngine.load(root / name, model)
        p = engine_verdicts(engine, probes, detail=True)
        h = engine_verdicts(engine, held_inputs, detail=True)
        fam = engine.familiarity
        old = FamiliarityModel(fam.image, None, fam.meta, radiograph=None)
        old.radiograph = None
        refused = [n for n, v in p.items() if v[0] == NOT_RADIOGRAPH and v[2] == 0]
        out[name] = {
            "n_indexed": len(indexed), "build_s": round(build_s, 1),
            "probes_refused_no_hits": target(round(len(refused) / len(p), 4), 0.98, "min"),
            "probes_passed": sorted(set(p) - set(refused)),
            "decided_by": counts_of({n: v[1] for n, v in p.items()}),
            "held_out_radiographs": {"n": len(h), "verdicts": counts_of({n: v[0] for n, v in h.items()}),
                                     "refused": target(sum(v[0] == NOT_RADIOGRAPH for v in h.values()), 1, "max")},
            "old_index_relative_rule_would_pass": [  # pixel refusals are the same under both rules
                n for n, data in probes if p[n][1] != "pixels" and _old_verdict(old, engine, data) != NOT_RADIOGRAPH],
            "calibration_report": trust_report(fam)}
    return out


def _old_verdict(old, engine, data: bytes) -> str:
    """What the pre-issue-25 rule (refusal 3.2 spreads beyond the index) says about a probe."""
    from data.images import load_radiograph

    loaded = load_radiograph(data)
    feats, _ = engine.encoder.embed_images_with_features([loaded.image])
    return old.assess_image(loaded.image, feats, loaded.colourfulness).verdict


def run(part: str = "all", quick: bool = False) -> dict[str, Any]:
    """The report; ``quick``: smoke sizes (2 copies a film, 30 phantoms, 30 test studies, every QUICK_STRIDE-th
    probe and phrase, 20 timing rounds; the full-size criteria are tests/test_familiarity.py's)."""
    stride = QUICK_STRIDE if quick else 1
    from data.demo import load_demo_dataset
    from data.pediatric import fetch_pediatric_films
    from data.probes import FINDING_PHRASES, NON_CLINICAL_PHRASES, non_radiographs
    from index.engine import SearchEngine
    from trust.familiarity import FAMILIAR, NOT_RADIOGRAPH, UNLIKE_INDEX
    from model.retrieval_model import RetrievalModel
    from runtime.threads import torch_threads
    from pipeline.demo import ensure_demo

    run_dir, index_dir = ensure_demo()
    model = RetrievalModel.from_run(run_dir)
    engine = SearchEngine.load(index_dir, model)
    studies = load_demo_dataset()
    report: dict[str, Any] = {"familiarity_meta": engine.familiarity.meta}
    with torch_threads(2):
        if part in ("all", "films"):
            log("film indexes (issue 25)")
            report["film_indexes"] = film_indexes(model, studies, fetch_pediatric_films(),
                                                  *((2, 30, QUICK_STRIDE) if quick else ()))
        if part == "films":
            return report
        if part == "cost":
            from data.images import load_radiograph

            report["cost_ms"] = cost_ms(engine, load_radiograph(studies[0].image_path).image, "small left pleural effusion",
                                        20 if quick else 200)
            return report
        log("false alarms (test split vs train+val)")
        report["false_alarms"] = false_alarms(run_dir, studies, model.backbone, 30 if quick else None)
        log("pediatric films")
        films = engine_verdicts(engine, [(p.name, p) for p in fetch_pediatric_films()])
        c = counts_of(films)
        report["pediatric_films"] = {"n": len(films), "verdicts": c, "per_film": films,
                                     "none_not_radiograph": c.get(NOT_RADIOGRAPH, 0) == 0,
                                     "all_unlike_index": c.get(UNLIKE_INDEX, 0) == len(films)}
        log("non-radiographs")
        probes = engine_verdicts(engine, non_radiographs()[::stride])
        c = counts_of(probes)
        report["non_radiographs"] = {
            "n": len(probes), "verdicts": c, "missed": {k: v for k, v in probes.items() if v != NOT_RADIOGRAPH},
            "refused_share": target(round(c.get(NOT_RADIOGRAPH, 0) / len(probes), 4), 0.98, "min")}
        log("text")
        findings = text_verdicts(engine, FINDING_PHRASES[::stride])
        other = text_verdicts(engine, NON_CLINICAL_PHRASES[::stride])
        report["text"] = {
            "finding_phrases": {"n": len(findings), "familiar": sum(v == FAMILIAR for v in findings.values()),
                                "not_familiar": [k for k, v in findings.items() if v != FAMILIAR]},
            "non_clinical": {"n": len(other), "warned": sum(v != FAMILIAR for v in other.values()),
                             "passed": [k for k, v in other.items() if v == FAMILIAR]}}
        log("cost")
        from data.images import load_radiograph

        image = load_radiograph(studies[0].image_path).image
        report["cost_ms"] = cost_ms(engine, image, "small left pleural effusion", 20 if quick else 200)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="trust on unfamiliar inputs, measured on the offline demo")
    parser.add_argument("--part", choices=("all", "cost", "films"), default="all")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (what `python -m bench --quick` runs)")
    args = parser.parse_args()
    setup_environment()
    emit({"machine": machine(), "familiarity": run(args.part, args.quick)})


if __name__ == "__main__":
    main()
