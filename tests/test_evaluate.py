"""Retrieval metrics on tiny hand-built similarity matrices with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.tables import evaluate_embeddings, per_query_metrics, summarize
from model.embedding_map import place_query

# 4 queries × 4 gallery items; query i is paired with item i. Labels: 0 0 1 1.
SIM = np.array([
    [0.9, 0.8, 0.1, 0.0],   # pair at rank 1; ranking 0,1,2,3 -> labels 0,0,1,1
    [0.9, 0.2, 0.8, 0.1],   # pair (1) at rank 3; ranking 0,2,1,3 -> labels 0,1,0,1
    [0.1, 0.2, 0.3, 0.9],   # pair (2) at rank 2; ranking 3,2,1,0 -> labels 1,1,0,0
    [0.5, 0.6, 0.7, 0.4],   # pair (3) at rank 4; ranking 2,1,0,3 -> labels 1,0,0,1
])
LABELS = np.array([0, 0, 1, 1])


def test_recall_at_k_and_mrr():
    m = per_query_metrics(SIM, LABELS, LABELS)
    assert m["R@1"].tolist() == [1, 0, 0, 0]
    assert m["R@5"].tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(m["MRR"], [1, 1 / 3, 1 / 2, 1 / 4])


def test_class_aware_precision():
    m = per_query_metrics(SIM, LABELS, LABELS)
    assert m["P@1"].tolist() == [1, 1, 1, 1]
    # K=10 > gallery size: precision over the whole ranking = 2 of 4 same-label items.
    assert m["P@10"].tolist() == [0.5, 0.5, 0.5, 0.5]


def test_class_aware_map_by_hand():
    m = per_query_metrics(SIM, LABELS, LABELS)
    # AP = mean over relevant items of precision at their rank.
    expected = [
        (1 / 1 + 2 / 2) / 2,   # relevant at ranks 1, 2
        (1 / 1 + 2 / 3) / 2,   # relevant at ranks 1, 3
        (1 / 1 + 2 / 2) / 2,   # relevant at ranks 1, 2
        (1 / 1 + 2 / 4) / 2,   # relevant at ranks 1, 4
    ]
    np.testing.assert_allclose(m["mAP"], expected)


def test_image_to_image_excludes_the_query_itself():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    m = per_query_metrics(emb @ emb.T, LABELS, LABELS, paired=False)
    assert "R@1" not in m
    assert m["P@1"].tolist() == [1, 1, 1, 1]  # nearest other item shares the label
    np.testing.assert_allclose(m["mAP"], [1, 1, 1, 1])
    np.testing.assert_allclose(m["P@10"], [1 / 3] * 4)  # 1 same-label item among the 3 others


def test_summary_bootstrap_interval_brackets_the_mean():
    values = {"R@1": np.array([1.0, 0.0] * 50)}
    s = summarize(values, n_bootstrap=500)
    assert s["R@1"] == pytest.approx(0.5)
    lo, hi = s["ci95"]["R@1"]
    assert lo < 0.5 < hi and hi - lo < 0.3


def test_perfect_embeddings_score_one():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    r = evaluate_embeddings(emb, emb, np.arange(20) % 2, n_bootstrap=0)
    assert r["i2t"]["R@1"] == 1.0 and r["t2i"]["R@1"] == 1.0
    assert set(r) == {"i2t", "t2i", "i2i"}


def test_query_lands_near_its_neighbours_in_a_map():
    gallery = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], dtype=np.float32)
    coords = np.array([[-5, 0], [-4, 0], [5, 0], [4, 0]], dtype=np.float32)
    x, _ = place_query(np.array([0.98, 0.2]), gallery, coords, k=2)
    assert -5 <= x <= -4


def test_ranking_average_precision_equals_scikit_learn_with_ties():
    """The vectorised per-query AP is sklearn's label-ranking AP, ties (rounded scores) included."""
    from sklearn.metrics import label_ranking_average_precision_score

    from evaluation.tables import ranking_average_precision

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(300, 40)), 1)  # many ties
    relevant = rng.random((300, 40)) < rng.random((300, 1))
    relevant[0], relevant[1] = False, True  # nothing relevant (0 here), everything relevant (1)
    ours = ranking_average_precision(relevant, scores, rows_per_block=7)
    expected = [label_ranking_average_precision_score(relevant[i:i + 1], scores[i:i + 1]) if relevant[i].any() else 0.0
                for i in range(len(scores))]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    assert ours[0] == 0.0 and ours[1] == 1.0
