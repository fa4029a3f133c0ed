"""Bundles for a Space: pack a run + index (+ images), open it, serve the same results, refuse damage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from index.bundle import BUNDLE_FILE, BundleCorruptError, BundleError, open_bundle, pack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(small_demo, tmp_path_factory):
    _, run, index = small_demo
    return pack(run, index, tmp_path_factory.mktemp("b") / "bundle", images=True)


def test_pack_writes_checksummed_manifest(bundle, small_demo):
    info = json.loads((bundle.root / BUNDLE_FILE).read_text())
    assert info["count"] == 40 and info["images"] == 40
    names = set(info["files"])
    assert {"run/config.json", "run/head.safetensors", "index/manifest.json", "index/images.hnsw",
            "index/meta.sqlite", "index/frozen_images.npy"} <= names
    assert sum(n.startswith("images/") for n in names) == 40
    assert all(len(d["sha256"]) == 64 and d["bytes"] > 0 for d in info["files"].values())


def test_round_trip_serves_the_same_results(bundle, small_demo, model):
    from index.engine import SearchEngine

    _, _, index = small_demo
    original = SearchEngine.load(index, model)
    packed = SearchEngine.load(bundle.index_dir, model, data_root=bundle.data_root)
    for phrase in ("left pleural effusion", "cardiomegaly", "no acute cardiopulmonary abnormality"):
        a, b = original.search_by_text(phrase, k=10), packed.search_by_text(phrase, k=10)
        assert a.study_ids == b.study_ids
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
    # the bundled images resolve inside the bundle and are the same bytes
    for hit_a, hit_b in zip(a, b):
        assert Path(hit_b.image_path).is_relative_to(bundle.root / "images")
        assert Path(hit_b.image_path).read_bytes() == Path(hit_a.image_path).read_bytes()


def test_damaged_bundle_is_refused(bundle, tmp_path):
    import shutil

    copy = Path(shutil.copytree(bundle.root, tmp_path / "copy"))
    open_bundle(copy)  # intact copy opens
    head = copy / "run" / "head.safetensors"
    raw = bytearray(head.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    head.write_bytes(bytes(raw))
    with pytest.raises(BundleCorruptError, match="run/head.safetensors fails its checksum"):
        open_bundle(copy)
    head.unlink()
    with pytest.raises(BundleCorruptError, match="missing"):
        open_bundle(copy)


def test_bad_references_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(BundleError, match="HF_HUB_OFFLINE"):
        open_bundle("someone/cxr-retrieval-bundle")
    assert time.monotonic() - started < 1.0
    with pytest.raises(BundleError, match="not a bundle"):
        open_bundle(tmp_path)
    with pytest.raises(BundleError, match="no bundle at"):
        open_bundle(tmp_path / "nope" / "deeper")


def test_pack_refuses_a_mismatched_pair_and_a_used_folder(small_demo, tmp_path, bundle):
    _, run, index = small_demo
    with pytest.raises(BundleError, match="not empty"):
        pack(run, index, bundle.root)
    cfg = json.loads((run / "config.json").read_text())
    other = tmp_path / "run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**cfg, "head_sha256": "0" * 64}))
    with pytest.raises(BundleError, match="pack the matching pair"):
        pack(other, index, tmp_path / "out")


def test_app_serves_a_bundle_folder_and_refuses_a_hub_id_offline(bundle, tmp_path):
    """Also ``--text-mode dense`` (issue 23, one app start for both flags): the API's default mode is then
    dense, and a caller can still ask for hybrid."""
    from gradio_client import handle_file

    from tests.app_server import gradio_client, running_app

    with running_app(["--bundle", str(bundle.root), "--text-mode", "dense"]) as (url, _proc, _s):
        client = gradio_client(url)
        gallery, _html, status, records = client.predict("left pleural effusion", 5, "any", "any", "any",
                                                         api_name="/search_text")
        assert len(records["hits"]) == 5 and len(gallery) == 5
        assert records["mode"] == "dense" and "(dense search)" in status  # --text-mode sets the default
        *_, records = client.predict("left pleural effusion", 4, "any", "any", "any", "any", "hybrid",
                                     api_name="/search_text")
        assert records["mode"] == "hybrid"
        # the composed query's named endpoint, with the frozen side by side (bundled frozen vectors)
        image = sorted((bundle.root / "images").rglob("*.png"))[0]
        out = client.predict(handle_file(str(image)), "left pleural effusion", "with", 1.5, 4, True,
                             api_name="/search_composed")
        records = out[4]
        assert len(records["hits"]) == 4 and records["mode"] == "with" and records["frozen"]["available"]
        assert records["frozen"]["overlap"] == len(set(records["frozen"]["frozen_ids"]) & set(records["frozen"]["finetuned_ids"]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    from tests.app_server import free_port

    # a free port: app.py checks its port first (7860 may be taken on a shared machine), then the bundle
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--bundle", "someone/cxr-bundle",
                           "--port", str(free_port())], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "HF_HUB_OFFLINE" in proc.stderr and "huggingface-cli download" in proc.stderr
    print(f"hub id offline: failed in {time.monotonic() - started:.1f}s")
