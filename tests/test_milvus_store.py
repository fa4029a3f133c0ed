"""Milvus backend (index.milvus_store via index.vector_store) on a Milvus Lite file.

Recall@10 against exact search, filters pushed down to Milvus (every hit passes them and
the filtered top-10 matches exact filtered search), another model's vectors refused, and
the app's engine over ``milvus://`` answering like the hnswlib folder on the small demo.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from data.records import Study  # noqa: E402
from index.ann import exact_top_k, normalise  # noqa: E402
from index.manifest import IndexMismatchError  # noqa: E402
from index.vector_store import build_store, open_engine, open_store  # noqa: E402

N, DIM, K = 20_000, 64, 10
IDENTITY = {"backbone_id": "test-backbone", "head_checksum": "abc123", "embed_dim": DIM}
FINDINGS = ("cardiomegaly", "effusion", "nodule")


def _collection(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[Study]]:
    """Clustered unit vectors (like real embeddings) and studies with labels, views and findings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim))
    x = normalise(centres[rng.integers(0, 64, n)] + 0.6 * rng.standard_normal((n, dim)))
    studies = [
        Study(study_id=f"s{i}", patient_id=f"p{i}", image_paths=(f"/data/{i}.png",), findings=f"finding {i}",
              impression="", label=int(i % 2), view=("PA", "AP", "LATERAL")[i % 3],
              tags=(FINDINGS[i % 5].title(),) if i % 5 < 3 else ())
        for i in range(n)
    ]
    return x, studies


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    x, studies = _collection(N, DIM)
    spec = f"milvus://{tmp_path_factory.mktemp('milvus')}/test.db#synthetic"
    build_store(spec, x, x[::-1].copy(), studies, IDENTITY)
    store = open_store(spec, IDENTITY)
    yield spec, store, x, studies
    store.close()


def test_recall_at_10_against_exact(milvus):
    _, store, x, _ = milvus
    queries = normalise(x[:200] + 0.05 * np.random.default_rng(1).standard_normal((200, DIM)))
    found = store.search("images", queries, K)
    truth = exact_top_k(x, queries, K).ids
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found.ids, truth)])
    assert recall >= 0.98, recall
    assert np.allclose(found.scores[:, 0], np.sum(queries * x[found.ids[:, 0]], axis=1), atol=1e-4)


def test_filters_are_pushed_down_and_hold(milvus):
    _, store, x, studies = milvus
    queries = x[1000:1050]
    for label, view, finding in ((1, None, None), (None, "lateral", None), (0, "PA", "effusion")):
        found = store.search("images", queries, K, label=label, view=view, finding=finding)
        allowed = np.array([i for i, s in enumerate(studies)
                            if (label is None or s.label == label) and (view is None or s.view == view.upper())
                            and (finding is None or finding in s.finding_names)])
        assert np.isin(found.ids, allowed).all()
        truth = exact_top_k(x[allowed], queries, K, ids=allowed).ids
        recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found.ids, truth)])
        assert recall >= 0.98, (label, view, finding, recall)


def test_another_models_vectors_are_refused(milvus):
    spec, _, _, _ = milvus
    for other in ({**IDENTITY, "head_checksum": "another-head"}, {**IDENTITY, "backbone_id": "clip"},
                  {**IDENTITY, "embed_dim": 128}):
        with pytest.raises(IndexMismatchError):
            open_store(spec, other)


def test_app_engine_on_milvus_matches_the_hnswlib_folder(small_demo, model, tmp_path):
    from index.build import encoder_identity
    from index.engine import SearchEngine
    from index.store import MetadataStore

    _, _, index_dir = small_demo
    folder = SearchEngine.load(index_dir, model)
    studies = [m.study for m in folder.store.all()]
    spec = f"milvus://{tmp_path}/demo.db#demo"
    build_store(spec, folder.vectors("images"), folder.vectors("reports"), studies, encoder_identity(model),
                data_root=folder.data_root)
    engine = open_engine(spec, model)
    try:
        for text in ("cardiomegaly", "no acute cardiopulmonary abnormality", "left pleural effusion"):
            for filters in (None, {"label": "abnormal"}, {"finding": "pleural effusion", "side": "left"},
                            {"finding": "pleural effusion", "side": "bilateral"}):
                mine, theirs = engine.search_by_text(text, 10, filters), folder.search_by_text(text, 10, filters)
                assert mine.study_ids == theirs.study_ids
                assert np.allclose([h.score for h in mine], [h.score for h in theirs], atol=1e-4)
                assert mine.hits[0].image_path == theirs.hits[0].image_path
        assert isinstance(engine.store, MetadataStore) and engine.views() == folder.views()
    finally:
        engine.milvus.close()
    other = type(model).__new__(type(model))
    other.__dict__.update(model.__dict__, head_checksum="not-this-head")
    with pytest.raises(IndexMismatchError):
        open_engine(spec, other)
