"""The retrieval engine with a fake encoder: persistence, recall, filters, integrity, growth."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.search import clustered_gallery, recall_at_k
from data.dataset import save_dataset
from data.records import Study
from index import (
    ExactIndex,
    HnswIndex,
    IndexCorruptError,
    IndexMismatchError,
    SearchEngine,
    add_studies,
    build_index,
)
from index import build as build_module
from index.ef_tuning import build_tuned
from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, exact_top_k
from index.manifest import IMAGES, META, read_manifest

ROOT = Path(__file__).resolve().parent.parent
DIM = 32
FINDINGS = ["Cardiomegaly", "Pleural Effusion/left/small", "Opacity/lung/base/right", "Nodule", "Atelectasis"]
VIEWS = ["PA", "LATERAL", "AP"]


class FakeBackbone:
    """Deterministic stand-in for a frozen backbone: an image is its 8x4 thumbnail, a text its
    hashed bag of words; both normalised (the whole ``index.encoder.FrozenBackbone`` protocol)."""

    name = "fake"
    preprocess_id = "fake-thumbnail-8x4"
    context_length = 77

    def __init__(self, backbone_id: str, dim: int):
        self.backbone_id, self.image_dim, self.text_dim = backbone_id, 32, dim

    def preprocess(self, image):
        thumb = np.asarray(image.convert("L").resize((8, 4)), np.float32) - 127.5
        return torch.from_numpy(thumb)[None].expand(3, 4, 8).clone()

    def encode_image_batch(self, pixels):
        return torch.nn.functional.normalize(pixels[:, 0].reshape(len(pixels), -1), dim=-1)

    def encode_images(self, images):
        if not len(images):
            return torch.zeros(0, self.image_dim)
        return self.encode_image_batch(torch.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts):
        x = np.zeros((len(texts), self.text_dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                x[i, h % self.text_dim] += 1.0 if (h >> 8) % 2 else -1.0
        x[np.all(x == 0, axis=1), 0] = 1.0
        return torch.nn.functional.normalize(torch.from_numpy(x), dim=-1)


class FakeEncoder:
    """Deterministic stand-in for RetrievalModel (the whole ``index.encoder.Encoder`` protocol): the
    head is the identity on the fake backbone's features. Abnormal probability is a sigmoid of one axis."""

    def __init__(self, backbone_id: str = "fake-backbone", head_checksum: str = "head-1", embed_dim: int = DIM):
        self.backbone_id, self.head_checksum, self.embed_dim = backbone_id, head_checksum, embed_dim
        self.backbone = FakeBackbone(backbone_id, embed_dim)

    def project_image_features(self, feats):
        x = np.asarray(feats, np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def project_text_features(self, feats, texts=None):
        return self.project_image_features(feats)

    def embed_images(self, images):
        return self.project_image_features(self.backbone.encode_images(images).numpy())

    def embed_texts(self, texts):
        return self.project_text_features(self.backbone.encode_texts(texts).numpy())

    def embed_images_with_features(self, images):
        emb = self.embed_images(images)
        return emb.copy(), emb

    def embed_text_with_features(self, text):
        emb = self.embed_texts([text])
        return emb.copy(), emb

    def abnormal_probability(self, image_emb):
        return 1.0 / (1.0 + np.exp(-4.0 * np.asarray(image_emb)[:, 0]))


def make_studies(n: int, start: int = 0, image_dir: Path | None = None) -> list[Study]:
    """Studies with varied label / view / findings; abnormal ones carry 1-2 finding tags."""
    studies = []
    for i in range(start, start + n):
        label = int(i % 3 != 0)
        tags = (FINDINGS[i % len(FINDINGS)], FINDINGS[(i // 7) % len(FINDINGS)]) if label else ("normal",)
        path = str(image_dir / f"s{i}.png") if image_dir else f"/nonexistent/s{i}.png"
        studies.append(
            Study(
                study_id=f"S{i}",
                patient_id=f"P{i // 2}",
                image_paths=(path,),
                findings=f"finding text {i}",
                impression=f"impression {i}",
                label=label,
                tags=tags,
                view=VIEWS[i % len(VIEWS)],
            )
        )
    return studies


def identity(encoder: FakeEncoder) -> dict:
    return {"backbone_id": encoder.backbone_id, "head_checksum": encoder.head_checksum, "embed_dim": encoder.embed_dim}


def vectors(n: int, seed: int, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    gallery, queries = clustered_gallery(n, 50, dim, n_clusters=12, seed=seed)
    return gallery, queries


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def built(tmp_path, encoder):
    """A 600-study index on disk; returns (index_dir, studies, image_emb, report_emb, queries)."""
    studies = make_studies(600)
    image_emb, queries = vectors(600, seed=3)
    report_emb, _ = vectors(600, seed=4)
    index_dir = tmp_path / "idx"
    build_index(index_dir, image_emb, report_emb, studies, identity(encoder))
    return index_dir, studies, image_emb, report_emb, queries


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- persistence
def test_build_save_load_same_results_and_metadata(built, encoder):
    index_dir, studies, image_emb, report_emb, queries = built
    assert sorted(os.listdir(index_dir)) == ["images.hnsw", "manifest.json", "meta.sqlite", "reports.hnsw"]
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["count"] == 600 and manifest["embed_dim"] == DIM and manifest["format_version"] == 1
    assert manifest["backbone_id"] == "fake-backbone" and manifest["head_checksum"] == "head-1"
    assert set(manifest["files"]) == {"images.hnsw", "reports.hnsw", "meta.sqlite"}
    tuning = manifest["ef_tuning"]  # ef chosen from measured recall (index.ef_tuning), recorded with it
    assert manifest["hnsw"] == {"M": DEFAULT_M, "ef_construction": DEFAULT_EF_CONSTRUCTION, "ef": tuning["ef"]}
    assert all(g["reached"] and min(g["recall_at_10"].values()) >= 0.98 for g in tuning["graphs"].values())

    in_memory, _ = build_tuned(image_emb, DEFAULT_M, DEFAULT_EF_CONSTRUCTION, {"reports": report_emb})  # same steps
    in_memory.set_ef(tuning["ef"])
    engine = SearchEngine.load(index_dir, encoder, exact_threshold=0)  # force the graph
    reloaded = SearchEngine.load(index_dir, encoder, exact_threshold=0)
    for q in queries[:20]:
        expected = in_memory.search(q, 10)
        got = engine.search_by_image_vector(q, k=10)
        assert not got.exact
        assert [h.row_id for h in got.hits] == expected.ids[0].tolist()
        np.testing.assert_allclose([h.score for h in got.hits], expected.scores[0], atol=1e-5)
        assert reloaded.search_by_image_vector(q, k=10).study_ids == got.study_ids
    hit = engine.search_by_image_vector(image_emb[123], k=1).hits[0]
    study = studies[123]
    assert (hit.rank, hit.study_id, hit.label, hit.view) == (1, "S123", study.label, study.view)
    assert hit.tags == study.tags and hit.finding_names == study.finding_names
    assert (hit.findings, hit.impression, hit.image_path) == (study.findings, study.impression, study.image_path)
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_image_paths_stored_relative_to_data_root(tmp_path, encoder):
    data_root = tmp_path / "data"
    studies = make_studies(20, image_dir=data_root / "images")
    emb, _ = vectors(20, seed=5)
    build_index(tmp_path / "idx", emb, emb, studies, identity(encoder), data_root=data_root)
    moved = tmp_path / "moved"
    engine = SearchEngine.load(tmp_path / "idx", encoder, data_root=moved)
    assert engine.store.get([0])[0].image_path == os.path.join("images", "s0.png")
    assert engine.search_by_image_vector(emb[0], k=1).hits[0].image_path == str(moved / "images" / "s0.png")


def test_added_studies_from_another_folder_keep_resolvable_paths(tmp_path, encoder):
    root, elsewhere = tmp_path / "data", tmp_path / "other"
    emb, _ = vectors(30, seed=5)
    build_index(tmp_path / "idx", emb[:20], emb[:20], make_studies(20, image_dir=root), identity(encoder), data_root=root)
    add_studies(tmp_path / "idx", emb[20:], emb[20:], make_studies(10, start=20, image_dir=elsewhere))
    engine = SearchEngine.load(tmp_path / "idx", encoder, data_root=root)
    assert engine.search_by_image_vector(emb[3], k=1).hits[0].image_path == str(root / "s3.png")
    assert engine.search_by_image_vector(emb[25], k=1).hits[0].image_path == str(elsewhere / "s25.png")


def test_recall_at_10_of_default_params_on_demo_sized_gallery():
    gallery, queries = clustered_gallery(4000, 200, 256, n_clusters=40, seed=11)
    graph = HnswIndex.create(gallery)  # DEFAULT_M / DEFAULT_EF_CONSTRUCTION / DEFAULT_EF
    truth = exact_top_k(gallery, queries, 10).ids
    found = graph.search(queries, 10).ids
    assert recall_at_k(found, truth) >= 0.98


def test_exact_fallback_matches_brute_force(built, encoder):
    index_dir, studies, image_emb, report_emb, queries = built
    engine = SearchEngine.load(index_dir, encoder)  # 600 < EXACT_THRESHOLD: exact by default
    forced = SearchEngine.load(index_dir, encoder, exact_threshold=0)
    normed = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    for q in queries[:10]:
        q = q / np.linalg.norm(q)
        sims = normed @ q
        truth = np.argsort(-sims, kind="stable")[:10]
        for result in (engine.search_by_image_vector(q, k=10), forced.search_by_image_vector(q, k=10, exact=True)):
            assert result.exact
            assert [h.row_id for h in result.hits] == truth.tolist()
            np.testing.assert_allclose([h.score for h in result.hits], sims[truth], atol=1e-5)
    # Filtered exact search == brute force over the filtered subset.
    abnormal = np.array([i for i, s in enumerate(studies) if s.label == 1])
    sims = normed[abnormal] @ (queries[0] / np.linalg.norm(queries[0]))
    truth = abnormal[np.argsort(-sims, kind="stable")[:10]]
    got = forced.search_by_image_vector(queries[0], k=10, filters={"label": "abnormal"}, exact=True)
    assert [h.row_id for h in got.hits] == truth.tolist()


def test_bulk_vector_extraction_matches_hnswlib_get_items():
    x, _ = vectors(700, seed=8)
    graph = HnswIndex.create(x[:500])
    graph.add(x[500:])  # after a resize too
    reference = graph.items(np.arange(700))
    np.testing.assert_array_equal(graph.vectors(), reference)
    np.testing.assert_allclose(graph.vectors([3, 650]), x[[3, 650]] / np.linalg.norm(x[[3, 650]], axis=1, keepdims=True), atol=1e-6)


def test_exact_index_and_k_larger_than_gallery():
    matrix, queries = vectors(7, seed=6)
    found = ExactIndex(matrix).search(queries[:2], k=10)
    assert found.ids.shape == (2, 7)
    assert sorted(found.ids[0].tolist()) == list(range(7))
    assert np.all(np.diff(found.scores[0]) <= 1e-6)


# --------------------------------------------------------------------------- filters
@pytest.mark.parametrize("exact_threshold", [0, 100, 2000], ids=["graph", "graph+subset", "exact"])
@pytest.mark.parametrize(
    "filters",
    [
        {"label": "abnormal"},
        {"label": "normal"},
        {"view": "PA"},
        {"view": "lateral"},
        {"finding": "cardiomegaly"},
        {"finding": "Pleural Effusion", "label": "abnormal", "view": "AP"},
    ],
)
def test_filters_return_only_matching_items_and_exactly_k(built, encoder, filters, exact_threshold):
    index_dir, studies, _, _, queries = built
    engine = SearchEngine.load(index_dir, encoder, exact_threshold=exact_threshold)

    def matches(study: Study) -> bool:
        if "label" in filters and study.label_name != filters["label"]:
            return False
        if "view" in filters and study.view.upper() != filters["view"].upper():
            return False
        return "finding" not in filters or filters["finding"].lower() in study.finding_names

    n_matching = sum(matches(s) for s in studies)
    assert n_matching >= 10
    by_id = {s.study_id: s for s in studies}
    for q in queries[:10]:
        for target in ("images", "reports"):
            result = engine.search_by_image_vector(q, k=10, filters=filters, target=target)
            assert result.n_candidates == n_matching
            assert len(result.hits) == 10
            assert len(set(result.study_ids)) == 10
            assert all(matches(by_id[h.study_id]) for h in result.hits)
            assert [h.rank for h in result.hits] == list(range(1, 11))
            assert all(a.score >= b.score - 1e-6 for a, b in zip(result.hits, result.hits[1:]))


def test_filter_with_fewer_matches_than_k_returns_all_of_them(built, encoder):
    index_dir, studies, _, _, queries = built
    engine = SearchEngine.load(index_dir, encoder, exact_threshold=0)
    filters = {"finding": "nodule", "view": "PA", "label": 1}
    expected = {s.study_id for s in studies if "nodule" in s.finding_names and s.view == "PA" and s.label == 1}
    result = engine.search_by_image_vector(queries[0], k=len(expected) + 20, filters=filters)
    assert set(result.study_ids) == expected
    nothing = engine.search_by_image_vector(queries[0], k=5, filters={"finding": "no such finding"})
    assert nothing.hits == [] and nothing.n_candidates == 0


def test_bad_filters_and_queries_are_refused(built, encoder):
    engine = SearchEngine.load(built[0], encoder)
    with pytest.raises(ValueError, match="label"):
        engine.search_by_image_vector(built[4][0], filters={"label": "sick"})
    with pytest.raises(ValueError, match="unknown filter"):
        engine.search_by_image_vector(built[4][0], filters={"sex": "F"})
    with pytest.raises(ValueError, match="shape"):
        engine.search_by_image_vector(np.ones(DIM + 1))
    assert not engine.search_by_image_vector(built[4][0], filters={"label": "any", "view": ""}).filters.active


# --------------------------------------------------------------------------- end to end with images
def test_search_by_image_and_text_with_encoder(tmp_path, encoder):
    data_root = tmp_path / "data"
    (data_root / "images").mkdir(parents=True)
    studies = make_studies(40, image_dir=data_root / "images")
    rng = np.random.default_rng(0)
    for s in studies:
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L").save(s.image_path)
    build_module.build_from_encoder(tmp_path / "idx", encoder, studies, data_root=data_root, batch_size=16, progress=False,
                                    familiarity=False)  # noise images: the pixel check would refuse them
    engine = SearchEngine.load(tmp_path / "idx", encoder)
    query = Image.open(studies[17].image_path)
    result = engine.search_by_image(query, k=5)
    assert result.hits[0].study_id == "S17" and result.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert 0.0 <= result.abnormal_probability <= 1.0
    assert len(result.reports) == 5 and result.reports[0].findings
    assert Path(result.hits[0].image_path).is_file()
    text = engine.search_by_text(studies[5].report_text, k=3)
    assert text.target == "images" and len(text.hits) == 3 and text.query_type == "text"
    json.dumps(result.to_dict())  # serialisable for the app / API
    with pytest.raises(ValueError, match="empty"):
        engine.search_by_text("   ")


def test_cli_build_and_add(tmp_path, encoder, monkeypatch):
    from index import __main__ as cli

    loaded = []
    monkeypatch.setattr(cli, "_load_encoder", lambda run_dir, backbone_path=None: loaded.append(backbone_path) or encoder)
    data = tmp_path / "ds"
    (data / "images").mkdir(parents=True)
    studies = make_studies(30, image_dir=data / "images")
    rng = np.random.default_rng(1)
    for s in studies:
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L").save(s.image_path)
    rel = [Study.from_dict({**s.to_dict(), "image_paths": [os.path.relpath(s.image_path, data)]}) for s in studies]
    save_dataset(data, rel[:20])
    out = tmp_path / "idx"
    assert cli.main(["build", "--run", str(tmp_path / "run"), "--out", str(out), "--data", str(data), "--batch-size", "8",
                     "--backbone-path", str(tmp_path / "weights")]) == 0
    assert read_manifest(out).count == 20
    assert loaded == [str(tmp_path / "weights")]  # a run on local weights is indexed with them (no hub)
    save_dataset(data, rel)  # 10 new studies appear
    assert cli.main(["add", "--index", str(out), "--data", str(data)]) == 0
    assert read_manifest(out).count == 30
    assert cli.main(["add", "--index", str(out), "--data", str(data)]) == 0  # nothing new: no-op
    assert read_manifest(out).count == 30
    engine = SearchEngine.load(out, encoder)
    assert {"familiarity.safetensors", "frozen_images.npy"} <= set(read_manifest(out).files)  # the one builder's artifacts
    query = encoder.embed_images([Image.open(studies[25].image_path)])[0]  # noise images: no familiarity verdict
    assert engine.search_by_image_vector(query, k=1).hits[0].study_id == "S25"


# --------------------------------------------------------------------------- integrity
@pytest.mark.parametrize("field", ["backbone_id", "head_checksum"])
def test_other_model_raises_mismatch_and_leaves_index_loadable(built, field):
    index_dir = built[0]
    before = digests(index_dir)
    other = FakeEncoder(**{field: "something-else"})
    with pytest.raises(IndexMismatchError) as info:
        SearchEngine.load(index_dir, other)
    message = str(info.value)
    assert "something-else" in message
    assert ("fake-backbone" if field == "backbone_id" else "head-1") in message
    assert digests(index_dir) == before
    assert SearchEngine.load(index_dir, FakeEncoder()).count == 600


def test_other_embed_dim_raises_mismatch(built):
    with pytest.raises(IndexMismatchError, match="dim"):
        SearchEngine.load(built[0], FakeEncoder(embed_dim=DIM * 2))


def test_truncated_index_file_raises_corrupt_and_good_copy_is_untouched(built, encoder, tmp_path):
    good = built[0]
    before = digests(good)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    size = (bad / IMAGES).stat().st_size
    with open(bad / IMAGES, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(IndexCorruptError) as info:
        SearchEngine.load(bad, encoder)
    assert IMAGES in str(info.value) and "truncated" in str(info.value)
    assert digests(good) == before
    assert SearchEngine.load(good, encoder).count == 600


def test_altered_bytes_of_same_size_raise_corrupt(built, encoder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(built[0], bad)
    data = bytearray((bad / META).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / META).write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="sha256"):
        SearchEngine.load(bad, encoder)
    (bad / "manifest.json").write_text("{ not json")
    with pytest.raises(IndexCorruptError, match="not valid JSON"):
        SearchEngine.load(bad, encoder)


def test_failed_save_leaves_previous_index_loadable(built, encoder, monkeypatch):
    index_dir, studies, image_emb, report_emb, queries = built
    before = digests(index_dir)
    expected = SearchEngine.load(index_dir, encoder).search_by_image_vector(queries[0], k=10).study_ids

    def fail_after_partial_write(folder, manifest, *extra_files):
        (folder / "manifest.json").write_text('{"partial": ')  # half-written, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(build_module, "write_manifest", fail_after_partial_write)
    new_studies = make_studies(10, start=600)
    new_emb, _ = vectors(10, seed=9)
    with pytest.raises(OSError, match="disk full"):
        build_index(index_dir, new_emb, new_emb, new_studies, identity(encoder))
    with pytest.raises(OSError, match="disk full"):
        add_studies(index_dir, new_emb, new_emb, new_studies)
    assert digests(index_dir) == before
    assert [p.name for p in index_dir.parent.iterdir() if "staging" in p.name] == []
    engine = SearchEngine.load(index_dir, encoder)
    assert engine.count == 600
    assert engine.search_by_image_vector(queries[0], k=10).study_ids == expected


def test_killed_between_renames_recovers_previous_index(built, encoder):
    """A real kill (os._exit) after the live folder was moved aside but before the new one
    took its place: the next load puts the previous index back."""
    index_dir = built[0]
    before = digests(index_dir)
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        from index import manifest
        from index.build import build_index
        from data.records import Study
        real_rename = os.rename
        calls = []
        def rename(src, dst):
            real_rename(src, dst)
            calls.append(dst)
            if len(calls) == 1:  # live folder moved aside: die before the staging folder moves in
                os._exit(9)
        manifest.os.rename = rename
        emb = np.random.default_rng(0).standard_normal((5, {DIM})).astype(np.float32)
        studies = [Study(f"N{{i}}", "p", ("x.png",), "f", "i", 0) for i in range(5)]
        build_index({str(index_dir)!r}, emb, emb,  studies,
                    {{"backbone_id": "fake-backbone", "head_checksum": "head-1", "embed_dim": {DIM}}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert not index_dir.exists()  # the kill really happened between the two renames
    engine = SearchEngine.load(index_dir, encoder)
    assert engine.count == 600
    assert digests(index_dir) == before
    # The next save cleans the abandoned staging folder and publishes normally.
    emb, _ = vectors(5, seed=1)
    build_index(index_dir, emb, emb, make_studies(5), identity(encoder))
    assert SearchEngine.load(index_dir, encoder).count == 5
    assert [p.name for p in index_dir.parent.iterdir() if p.name.startswith(".idx.")] == [".idx.lock"]


# --------------------------------------------------------------------------- growth
def test_add_studies_grows_index_and_new_items_are_findable(built, encoder):
    index_dir, studies, image_emb, report_emb, queries = built
    new = make_studies(80, start=600)
    new_img, _ = vectors(80, seed=21)
    new_rep, _ = vectors(80, seed=22)
    manifest = add_studies(index_dir, new_img, new_rep, new, identity=identity(encoder))
    assert manifest.count == 680 and read_manifest(index_dir).count == 680
    engine = SearchEngine.load(index_dir, encoder, exact_threshold=0)
    assert engine.count == 680
    for i in (0, 41, 79):
        hit = engine.search_by_image_vector(new_img[i], k=5).hits[0]
        assert (hit.rank, hit.study_id) == (1, f"S{600 + i}")
        assert hit.score == pytest.approx(1.0, abs=1e-5)
        assert engine.search_by_image_vector(new_rep[i], k=1, target="reports").hits[0].study_id == f"S{600 + i}"
    assert engine.search_by_image_vector(image_emb[7], k=1).hits[0].study_id == "S7"  # old rows intact
    assert engine.search_by_image_vector(new_img[3], k=5, filters={"view": new[3].view}).hits[0].study_id == "S603"
    with pytest.raises(ValueError, match="already"):
        add_studies(index_dir, new_img[:1], new_rep[:1], new[:1])
    with pytest.raises(IndexMismatchError):
        add_studies(index_dir, new_img[:1], new_rep[:1], make_studies(1, start=999), identity={**identity(encoder), "head_checksum": "x"})
    assert SearchEngine.load(index_dir, encoder).count == 680
