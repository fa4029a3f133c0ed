"""Trust that holds on the user's own index (issue 25): the index-independent radiograph check,
the verdict's ``decided_by``, the calibration report made at index build, and the issue's
criteria on indexes that are not the demo (real films; phantoms + real films).

The film indexes hold augmented copies of 14 of the 16 pediatric films (``data.augment``); the
other two films are the held-out radiograph probes. Their images and frozen features are cached
under ``<cache>/tests`` so a second session embeds nothing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data.errors import IndexRefusedError
from trust.familiarity import (
    BY_INDEX_DISTANCE,
    BY_PIXELS,
    BY_RADIOGRAPH_MODEL,
    FAMILIAR,
    NOT_RADIOGRAPH,
    UNLIKE_INDEX,
    FamiliarityModel,
)
from model.backbones import OFFLINE_BACKBONE_ID
from trust.radiograph_check import SHIPPED, SHIPPED_DIR, RadiographModel, for_backbone, slug

FILM_COPIES = 8  # 14 films x 8 = 112 studies: above the report's 100-study minimum to judge


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _cluster(n: int, centre: np.ndarray, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(centre + spread * rng.normal(size=(n, len(centre))))


# ----------------------------------------------------------------------------- the check alone
def test_shipped_check_is_pinned_loads_and_refuses_a_changed_file(tmp_path, monkeypatch):
    import trust.radiograph_check as rc

    assert OFFLINE_BACKBONE_ID in SHIPPED
    model = for_backbone(OFFLINE_BACKBONE_ID)
    assert model is not None and model.weight.shape == (1792,) and 0 < model.threshold < 1
    assert model.meta["cv_film_refused"] == 0 and model.meta["cv_probe_refused_share"] >= 0.98
    assert for_backbone("no-such-backbone") is None
    copy = tmp_path / slug(OFFLINE_BACKBONE_ID)
    data = bytearray((SHIPPED_DIR / slug(OFFLINE_BACKBONE_ID)).read_bytes())
    data[-3] ^= 0x01
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(rc, "SHIPPED_DIR", tmp_path)
    rc.for_backbone.cache_clear()
    try:
        with pytest.raises(ValueError, match="checksum"):
            rc.for_backbone(OFFLINE_BACKBONE_ID)
    finally:
        rc.for_backbone.cache_clear()


def test_saved_check_scores_like_the_fitted_one_and_is_not_a_pickle(tmp_path):
    w = np.random.default_rng(0).normal(size=32).astype(np.float32)
    model = RadiographModel(w, -0.5, 0.3, {"backbone_id": "t"})
    model.save(tmp_path / "c.safetensors")
    loaded = RadiographModel.load(tmp_path / "c.safetensors")
    x = np.random.default_rng(1).normal(size=(7, 32))
    np.testing.assert_allclose(loaded.probability(x), model.probability(x), rtol=1e-6)
    np.testing.assert_allclose(model.probability(3 * x), model.probability(x), rtol=1e-6)  # scale-free
    assert loaded.backbone_id == "t" and (tmp_path / "c.safetensors").read_bytes()[:2] != b"\x80\x04"
    with pytest.raises(ValueError, match="expects 32-d"):
        model.probability(np.ones((1, 8)))


def test_not_radiograph_no_longer_depends_on_the_index_spread():
    """The same far-off query, two indexes (tight and wide): without the check the wide index lets it
    through; with it, both refuse it, and a radiograph-like far query is 'unlike', never refused."""
    dim = 64
    centre, other = np.ones(dim), np.r_[np.ones(dim // 2), -np.ones(dim // 2)]
    photo = _unit(other + 0.2 * np.random.default_rng(5).normal(size=dim))[None]
    weight = _unit(centre - other) * 40  # P(radiograph) high along `centre`, low along `other`
    check = RadiographModel(weight, 0.0, 0.3, {"backbone_id": "t"})
    tight = _cluster(300, centre, 0.1, 0)
    wide = np.concatenate([tight, _cluster(100, centre, 1.2, 1)])  # films from many sources
    old_tight, old_wide = FamiliarityModel.fit(tight), FamiliarityModel.fit(wide)
    assert old_tight.radiograph is None  # no backbone id: the old index-relative rule
    assert old_tight.assess_image(None, photo).verdict == NOT_RADIOGRAPH
    assert old_wide.assess_image(None, photo).verdict != NOT_RADIOGRAPH  # the spread problem
    far_film = _unit(centre + 0.6 * np.random.default_rng(9).normal(size=dim))[None]  # a film unlike the tight index
    film_verdicts = []
    for feats in (tight, wide):
        fam = FamiliarityModel(FamiliarityModel.fit(feats).image, None, {**FamiliarityModel.fit(feats).meta}, check)
        v = fam.assess_image(None, photo)
        assert v.verdict == NOT_RADIOGRAPH and v.decided_by == BY_RADIOGRAPH_MODEL and v.radiograph_probability < 0.3
        f = fam.assess_image(None, far_film)
        assert f.decided_by == BY_INDEX_DISTANCE and f.radiograph_probability > 0.3
        film_verdicts.append(f.verdict)
    assert film_verdicts == [UNLIKE_INDEX, FAMILIAR]
    assert old_tight.assess_image(None, far_film).verdict == NOT_RADIOGRAPH  # what the old rule did to it
    d = fam.assess_image(None, tight[:1]).to_dict()
    assert d["verdict"] == FAMILIAR and d["decided_by"] == BY_INDEX_DISTANCE and d["radiograph_probability"] > 0.9


def test_augmented_copies_are_deterministic_and_change_the_film(pediatric_films):
    from PIL import Image

    from data.augment import variants

    film = Image.open(pediatric_films[0]).convert("L")
    a, b = variants(film, 3, seed=4), variants(film, 3, seed=4)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    assert len({x.size for x in a}) == 3 and all(min(x.size) >= 32 for x in a)


# ----------------------------------------------------------------------------- the calibration report
def _fake_study(path: Path, i: int):
    from data.records import Study

    return Study(study_id=f"S{i}", patient_id=f"P{i}", image_paths=(str(path),), findings="clear", impression="",
                 label=0, tags=(), view="")


def test_report_refuses_to_publish_an_index_its_own_films_fail(small_demo, tmp_path):
    from trust.report import MIN_TO_JUDGE, attach, trust_report

    image = sorted((small_demo[0] / "images").glob("*.png"))[0]
    studies = [_fake_study(image, i) for i in range(MIN_TO_JUDGE + 20)]
    dim = 16
    feats = _cluster(len(studies), np.ones(dim), 0.1, 0)
    refuse_some = RadiographModel(np.zeros(dim, np.float32), 0.0, 0.3, {"backbone_id": "t"})
    accept_all = RadiographModel(refuse_some.weight, 5.0, 0.3, {"backbone_id": "t"})
    base = FamiliarityModel.fit(feats)
    fam = FamiliarityModel(base.image, None, dict(base.meta), accept_all)
    attach(fam, None, studies, feats)
    held = trust_report(fam)["held_out"]
    assert held["refused"] == 0.0 and held["pixel_sample"] == len(studies) and held["n"] == len(studies)
    json.dumps(fam.meta)  # stored as safetensors metadata
    bad = RadiographModel(np.r_[np.full(dim // 2, 60.0), np.full(dim // 2, -60.0)].astype(np.float32), 0.0, 0.3,
                          {"backbone_id": "t"})  # refuses about half of a symmetric cluster
    with pytest.raises(IndexRefusedError, match=r"not publishing this index: .*limit 1%") as err:
        attach(FamiliarityModel(fam.image, None, dict(base.meta), bad), None, studies,
               _cluster(len(studies), np.zeros(dim), 1, 1))
    assert "\n" not in str(err.value)
    small = FamiliarityModel(fam.image, None, dict(base.meta), bad)
    attach(small, None, studies[:50], _cluster(50, np.zeros(dim), 1, 1))  # too few to judge: published
    assert trust_report(small)["held_out"]["refused"] > 0.1


# ----------------------------------------------------------------------------- indexes that are not the demo
def _held_out(films: list[Path]) -> list[Path]:
    return [next(f for f in films if "NORMAL" in f.name), next(f for f in films if "NORMAL" not in f.name)]


def _film_studies(films: list[Path]):
    from data.augment import write_film_manifest
    from data.manifest import load_manifest
    from data.paths import cache_root

    held = _held_out(films)
    indexed = [f for f in films if f not in held]
    csv = write_film_manifest(indexed, cache_root() / "tests" / f"film-index-{FILM_COPIES}", FILM_COPIES)
    return load_manifest(csv).studies


def _build(tmp_path: Path, name: str, model, studies, parts: tuple[list, ...] | None = None) -> object:
    """An index of ``studies`` (``index.build.build_from_encoder``); with ``parts`` (lists of studies that make up
    ``studies``, in order), the same index from each part's cached frozen features, so studies another index of
    this module already embedded are not embedded again (the feature cache is keyed by the whole study list)."""
    from index.build import build_from_encoder, build_from_features
    from index.engine import SearchEngine
    from model.features import cached_frozen_features

    if parts is None:
        build_from_encoder(tmp_path / name, model, studies, progress=False)
    else:
        cached = [cached_frozen_features(model.backbone, part, progress=False) for part in parts]
        build_from_features(tmp_path / name, model, studies, *(np.concatenate(f) for f in zip(*cached)))
    return SearchEngine.load(tmp_path / name, model)


@pytest.fixture(scope="module")
def film_engines(pediatric_films, model, small_demo, tmp_path_factory):
    """{"films": index of 112 augmented real films, "mixed": those + 30 of the small demo's phantoms}."""
    from data.dataset import load_dataset

    root = tmp_path_factory.mktemp("trust-indexes")
    films = _film_studies(list(pediatric_films))
    phantoms = load_dataset(small_demo[0])
    return {"films": _build(root, "films", model, films),
            "mixed": _build(root, "mixed", model, films + phantoms[:30], parts=(films, phantoms[:30])),
            "held_phantoms": phantoms[30:]}


def _image_probes(engine, inputs):
    from data.images import load_radiograph

    out = {}
    for name, source in inputs:
        loaded = load_radiograph(source)
        result = engine.search_by_image(loaded.image, k=5, colour=loaded.colourfulness)
        out[name] = (result.familiarity.to_dict(), len(result.hits))
    return out


@pytest.mark.parametrize("which", ["films", "mixed"])
def test_non_radiographs_are_refused_with_no_hits_and_held_out_films_are_not(film_engines, pediatric_films, which):
    from data.augment import png_bytes, variants
    from data.probes import non_radiographs
    from trust.report import trust_report
    from PIL import Image

    engine = film_engines[which]
    probes = _image_probes(engine, non_radiographs())
    refused = {k for k, (v, hits) in probes.items() if v["verdict"] == NOT_RADIOGRAPH and hits == 0}
    print(which, {k: v["verdict"] for k, (v, _) in probes.items() if k not in refused})
    assert len(probes) >= 50 and len(refused) / len(probes) >= 0.98
    assert {v["decided_by"] for v, _ in probes.values()} <= {BY_PIXELS, BY_RADIOGRAPH_MODEL}
    assert probes["skimage:brick"][0]["decided_by"] == BY_RADIOGRAPH_MODEL  # grey photos the pixels pass
    held = [(f.name, f) for f in _held_out(list(pediatric_films))]
    for f in _held_out(list(pediatric_films)):  # re-exports of the held-out films, other seeds than the index
        with Image.open(f) as img:
            held += [(f"{f.stem}#{j}", png_bytes(c)) for j, c in enumerate(variants(img.convert("L"), 3, seed=99))]
    held += [(s.study_id, s.image_path) for s in film_engines["held_phantoms"]]
    films = _image_probes(engine, held)
    assert [k for k, (v, _) in films.items() if v["verdict"] == NOT_RADIOGRAPH] == []
    assert all(hits == 5 for _, hits in films.values())
    report = trust_report(engine.familiarity)
    assert report["held_out"]["refused"] <= 0.01 and report["held_out"]["n"] >= 100
    assert report["probes"]["not_radiograph"] >= 0.98 and report["radiograph_check"]["threshold"] == 0.3


def test_film_index_report_is_kept_under_the_checksums(film_engines, tmp_path):
    from index.engine import SearchEngine
    from trust.familiarity import FILE
    from trust.report import trust_report

    engine = film_engines["films"]
    copy = Path(shutil.copytree(engine.index_dir, tmp_path / "copy"))
    again = SearchEngine.load(copy, engine.encoder)
    assert trust_report(again.familiarity) == trust_report(engine.familiarity)
    assert again.familiarity.radiograph is not None and FILE in json.loads((copy / "manifest.json").read_text())["files"]
