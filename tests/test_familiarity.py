"""Trust on unfamiliar inputs (issue 14): the three verdicts, where they are stored, what the
user sees, the calibrated estimate and the relevance floor of filtered searches.

Fast tests use synthetic features and the 40-study demo; the ``slow`` ones measure the issue's
criteria on the full offline demo (the same code as ``python -m bench.familiarity``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from webapp.presenters import OK, WARNING
from data.probes import FINDING_PHRASES, NON_CLINICAL_PHRASES, non_radiographs
from trust.familiarity import (
    FAMILIAR,
    FILE,
    NOT_RADIOGRAPH,
    UNLIKE_INDEX,
    FamiliarityModel,
    pixel_check,
    report_sentences,
)


# ----------------------------------------------------------------------------- the model alone
def _cluster(n: int, dim: int = 64, seed: int = 0, centre: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = np.ones(dim) if centre is None else centre
    x = centre + 0.15 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_held_out_points_of_the_indexed_distribution_are_familiar_and_far_points_are_not():
    model = FamiliarityModel.fit(_cluster(400))
    fresh = _cluster(200, seed=1)
    verdicts = [model.assess_image(None, f[None]).verdict for f in fresh]
    assert verdicts.count(FAMILIAR) >= 190  # ~1% expected beyond the 99th percentile
    other = _cluster(5, centre=-np.ones(64), seed=2)  # the opposite direction: nothing like the index
    assert {model.assess_image(None, f[None]).verdict for f in other} == {NOT_RADIOGRAPH}
    between = model.image.quantile(0.5) + 0.5 * (model.far_threshold - model.unlike_threshold)
    assert model.unlike_threshold < between < model.far_threshold
    pct = [model.assess_image(None, f[None]).percentile for f in fresh]
    assert 30 < np.median(pct) < 70  # a held-out point sits mid-distribution


def test_saved_model_scores_exactly_like_the_fitted_one(tmp_path):
    text = _cluster(50, dim=16, seed=3)
    model = FamiliarityModel.fit(_cluster(300), text)
    model.save(tmp_path / FILE)
    loaded = FamiliarityModel.load(tmp_path / FILE)
    probe = _cluster(20, seed=4)
    np.testing.assert_allclose(loaded.image_scores(probe), model.image_scores(probe), rtol=1e-6)
    assert loaded.meta == model.meta
    assert (tmp_path / FILE).read_bytes()[:8] != b"\x80\x04\x95"  # safetensors, not a pickle


def test_pixel_checks_refuse_what_no_radiograph_looks_like_and_pass_phantoms(small_demo):
    from data.images import load_radiograph

    phantoms = sorted((small_demo[0] / "images").glob("*.png"))
    assert all(pixel_check(load_radiograph(p).image) is None for p in phantoms)
    reasons = {}
    for name, data in non_radiographs():
        loaded = load_radiograph(data)
        reasons[name] = pixel_check(loaded.image, loaded.colourfulness)
    assert reasons["skimage:chelsea"] == reasons["skimage:coffee"] == "colour"
    assert reasons["text:page0"] == "document" and reasons["screenshot:app"] == "document"
    assert reasons["noise:uniform0"] == "noise" and reasons["gradient:horizontal"] == "smooth"
    assert reasons["flat:grey128"] == "flat" and reasons["skimage:text"] == "aspect"


def test_report_sentences_are_distinct_lowercase_and_most_frequent_first():
    reports = ["Heart size normal. No effusion.", "Heart size normal. Small left effusion.", "XXXX. Heart size normal."]
    sentences = report_sentences(reports)
    assert sentences[0] == "heart size normal"
    assert set(sentences) == {"heart size normal", "no effusion", "small left effusion"}


def test_sentence_features_are_kept_for_the_next_build_over_the_same_reports(tmp_path):
    """An index built again over the same reports (the demo's first start after `python -m pipeline`) reads its
    sentences' features back instead of embedding them again; other sentences, another backbone or a damaged
    file are embedded."""
    from trust.familiarity import sentence_features

    class Counting:
        def __init__(self, backbone_id: str) -> None:
            self.backbone_id, self.calls = backbone_id, []

        def encode_texts(self, texts):
            self.calls.append(list(texts))
            return np.array([[len(t), hash(t) % 97, 1.0] for t in texts], np.float32)

    stub, sentences = Counting("stub-a"), ["heart size normal", "no effusion"]
    first = sentence_features(stub, sentences, tmp_path)
    again = sentence_features(stub, sentences, tmp_path)
    assert stub.calls == [sentences] and np.array_equal(first, again) and again.dtype == np.float32
    sentence_features(stub, sentences[:1], tmp_path)
    other = Counting("stub-b")
    sentence_features(other, sentences, tmp_path)
    assert stub.calls[1:] == [sentences[:1]] and other.calls == [sentences]
    for path in tmp_path.glob("sentences-*.npy"):
        path.write_bytes(b"not an array")
    assert np.array_equal(sentence_features(stub, sentences, tmp_path), first) and len(stub.calls) == 3
    sentence_features(stub, sentences, None)  # no cache folder: embedded every time
    assert len(stub.calls) == 4


# ----------------------------------------------------------------------------- the small demo
@pytest.fixture(scope="module")
def service(small_demo, model):
    from index.engine import SearchEngine
    from webapp.service import RunInfo, SearchService

    _, run, index = small_demo
    return SearchService(SearchEngine.load(index, model), RunInfo.load(run), maps=None)


def _upload(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_familiar_phantom_gets_results_and_an_estimate(service, small_demo, tmp_path):
    source = sorted((small_demo[0] / "images").glob("*.png"))[3]
    preview, gallery, _, estimate, status, records, state = service.search_image(
        _upload(tmp_path, "x.png", source.read_bytes()), 5, "any", "any", "any")
    assert records["familiarity"]["verdict"] == FAMILIAR, records["familiarity"]
    assert status.startswith(OK) and len(gallery) == 5
    assert 0.0 <= records["abnormal_probability"] <= 1.0 and estimate is not None
    assert state["familiarity"]["verdict"] == FAMILIAR


def test_photo_is_refused_with_no_results_and_no_estimate(service, tmp_path):
    name, data = next(p for p in non_radiographs() if p[0] == "skimage:chelsea")
    preview, gallery, reports, estimate, status, records, state = service.search_image(
        _upload(tmp_path, "cat.png", data), 8, "any", "any", "any")
    assert records["familiarity"]["verdict"] == NOT_RADIOGRAPH
    assert "photograph" in status and "not a chest radiograph" in status
    assert gallery == [] and records["hits"] == [] and reports == "" and estimate is None and state is None
    assert records["abnormal_probability"] is None
    assert set(records["familiarity"]) >= {"verdict", "score", "percentile"}


def test_real_film_is_unlike_the_phantom_index_results_under_a_warning_estimate_withheld(service, pediatric_films, tmp_path):
    preview, gallery, _, estimate, status, records, _ = service.search_image(
        _upload(tmp_path, "film.jpeg", pediatric_films[0].read_bytes()), 5, "any", "any", "any")
    fam = records["familiarity"]
    assert fam["verdict"] == UNLIKE_INDEX, fam
    assert status.startswith(WARNING) and "unlike the studies in the index" in status and "withheld" in status
    assert len(gallery) == 5 and len(records["hits"]) == 5
    assert estimate is None and records["abnormal_probability"] is None
    assert fam["percentile"] >= 99.0 and fam["score"] > 0


def test_text_verdicts_warn_on_non_clinical_phrases_only(service):
    for phrase in ("small left pleural effusion", "no acute cardiopulmonary abnormality", "right lower lobe opacity"):
        _, _, status, records, _ = service.search_text(phrase, 5, "any", "any", "any")
        assert records["familiarity"]["verdict"] == FAMILIAR and status.startswith(OK), (phrase, status)
    for phrase in ("banana bread recipe", "asdfghjkl qwerty", "😀😂🎉", "def main(): return 0"):
        gallery, _, status, records, _ = service.search_text(phrase, 5, "any", "any", "any")
        assert records["familiarity"]["verdict"] == UNLIKE_INDEX, phrase
        assert status.startswith(WARNING) and len(gallery) == 5, (phrase, status)


def test_verdict_badge_and_map_star_say_the_verdict():
    from webapp.trust import star_label, verdict_html

    badge = verdict_html({"verdict": UNLIKE_INDEX, "score": 0.5, "percentile": 100.0, "message": "<b>x</b>"})
    assert "Unlike the indexed studies" in badge and "&lt;b&gt;" in badge and "data-verdict='unlike_index'" in badge
    assert star_label("your query", {"verdict": NOT_RADIOGRAPH}) == "your query (not a radiograph)"
    refused = verdict_html({"verdict": NOT_RADIOGRAPH, "decided_by": "radiograph_model", "message": "m"})
    assert "decided by the radiograph check" in refused and "data-decided-by='radiograph_model'" in refused
    assert verdict_html(None) == ""


def test_familiarity_file_is_checksummed_by_the_manifest(small_demo, model, tmp_path):
    from index.engine import SearchEngine
    from index.manifest import IndexCorruptError

    copy = Path(shutil.copytree(small_demo[2], tmp_path / "index"))
    manifest = json.loads((copy / "manifest.json").read_text())
    assert FILE in manifest["files"]
    assert SearchEngine.load(copy, model).familiarity is not None
    data = bytearray((copy / FILE).read_bytes())
    data[-10] ^= 0xFF
    (copy / FILE).write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="familiarity.safetensors"):
        SearchEngine.load(copy, model)


# ----------------------------------------------------------------------------- relevance floor
def test_filtered_search_cuts_hits_far_below_the_unfiltered_best(small_demo, tmp_path):
    from data.dataset import load_dataset
    from index.build import build_index
    from index.engine import RELEVANCE_FLOOR, SearchEngine

    studies = load_dataset(small_demo[0])
    dim = 8
    vectors = np.zeros((len(studies), dim), np.float32)
    for i, s in enumerate(studies):  # normal studies near e0, abnormal ones near e1 (orthogonal)
        vectors[i, 0 if s.label == 0 else 1] = 1.0
        vectors[i, 2 + i % 6] = 0.05
    build_index(tmp_path / "idx", vectors, vectors, studies, {"backbone_id": "t", "head_checksum": "t", "embed_dim": dim})
    engine = SearchEngine.load(tmp_path / "idx", None)
    query = np.eye(dim, dtype=np.float32)[0]
    n_abnormal = sum(s.label == 1 for s in studies)
    assert len(engine.search_by_image_vector(query, k=5, filters={"label": "abnormal"}).hits) == 5  # no floor asked
    cut = engine.search_by_image_vector(query, k=5, filters={"label": "abnormal"}, floor=RELEVANCE_FLOOR)
    assert cut.hits == [] and cut.n_below_floor == min(5, n_abnormal) and cut.n_candidates == n_abnormal
    kept = engine.search_by_image_vector(query, k=5, filters={"label": "normal"}, floor=RELEVANCE_FLOOR)
    assert len(kept.hits) == 5 and kept.n_below_floor == 0
    assert all(h.score >= 1 - RELEVANCE_FLOOR for h in kept.hits)
    unfiltered = engine.search_by_image_vector(query, k=5, floor=RELEVANCE_FLOOR)
    assert unfiltered.n_below_floor == 0 and len(unfiltered.hits) == 5


# ----------------------------------------------------------------------------- calibration
def test_platt_scaling_fixes_an_overconfident_and_biased_estimate():
    from evaluation.calibration import calibration_report, fit_platt, fit_temperature, reliability

    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    skewed = 3.0 * true_logit + 2.0  # too sharp and biased towards "abnormal"
    scale, bias = fit_platt(skewed[:2000], labels[:2000])
    assert scale == pytest.approx(1 / 3, rel=0.15) and bias == pytest.approx(-2 / 3, abs=0.2)
    assert fit_temperature(3.0 * true_logit[:2000], labels[:2000]) == pytest.approx(3.0, rel=0.15)
    stored, report = calibration_report(skewed[:2000], labels[:2000], skewed[2000:], labels[2000:])
    assert stored["method"] == "platt" and report["ece_after"] < report["ece_before"] / 2
    assert report["ece_after"] < 0.05 and report["ece_after"] <= report["ece_temperature_only"]
    assert sum(b["n"] for b in report["reliability_after"]) == 2000
    assert reliability(np.array([0.9, 0.9]), np.array([1, 1]))["ece"] == pytest.approx(0.1)


def test_trained_run_stores_its_calibration_and_the_model_applies_it(small_demo, model):
    import torch

    from evaluation.calibration import calibrated_probability

    run = small_demo[1]
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "eval.json").read_text())
    assert config["calibration"]["method"] == "platt" and config["calibration"]["fitted_on"] == "val"
    assert {"ece_before", "ece_after", "reliability_after"} <= set(report["calibration"])
    emb = np.eye(model.embed_dim, dtype=np.float32)[:4]
    logits = model.head.classify(torch.from_numpy(emb)).detach().numpy()
    np.testing.assert_allclose(model.abnormal_probability(emb), calibrated_probability(config, logits), rtol=1e-5)
    order = np.argsort(logits)
    assert np.all(np.diff(model.abnormal_probability(emb)[order]) >= -1e-7)  # ranking kept (scale > 0)


# ----------------------------------------------------------------------------- the criteria, full demo
@pytest.fixture(scope="module")
def demo_engine(demo_built):
    from index.engine import SearchEngine
    from model.retrieval_model import RetrievalModel

    run, index = demo_built
    return SearchEngine.load(index, RetrievalModel.from_run(run))


@pytest.mark.slow
def test_false_alarms_on_held_out_demo_studies_at_most_5_percent(demo_built, demo_studies, demo_engine):
    from bench.familiarity import false_alarms

    result = false_alarms(demo_built[0], demo_studies, demo_engine.encoder.backbone)
    print(result)
    assert result["n_test"] >= 300
    assert result["false_alarm_rate"]["met"], result


@pytest.mark.slow
def test_real_films_are_all_unlike_the_index_and_never_refused(demo_engine, pediatric_films):
    from bench.familiarity import engine_verdicts

    verdicts = engine_verdicts(demo_engine, [(p.name, p) for p in pediatric_films])
    print(verdicts)
    assert len(verdicts) == 16 and set(verdicts.values()) == {UNLIKE_INDEX}


@pytest.mark.slow
def test_at_least_98_percent_of_non_radiographs_are_refused(demo_engine):
    from bench.familiarity import engine_verdicts

    probes = non_radiographs()
    verdicts = engine_verdicts(demo_engine, probes)
    refused = sum(v == NOT_RADIOGRAPH for v in verdicts.values())
    print({k: v for k, v in verdicts.items() if v != NOT_RADIOGRAPH})
    assert len(probes) >= 50 and refused / len(probes) >= 0.98
    assert verdicts["screenshot:app"] == NOT_RADIOGRAPH and verdicts["skimage:chelsea"] == NOT_RADIOGRAPH
    detail = engine_verdicts(demo_engine, [p for p in probes if p[0] in ("skimage:brick", "skimage:chelsea")], detail=True)
    assert detail == {"skimage:brick": (NOT_RADIOGRAPH, "radiograph_model", 0), "skimage:chelsea": (NOT_RADIOGRAPH, "pixels", 0)}


@pytest.mark.slow
def test_finding_phrases_pass_and_non_clinical_phrases_are_warned(demo_engine):
    from bench.familiarity import text_verdicts

    from evaluation.phrase_benchmark import phrase_texts

    findings = text_verdicts(demo_engine, FINDING_PHRASES)
    assert len(findings) >= 60 and [p for p, v in findings.items() if v != FAMILIAR] == []
    benchmark = text_verdicts(demo_engine, phrase_texts())  # the finding-level issue's phrase benchmark
    assert len(benchmark) >= 60 and [p for p, v in benchmark.items() if v != FAMILIAR] == []
    other = text_verdicts(demo_engine, NON_CLINICAL_PHRASES)
    assert [p for p, v in other.items() if v == FAMILIAR] == []


def test_growing_an_index_keeps_its_familiarity_model_under_the_checksums(small_demo, model, tmp_path):
    import dataclasses

    from data.dataset import load_dataset
    from index.build import add_studies
    from index.engine import SearchEngine

    copy = Path(shutil.copytree(small_demo[2], tmp_path / "index"))
    before = (copy / FILE).read_bytes()
    new = [dataclasses.replace(load_dataset(small_demo[0])[0], study_id="NEW-1")]
    vec = np.random.default_rng(0).normal(size=(1, model.embed_dim)).astype(np.float32)
    manifest = add_studies(copy, vec, vec, new)
    assert manifest.count == 41 and FILE in manifest.files and (copy / FILE).read_bytes() == before
    assert SearchEngine.load(copy, model).familiarity is not None  # checksums verified on load


def test_embedding_map_star_is_labelled_with_the_verdict():
    from webapp.plots import EmbeddingMaps

    data = {"ids": ["A", "B"], "labels": [0, 1], "maps": {"finetuned": {"tsne": [[0, 0], [1, 1]]}}}
    maps = EmbeddingMaps(data, {"A": "clear", "B": "effusion"})
    query = {"label": "uploaded image", "neighbour_ids": ["A", "B"], "scores": [0.9, 0.8],
             "familiarity": {"verdict": UNLIKE_INDEX}}
    star = maps.figure("finetuned", "tsne", query).data[-1]
    assert star.name == "your query (unlike the index)" and list(star.text) == ["your query (unlike the index)"]
    assert "unlike the index" in star.hovertext[0]
