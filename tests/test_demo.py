"""The offline demo dataset: real IU reports + phantoms, cached, resumable, atomic."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from data.dataset import META_FILE, STUDIES_FILE, dataset_meta, load_dataset
from data.demo import DEMO_VERSION, SOURCE, build_demo_dataset, demo_dir, load_demo_dataset, renderer_id
from data.iu_xray import load_iu_reports
from data.phantom import encode_png, render_phantom

N = 30


@pytest.fixture(scope="module")
def reports():
    return load_iu_reports()[:N]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    return build_demo_dataset(out, seed=0, limit=N, workers=2, progress=False)


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in (folder / "images").glob("*.png")}


def test_builds_one_256px_grayscale_png_per_study(built, reports):
    pngs = sorted((built / "images").glob("*.png"))
    assert len(pngs) == N
    assert {p.stem for p in pngs} == {s.study_id for s in reports}
    for p in pngs[:5]:
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (256, 256)


def test_images_are_the_deterministic_phantoms(built, reports):
    s = reports[3]
    on_disk = np.asarray(Image.open(built / "images" / f"{s.study_id}.png"))
    assert np.array_equal(on_disk, render_phantom(s.tags, seed=0, study_id=s.study_id))
    assert (built / "images" / f"{s.study_id}.png").read_bytes() == encode_png(on_disk)


def test_studies_keep_the_reports_and_point_at_relative_pngs(built, reports):
    lines = [json.loads(line) for line in (built / STUDIES_FILE).read_text().splitlines() if line.strip()]
    assert [d["image_paths"] for d in lines] == [[f"images/{s.study_id}.png"] for s in reports]
    loaded = load_dataset(built)
    assert len(loaded) == N
    for got, want in zip(loaded, reports):
        assert (got.study_id, got.patient_id, got.findings, got.impression, got.label, got.tags) == (
            want.study_id,
            want.patient_id,
            want.findings,
            want.impression,
            want.label,
            want.tags,
        )
        assert got.view == "PA"
        assert got.image_paths == (str(built / "images" / f"{want.study_id}.png"),)
    meta = dataset_meta(built)
    assert meta["seed"] == 0 and meta["size"] == 256 and meta["demo_version"] == DEMO_VERSION
    assert meta["source"] == SOURCE and meta["n_studies"] == N


def test_second_build_is_cached_and_renders_nothing(built):
    before = _mtimes(built)
    meta_before = (built / META_FILE).stat().st_mtime_ns
    start = time.perf_counter()
    assert build_demo_dataset(built, seed=0, limit=N, workers=2, progress=False) == built
    assert time.perf_counter() - start < 5.0  # generous: it only reads dataset.json and stats files
    assert _mtimes(built) == before
    assert (built / META_FILE).stat().st_mtime_ns == meta_before


def test_interrupted_build_resumes_with_only_the_missing_images(tmp_path, reports):
    out = build_demo_dataset(tmp_path / "d", seed=1, limit=12, workers=1, progress=False)
    originals = {p.name: p.read_bytes() for p in (out / "images").glob("*.png")}
    # Simulate a kill mid-build: metadata not written yet, some images missing, a temp file left.
    (out / META_FILE).unlink()
    missing = sorted(originals)[:3]
    for name in missing:
        (out / "images" / name).unlink()
    stray = out / "images" / ".CXR1.png.half.tmp"
    stray.write_bytes(b"\x89PNG half")
    os.utime(stray, (time.time() - 3600, time.time() - 3600))  # left by a build killed an hour ago
    before = _mtimes(out)
    build_demo_dataset(out, seed=1, limit=12, workers=1, progress=False)
    after = _mtimes(out)
    assert not stray.exists()
    assert set(after) == set(originals)
    assert all(after[n] == before[n] for n in before)  # existing images untouched
    assert {p.name: p.read_bytes() for p in (out / "images").glob("*.png")} == originals
    assert dataset_meta(out)["n_studies"] == 12


def test_images_from_another_renderer_are_not_reused(tmp_path):
    out = build_demo_dataset(tmp_path / "d", seed=0, limit=3, workers=1, progress=False)
    victim = out / "images" / "CXR1.png"
    victim.write_bytes(encode_png(np.zeros((256, 256), np.uint8)))  # "stale" image
    (out / "images" / "RENDERER").write_text("someone-else")
    (out / META_FILE).unlink()
    build_demo_dataset(out, seed=0, limit=3, workers=1, progress=False)
    assert np.asarray(Image.open(victim)).std() > 10


def test_new_renderer_id_rewrites_only_images_whose_pixels_changed(tmp_path):
    """A renderer id change (version bump, golden rewrite) re-checks every image, but identical
    files keep their mtime, so the feature cache (keyed by image size + mtime) stays valid."""
    out = build_demo_dataset(tmp_path / "d", seed=0, limit=4, workers=1, progress=False)
    images = out / "images"
    victim = images / "CXR2.png"
    victim.write_bytes(encode_png(np.zeros((64, 64), np.uint8)))  # drawn by "another renderer"
    extra = images / "CXR999.png"  # outside this build: cannot be checked, so it must go
    extra.write_bytes(victim.read_bytes())
    (images / "RENDERER").write_text("v0-older-renderer")
    (out / META_FILE).unlink()
    past = time.time() - 3600
    for png in images.glob("*.png"):
        os.utime(png, (past, past))
    before = _mtimes(out)
    build_demo_dataset(out, seed=0, limit=4, workers=1, progress=False)
    after = _mtimes(out)
    assert set(after) == {"CXR1.png", "CXR2.png", "CXR3.png", "CXR4.png"}
    assert after["CXR2.png"] != before["CXR2.png"]
    assert all(after[n] == before[n] for n in after if n != "CXR2.png")
    for s in load_dataset(out):
        with Image.open(s.image_path) as im:
            assert np.array_equal(np.asarray(im), render_phantom(s.tags, seed=0, study_id=s.study_id))
    assert (images / "RENDERER").read_text() == dataset_meta(out)["renderer"] == renderer_id()


def test_defaults_live_in_the_cache_and_load_returns_studies(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE", str(tmp_path))
    folder = demo_dir(seed=0, size=64)
    assert folder == tmp_path / f"demo-v{DEMO_VERSION}-s0-64px"
    studies = load_demo_dataset(seed=0, size=64, limit=4)
    assert [s.study_id for s in studies] == ["CXR1", "CXR2", "CXR3", "CXR4"]
    for s in studies:
        with Image.open(s.image_path) as im:
            assert im.size == (64, 64)
        assert s.image_path.startswith(str(folder))
