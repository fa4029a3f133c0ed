"""Issue 26: hnsw's ef is chosen from measured recall at build and at ``index add``, recorded in
the manifest and shown by ``python -m index info``; the graph keeps labels 0..n-1."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench.search import clustered_gallery, recall_at_k
from index.ann import DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswIndex, exact_top_k
from index.build import add_studies, build_index
from index.ef_tuning import EF_GRID, TARGET_RECALL, measured_recall, build_tuned, kth_exact_score
from index.manifest import read_manifest
from tests.test_index import FakeEncoder, identity, make_studies


@pytest.fixture(scope="module")
def hard_gallery():
    """Many members per cluster in 96-d: a fixed small ef misses neighbours here."""
    return clustered_gallery(6000, 300, 96, n_clusters=3, seed=7)


def test_chosen_ef_reaches_the_target_on_fresh_queries_where_a_small_one_does_not(hard_gallery):
    gallery, queries = hard_gallery
    graph, choice = build_tuned(gallery, DEFAULT_M, DEFAULT_EF_CONSTRUCTION)
    truth = exact_top_k(gallery, queries, 10).ids
    assert choice.reached and choice.ef in EF_GRID and choice.recall_at_10["held_out"] >= TARGET_RECALL
    below = [row for row in choice.sweep if row["ef"] < choice.ef]
    assert below and all(row["held_out"] < TARGET_RECALL for row in below)  # the smallest that reaches it
    graph.set_ef(EF_GRID[0])
    small = recall_at_k(np.concatenate([graph.search(q, 10).ids for q in queries]), truth)
    graph.set_ef(choice.ef)
    tuned = recall_at_k(np.concatenate([graph.search(q, 10).ids for q in queries]), truth)
    assert small < 0.95 and tuned >= 0.97 and tuned > small  # fresh queries, never seen by the tuning
    assert len(graph) == len(gallery)
    np.testing.assert_allclose(graph.vectors(), gallery, atol=1e-6)  # held-out rows went in under their labels


def test_recall_counts_tied_duplicates_as_found():
    rng = np.random.default_rng(0)
    unique = rng.standard_normal((300, 16)).astype(np.float32)
    gallery = np.concatenate([np.repeat(unique[:1], 200, axis=0), unique[1:]])  # 200 identical "normal" reports
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    graph = HnswIndex.create(gallery)
    graph.set_ef(64)
    queries = gallery[:5]
    assert measured_recall(graph, queries, kth_exact_score(gallery, queries, 10), 10) == 1.0


def test_build_and_add_record_the_choice_and_index_info_shows_it(tmp_path, hard_gallery, capsys):
    from index import __main__ as cli

    gallery, _ = hard_gallery
    enc = FakeEncoder(embed_dim=gallery.shape[1])
    studies = make_studies(len(gallery))
    folder = tmp_path / "idx"
    build_index(folder, gallery[:5000], gallery[:5000], studies[:5000], identity(enc))
    built = read_manifest(folder)
    assert built.ef == built.ef_tuning["ef"] and built.ef_tuning["chosen_by"].startswith("measured")
    for graph in built.ef_tuning["graphs"].values():
        assert graph["reached"] and min(graph["recall_at_10"].values()) >= TARGET_RECALL and graph["ef"] <= built.ef
    grown = add_studies(folder, gallery[5000:], gallery[5000:], studies[5000:], identity(enc))
    assert grown.count == 6000 and "index add" in grown.ef_tuning["chosen_by"]
    assert all("held_out" in g["recall_at_10"] for g in grown.ef_tuning["graphs"].values())
    assert cli.main(["info", "--index", str(folder)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ef_tuning"] == grown.ef_tuning and shown["hnsw"]["ef"] == grown.ef
    from index.engine import SearchEngine

    engine = SearchEngine.load(folder, enc, exact_threshold=0)  # the graph, not the exact fallback
    assert engine.search_by_image_vector(gallery[5500], k=1).study_ids == [studies[5500].study_id]


def test_a_given_ef_is_kept_and_its_recall_measured(tmp_path, hard_gallery):
    gallery, _ = hard_gallery
    enc = FakeEncoder(embed_dim=gallery.shape[1])
    build_index(tmp_path / "idx", gallery, gallery, make_studies(len(gallery)), identity(enc), ef=24)
    manifest = read_manifest(tmp_path / "idx")
    assert manifest.ef == 24 and manifest.ef_tuning["chosen_by"].startswith("given")
    assert all(0 < g["recall_at_10"]["held_out"] < 1 for g in manifest.ef_tuning["graphs"].values())
