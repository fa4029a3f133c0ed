"""Composed queries, "why this match", heat-maps and the frozen-vs-fine-tuned view (issue 15)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from data.findings import NEGATIVE, POSITIVE, UNCERTAIN
from data.findings_text import parse_phrase
from webapp.composed import compose
from webapp.why import consensus, conflicts_with, from_phrase, shared_with


# ---------------------------------------------------------------------------- phrase parser
@pytest.mark.parametrize("phrase, expected", [
    ("small left pleural effusion", [("pleural effusion", "left", "mild", POSITIVE)]),
    ("large right pleural effusion, no pneumothorax",
     [("pleural effusion", "right", "severe", POSITIVE), ("pneumothorax", "", "", NEGATIVE)]),
    ("without the effusion", [("pleural effusion", "", "", NEGATIVE)]),
    ("bilateral effusions and cardiomegaly", [("pleural effusion", "bilateral", "", POSITIVE),
                                              ("cardiomegaly", "", "", POSITIVE)]),
    ("no effusion and a small left pneumothorax", [("pleural effusion", "", "", NEGATIVE),
                                                  ("pneumothorax", "left", "mild", POSITIVE)]),
    ("possible right pneumothorax", [("pneumothorax", "right", "", UNCERTAIN)]),
    ("enlarged heart", [("cardiomegaly", "", "", POSITIVE)]),
    # a negation carries over a list (the commonest normal-report sentence), not to an item with its own assertion
    ("No focal airspace disease, pleural effusion, or pneumothorax.",
     [("opacity", "", "", NEGATIVE), ("pleural effusion", "", "", NEGATIVE), ("pneumothorax", "", "", NEGATIVE)]),
    ("no pneumothorax, small left pleural effusion",
     [("pneumothorax", "", "", NEGATIVE), ("pleural effusion", "left", "mild", POSITIVE)]),
    ("No acute cardiopulmonary abnormality, stable cardiomegaly", [("cardiomegaly", "", "", POSITIVE)]),
    ("left pleural effusion, pneumothorax", [("pleural effusion", "left", "", POSITIVE),
                                             ("pneumothorax", "", "", POSITIVE)]),
    # negation wordings besides "no": before the finding, after it, after a colon
    ("The lungs are clear of focal airspace disease", [("opacity", "", "", NEGATIVE)]),
    ("absence of pneumothorax", [("pneumothorax", "", "", NEGATIVE)]),
    ("pneumothorax ruled out", [("pneumothorax", "", "", NEGATIVE)]),
    ("pneumothorax: none", [("pneumothorax", "", "", NEGATIVE)]),
    ("3.3 mm nodule in the left lung", [("nodule", "left", "", POSITIVE)]),  # one clause, not cut at the decimal point
])
def test_parse_phrase(phrase, expected):
    got = [(f.name, f.side, f.severity, f.certainty) for f in parse_phrase(phrase).findings]
    assert got == expected


def test_parse_phrase_locations_and_normal():
    (f,) = parse_phrase("right upper lobe opacity").findings
    assert (f.name, f.side, f.location) == ("opacity", "right", "upper")
    parsed = parse_phrase("no acute cardiopulmonary abnormality")
    assert parsed.normal and parsed.findings == ()
    assert parse_phrase("zebra stripes").findings == ()


# ---------------------------------------------------------------------------- why this match
def test_shared_findings_respect_side_and_negation():
    query = from_phrase(parse_phrase("left pleural effusion, no pneumothorax"))
    assert shared_with(query, ["Pleural Effusion/left/small"]) == ["left pleural effusion", "no pneumothorax (as asked)"]
    assert shared_with(query, ["Pleural Effusion/right", "Pneumothorax/right"]) == []
    assert conflicts_with(query, ["Pleural Effusion/right", "Pneumothorax/right"]) == [
        "has pneumothorax (asked without)", "pleural effusion on the right side (asked left)"]
    # bilateral covers the asked left side: shared, named by the hit's own side
    assert shared_with(query, ["Pleural Effusion/bilateral"])[0] == "bilateral pleural effusion"


def test_consensus_of_neighbours():
    tags = [["Cardiomegaly", "Pleural Effusion/left"], ["Cardiomegaly"], ["Cardiomegaly", "Pleural Effusion/left"],
            ["normal"]]
    q = consensus(tags)
    assert [(f.name, f.side) for f in q.positive] == [("cardiomegaly", ""), ("pleural effusion", "left")]
    assert not q.normal
    assert consensus([["normal"], ["normal"], ["Cardiomegaly"]]).normal
    assert shared_with(consensus([["normal"], ["normal"]]), ["normal"]) == ["normal"]


# ---------------------------------------------------------------------------- arithmetic
def test_compose_arithmetic():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=64).astype(np.float32), rng.normal(size=64).astype(np.float32)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    np.testing.assert_allclose(compose(img, txt, 0.0), unit(img), atol=1e-6)
    np.testing.assert_allclose(compose(img, txt, 1.0, "with"), unit(unit(img) + unit(txt)), atol=1e-6)
    cos = lambda q: float(q @ unit(txt))  # noqa: E731
    assert cos(compose(img, txt, 2.0, "with")) > cos(compose(img, txt, 0.5, "with")) > cos(unit(img))
    assert cos(compose(img, txt, 1.0, "without")) < cos(unit(img))
    assert abs(np.linalg.norm(compose(img, txt, 3.0, "without")) - 1) < 1e-6
    with pytest.raises(ValueError):
        compose(img, txt, 1.0, "plus")
    with pytest.raises(ValueError):
        compose(img, txt, -1.0)
    with pytest.raises(ValueError):
        compose(img, img, 1.0, "without")  # cancels exactly


# ---------------------------------------------------------------------------- on the small demo
@pytest.fixture(scope="module")
def extras(small_demo, model):
    from index.engine import SearchEngine
    from webapp.extras import ExtrasService
    from webapp.service import RunInfo, SearchService

    _, run, index = small_demo
    service = SearchService(SearchEngine.load(index, model), RunInfo.load(run), maps=None)
    return ExtrasService(service)


def _upload(small_demo, tmp_path: Path, name: str = "q.png") -> str:
    """A copy of an indexed phantom (uploads are deleted once read)."""
    source = sorted((small_demo[0] / "images").glob("*.png"))[0]
    return str(shutil.copy(source, tmp_path / name))


def test_composed_search_moves_towards_the_phrase(extras, small_demo, tmp_path):
    engine = extras.engine
    from webapp.composed import NEUTRAL_PHRASE

    z_txt, z_neutral = engine.encoder.embed_texts(["left pleural effusion", NEUTRAL_PHRASE])
    direction = z_txt - z_neutral  # what the composed query moves along (webapp.composed)
    gallery = engine.vectors("images")
    upload = _upload(small_demo, tmp_path)
    alone = extras.search_composed(upload, "", "with", 1.0, 8)
    with_ = extras.search_composed(upload, "left pleural effusion", "with", 2.0, 8)
    without = extras.search_composed(upload, "left pleural effusion", "without", 1.0, 8)
    mean_cos = lambda out: float(np.mean([gallery[r] @ direction for r in out[7]["rows"]]))  # noqa: E731
    assert mean_cos(with_) > mean_cos(alone) > mean_cos(without)
    records = with_[4]
    assert len(records["hits"]) == 8 and records["mode"] == "with" and records["weight"] == 2.0
    assert "left pleural effusion" in records["query_findings"]
    for row, hit in zip(records["why"], records["hits"]):
        effusions = [t.lower() for t in hit["tags"] if t.lower().startswith("pleural effusion")]
        not_right = any("left" in t or "bilateral" in t or "right" not in t for t in effusions)
        assert any(s.endswith("pleural effusion") for s in row["shared"]) == not_right
    assert "Why these matches" in with_[2]


def test_composed_search_bad_inputs_give_messages(extras, small_demo, tmp_path):
    assert "Drop a chest X-ray" in extras.search_composed(None, "x", "with", 1.0, 8)[3]
    assert "Cannot search" in extras.search_composed(_upload(small_demo, tmp_path), "effusion", "plus", 1.0, 8)[3]
    assert "Cannot search" in extras.search_composed(_upload(small_demo, tmp_path, "b.png"), "effusion", "with", 9, 8)[3]


def test_composed_search_refuses_a_photo_and_warns_on_a_film_unlike_the_index(extras, pediatric_films, tmp_path):
    """The Compose tab applies the image tab's familiarity check: a photo is not searched at all, and a real film
    against the phantom index gets its results with a warning, its "why" table saying the neighbours' findings are
    not a reading of the image (before, a cat photo was composed and read as "left opacity, left pleural effusion")."""
    from data.probes import non_radiographs
    from webapp.presenters import REFUSED, WARNING

    photo = tmp_path / "cat.png"
    photo.write_bytes(dict(non_radiographs())["skimage:chelsea"])
    refused = extras.search_composed(str(photo), "left pleural effusion", "with", 1.5, 5)
    assert refused[3].startswith(REFUSED) and "No search was run" in refused[3]
    assert refused[1] == [] and refused[2] == "" and refused[4]["hits"] == []
    assert refused[4]["familiarity"]["verdict"] == "not_radiograph"

    film = str(shutil.copy(pediatric_films[0], tmp_path / pediatric_films[0].name))
    unlike = extras.search_composed(film, "left pleural effusion", "with", 1.5, 5)
    assert unlike[3].startswith(WARNING) and "unlike the studies in the index" in unlike[3]
    assert len(unlike[1]) == 5 and unlike[4]["familiarity"]["verdict"] == "unlike_index"
    assert "not a reading of the query image" in unlike[2] and "query read as" not in unlike[2]


def test_composed_search_of_an_indexed_study_is_trusted(extras, small_demo, tmp_path):
    from webapp.presenters import OK

    out = extras.search_composed(_upload(small_demo, tmp_path), "left pleural effusion", "with", 1.5, 5)
    assert out[3].startswith(OK) and out[4]["familiarity"]["verdict"] == "familiar"
    assert "query read as" in out[2]


def test_side_by_side_uses_the_frozen_vectors(extras, small_demo, tmp_path):
    from index.frozen import FROZEN_IMAGES

    assert FROZEN_IMAGES in extras.engine.manifest.files and extras.engine.frozen is not None
    out = extras.search_composed(_upload(small_demo, tmp_path), "", "with", 1.0, 5, True)
    frozen = out[4]["frozen"]
    assert frozen["available"] and len(frozen["frozen_ids"]) == 5 and len(out[5]) == 5
    assert frozen["overlap"] == len(set(frozen["frozen_ids"]) & set(frozen["finetuned_ids"]))
    assert f"Overlap: {frozen['overlap']} of 5" in out[6]
    # the query is an indexed phantom: both spaces find it first
    assert frozen["frozen_ids"][0] == frozen["finetuned_ids"][0]


def test_frozen_vectors_are_checksummed(small_demo, tmp_path, model):
    from index.engine import SearchEngine
    from index.frozen import FROZEN_IMAGES
    from index.manifest import IndexCorruptError

    copy = Path(shutil.copytree(small_demo[2], tmp_path / "index"))
    raw = bytearray((copy / FROZEN_IMAGES).read_bytes())
    raw[-3] ^= 0xFF
    (copy / FROZEN_IMAGES).write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError, match=FROZEN_IMAGES):
        SearchEngine.load(copy, model)


def test_heatmap_on_demand(extras, small_demo, tmp_path):
    out = extras.search_composed(_upload(small_demo, tmp_path), "left pleural effusion", "with", 1.0, 4)
    image, caption = extras.heatmap(out[7], 2)
    assert image is not None and image.size == (320, 320) and "Hit #2" in caption
    maps = extras.cached_occlusion(out[7]["upload"])
    heat = maps.heat(extras.engine.vectors("images")[out[7]["rows"][1]])
    assert heat.shape == (maps.grid, maps.grid) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert extras.heatmap(out[7], 99)[0] is None
    assert extras.heatmap(None, 1)[0] is None


def test_compose_with_a_neutral_phrase_moves_along_the_difference():
    rng = np.random.default_rng(1)
    img, txt, neutral = (rng.normal(size=32).astype(np.float32) for _ in range(3))
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    d = unit(unit(txt) - unit(neutral))
    np.testing.assert_allclose(compose(img, txt, 1.5, "with", neutral), unit(unit(img) + 1.5 * d), atol=1e-6)
    np.testing.assert_allclose(compose(img, txt, 1.5, "without", neutral), unit(unit(img) - 1.5 * d), atol=1e-6)
    with pytest.raises(ValueError, match="nothing beyond"):
        compose(img, txt, 1.0, "with", txt)


def test_index_cli_build_keeps_frozen_vectors(small_demo, model, tmp_path):
    """`python -m index build` (build_from_encoder) stores the frozen vectors from the same forward pass."""
    from data.dataset import load_dataset
    from index.build import build_from_encoder
    from index.engine import SearchEngine
    from index.frozen import FrozenGallery

    studies = load_dataset(small_demo[0])[:12]
    build_from_encoder(tmp_path / "idx", model, studies, batch_size=5, progress=False)
    engine = SearchEngine.load(tmp_path / "idx", model)
    gallery = FrozenGallery.load(engine.index_dir, engine.manifest)
    assert gallery is not None and gallery.vectors.shape == (12, model.backbone.image_dim)
    from data.images import load_radiograph

    feats = model.backbone.encode_images([load_radiograph(studies[7].image_path).image]).numpy()[0]
    rows, scores = gallery.search(feats, 3)
    assert rows[0] == 7 and scores[0] == pytest.approx(1.0, abs=2e-3)
    # the head-space graph is what it was before: the image finds itself
    assert engine.search_by_image(load_radiograph(studies[7].image_path).image, k=1).hits[0].study_id == studies[7].study_id


def test_main_tabs_show_why_each_hit_matched(extras, small_demo, tmp_path):
    service = extras.service
    _, reports, status, records, _ = service.search_text("left pleural effusion, no pneumothorax", 6, "any", "any", "any")
    assert reports.startswith("<div class='cxr-why'>") and "left pleural effusion, no pneumothorax" in reports
    for hit in records["hits"]:
        has_ptx = any(t.lower().startswith("pneumothorax") for t in hit["tags"])
        row = reports.split(f"<td>{hit['rank']}</td>", 1)[1].split("</tr>", 1)[0]
        assert ("no pneumothorax (as asked)" in row) == (not has_ptx)
        assert ("has pneumothorax (asked without)" in row) == has_ptx
    image_reports = service.search_image(_upload(small_demo, tmp_path), 5, "any", "any", "any")[2]
    assert "consensus of the nearest studies" in image_reports
