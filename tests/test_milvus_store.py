"""Milvus backend (index.milvus_store via index.vector_store) on a Milvus Lite file.

Recall@10 of IVF against exact search, filters pushed down to Milvus (every hit passes them and
the filtered top-10 matches exact filtered search), another model's vectors refused, a folder that
disagrees with its collections refused, and ``index add`` through the one builder. The app's
features on Milvus against the hnswlib folder: ``tests/test_parity.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from data.records import Study  # noqa: E402
from index.ann import exact_top_k, normalise  # noqa: E402
from index.manifest import IndexMismatchError  # noqa: E402
from index.build import add_studies, build_index  # noqa: E402
from index.engine import SearchEngine  # noqa: E402
from index.filters import Filters  # noqa: E402
from index.manifest import IndexCorruptError, read_manifest  # noqa: E402
from index.milvus_store import MilvusVectorStore  # noqa: E402
from index.vector_store import artifacts_dir  # noqa: E402

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
    build_index(spec, x, x[::-1].copy(), studies, IDENTITY)
    store = MilvusVectorStore.open(spec, read_manifest(artifacts_dir(spec)))
    yield spec, store, x, studies
    store.close()


class Identity:
    """What ``SearchEngine.load`` reads of an encoder to check the index's model."""

    def __init__(self, **identity):
        self.__dict__.update(identity)


def test_recall_at_10_against_exact(milvus):
    _, store, x, _ = milvus
    queries = normalise(x[:200] + 0.05 * np.random.default_rng(1).standard_normal((200, DIM)))
    found = store.search("images", queries, K, Filters(), None)
    truth = exact_top_k(x, queries, K).ids
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found.ids, truth)])
    assert recall >= 0.98, recall
    assert np.allclose(found.scores[:, 0], np.sum(queries * x[found.ids[:, 0]], axis=1), atol=1e-4)


def test_filters_are_pushed_down_and_hold(milvus):
    _, store, x, studies = milvus
    queries = x[1000:1050]
    for label, view, finding in ((1, None, None), (None, "lateral", None), (0, "PA", "effusion")):
        found = store.search("images", queries, K, Filters(label, view, finding), None)
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
            SearchEngine.load(spec, Identity(**other))


def test_sidecar_folder_holds_the_artifacts_and_must_agree_with_the_collections(tmp_path):
    import shutil

    x, studies = _collection(60, DIM, seed=2)
    spec = f"milvus://{tmp_path}/small.db#tiny"
    build_index(spec, x[:50], x[:50], studies[:50], IDENTITY)
    folder = artifacts_dir(spec)
    assert folder == tmp_path / "small.db.artifacts" / "tiny" and (folder / "manifest.json").is_file()
    from data.paths import cache_root

    assert artifacts_dir("milvus://localhost:19530#x") == cache_root() / "milvus" / "localhost_19530" / "x"  # a server
    shutil.copytree(folder, tmp_path / "before-add")
    manifest = add_studies(spec, x[50:], x[50:], studies[50:], identity=IDENTITY)  # index add, same builder
    engine = SearchEngine.load(spec, None, exact_threshold=0)  # Milvus answers, not the engine's exact search
    assert manifest.count == engine.count == 60 and manifest.store == "milvus"
    hits = engine.search_by_image_vector(x[55], k=1, exact=False)
    assert hits.study_ids == ["s55"] and engine.vectors("images").shape == (60, DIM)
    engine.close()
    shutil.rmtree(folder)
    shutil.copytree(tmp_path / "before-add", folder)  # the folder of before the add, the collections of after
    with pytest.raises(IndexCorruptError, match="interrupted"):
        SearchEngine.load(spec, None)
