"""Graded metrics, chance and ceiling on hand-built cases (incl. ties), checked by enumeration."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from data.findings import Finding, profile, relevance, shares_finding
from evaluation.tables import evaluate_embeddings, reference_rows
from evaluation.relevance_metrics import (ceiling_per_query, chance_per_query, encode_profiles, expected_ap_random,
                                     ndcg_at_k, ndcg_ir_measures, paired_bootstrap_diff, relevance_and_shares,
                                     relevance_matrix, shares_matrix)

EFF_L = {"pleural effusion": frozenset({"left"})}
EFF_R = {"pleural effusion": frozenset({"right"})}
EFF_B = {"pleural effusion": frozenset({"left", "right"})}
EFF_U = {"pleural effusion": frozenset()}
CARDIO = {"cardiomegaly": frozenset()}
NORMAL: dict = {}


def _random_profiles(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    names = ["pleural effusion", "cardiomegaly", "opacity", "nodule"]
    sides = [frozenset(), frozenset({"left"}), frozenset({"right"}), frozenset({"left", "right"})]
    out = []
    for _ in range(n):
        k = rng.integers(0, 3)
        out.append({str(nm): sides[rng.integers(0, 4)] for nm in rng.choice(names, size=k, replace=False)})
    return out


def test_vectorised_relevance_equals_the_reference_pair_by_pair():
    profiles = _random_profiles(40, seed=1) + [NORMAL, EFF_L, EFF_R, EFF_B, EFF_U]
    codes, _ = encode_profiles(profiles)
    rel, sh = relevance_matrix(codes, codes), shares_matrix(codes, codes)
    for i, a in enumerate(profiles):
        for j, b in enumerate(profiles):
            assert rel[i, j] == pytest.approx(relevance(a, b))
            assert bool(sh[i, j]) == shares_finding(a, b)
    both = relevance_and_shares(codes, codes)  # evaluation's one pass gives the same two matrices
    assert np.array_equal(both[0], rel) and np.array_equal(both[1], sh)
    # the documented grades: same side 1, unknown/overlap 0.5, opposite 0.25, normal-normal 1, normal-abnormal 0
    i = {k: len(profiles) - 5 + n for n, k in enumerate(["N", "L", "R", "B", "U"])}
    assert rel[i["L"], i["L"]] == 1 and rel[i["L"], i["B"]] == 0.5 and rel[i["L"], i["U"]] == 0.5
    assert rel[i["L"], i["R"]] == 0.25 and not sh[i["L"], i["R"]]
    assert rel[i["N"], i["N"]] == 1 and rel[i["N"], i["L"]] == 0


def test_ndcg_hand_computed_and_equal_to_ir_measures():
    gains = np.array([[1.0, 0.5, 0.25, 0.0, 1 / 3]])
    order = np.array([[3, 1, 0, 4, 2]])
    disc = [1 / math.log2(r + 2) for r in range(5)]
    dcg = 0 * disc[0] + 0.5 * disc[1] + 1.0 * disc[2] + (1 / 3) * disc[3] + 0.25 * disc[4]
    idcg = 1.0 * disc[0] + 0.5 * disc[1] + (1 / 3) * disc[2] + 0.25 * disc[3]
    assert ndcg_at_k(order, gains, k=10)[0] == pytest.approx(dcg / idcg)
    assert ndcg_ir_measures(order, gains, k=10)[0] == pytest.approx(dcg / idcg, abs=1e-6)
    # k cuts both the ranking and the ideal list
    assert ndcg_at_k(order, gains, k=2)[0] == pytest.approx(0.5 * disc[1] / (disc[0] + 0.5 * disc[1]))
    # random rankings over random graded gains: the library and numpy agree query by query
    rng = np.random.default_rng(0)
    g = np.round(rng.random((30, 25)) * (rng.random((30, 25)) < 0.4), 3)
    o = np.argsort(rng.random((30, 25)), axis=1)
    np.testing.assert_allclose(ndcg_ir_measures(o, g), ndcg_at_k(o, g), atol=1e-6)
    # a query with nothing relevant scores 0 in both
    assert ndcg_at_k(o[:1], np.zeros((1, 25)))[0] == 0 == ndcg_ir_measures(o[:1], np.zeros((1, 25)))[0]


def _enumerate_random(rel_row, shares_row, label_row, k):
    """Exact expectation over all permutations of a tiny gallery (brute force)."""
    n = len(rel_row)
    vals = {"P@k": [], "fP@k": [], "nDCG": [], "AP": [], "R@1": [], "MRR": []}
    for perm in itertools.permutations(range(n)):
        order = np.array([perm])
        vals["P@k"].append(label_row[list(perm[:k])].mean())
        vals["fP@k"].append(shares_row[list(perm[:k])].mean())
        vals["nDCG"].append(ndcg_at_k(order, rel_row[None], k)[0])
        hits = label_row[list(perm)].astype(float)
        vals["AP"].append((np.cumsum(hits) / np.arange(1, n + 1) * hits).sum() / hits.sum())
        vals["R@1"].append(float(perm[0] == 0))
        vals["MRR"].append(1.0 / (perm.index(0) + 1))
    return {key: float(np.mean(v)) for key, v in vals.items()}


def test_chance_is_the_exact_expectation_over_all_permutations():
    profiles = [EFF_L, EFF_L, EFF_R, CARDIO, NORMAL, EFF_B]  # query = study 0 (its pair is gallery 0)
    labels = np.array([1, 1, 1, 1, 0, 1])
    codes, _ = encode_profiles(profiles)
    rel, sh = relevance_matrix(codes, codes), shares_matrix(codes, codes)
    same = labels[:, None] == labels[None, :]
    cand = np.ones_like(same)
    k = 3
    chance = chance_per_query(rel, sh, same, cand, paired=True, k=k)
    brute = _enumerate_random(rel[0], sh[0].astype(float), same[0].astype(float), k)
    assert chance["P@1"][0] == pytest.approx(5 / 6)
    assert chance[f"finding_P@{k}"][0] == pytest.approx(brute["fP@k"])
    assert chance[f"nDCG@{k}"][0] == pytest.approx(brute["nDCG"])
    assert chance["mAP"][0] == pytest.approx(brute["AP"])
    assert chance["R@1"][0] == pytest.approx(brute["R@1"]) == pytest.approx(1 / 6)
    assert chance["MRR"][0] == pytest.approx(brute["MRR"])
    assert expected_ap_random(np.array([0]), 6)[0] == 0


def test_ceiling_with_ties_is_averaged_over_the_tie_breaking():
    # query 0 = left effusion; two other studies have the very same findings (a tie of 3 with the pair)
    profiles = [EFF_L, EFF_L, EFF_L, EFF_B, EFF_R, NORMAL, CARDIO]
    labels = np.array([1, 1, 1, 1, 1, 0, 1])
    codes, _ = encode_profiles(profiles)
    rel, sh = relevance_matrix(codes, codes), shares_matrix(codes, codes)
    same = labels[:, None] == labels[None, :]
    cand = np.ones_like(same)
    ceil = ceiling_per_query(rel, sh, same, cand, paired=True, k=4)
    assert ceil["R@1"][0] == pytest.approx(1 / 3)  # the oracle cannot tell the 3 identical studies apart
    assert ceil["R@5"][0] == 1.0
    assert ceil["MRR"][0] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert ceil["nDCG@4"][0] == 1.0
    # oracle order: 3 x L (rel 1), B (0.5), R (0.25), cardio (0, abnormal), normal: top 4 all share but ...
    assert ceil["finding_P@4"][0] == 1.0
    assert ceil["P@5"][0] == 1.0 and ceil["mAP"][0] == 1.0
    # tie straddling the cut-off: query = normal; the 1 other normal ties with nothing, then 5 abnormal at rel 0
    ceil_n = ceiling_per_query(rel, sh, same, cand, paired=True, k=2)
    assert ceil_n["finding_P@2"][5] == pytest.approx(0.5)  # pair (normal) then an abnormal
    # cardio query: rel 1 only to itself; the other 5 abnormal tie at rel 0 (label match), normal last
    ceil_c = ceiling_per_query(rel, sh, same, cand, paired=True, k=2)
    assert ceil_c["finding_P@2"][6] == pytest.approx(0.5)


def test_reference_rows_and_graded_keys_in_evaluate_embeddings():
    rng = np.random.default_rng(3)
    profiles = _random_profiles(30, seed=4)
    labels = np.array([int(bool(p)) for p in profiles])
    codes, _ = encode_profiles(profiles)
    emb = rng.normal(size=(30, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    rep = evaluate_embeddings(emb, emb, labels, n_bootstrap=0, codes=codes)
    assert set(rep) == {"i2t", "t2i", "i2i"}
    for d in rep.values():
        assert {"nDCG@10", "finding_P@10", "P@10", "mAP"} <= set(d)
    # identical towers: the pair is always first, so R@1 = 1 and nDCG@10 > chance
    refs = reference_rows(labels, codes)
    assert rep["i2t"]["R@1"] == 1.0
    assert refs["chance"]["i2t"]["R@10"] == pytest.approx(10 / 30)
    assert refs["chance"]["i2i"]["finding_P@10"] < refs["ceiling"]["i2i"]["finding_P@10"] <= 1.0
    for d in ("i2t", "t2i", "i2i"):
        assert refs["ceiling"][d]["nDCG@10"] == 1.0
        assert refs["chance"][d]["nDCG@10"] < rep[d]["nDCG@10"] + 0.5


def test_paired_bootstrap_difference():
    a = np.array([1.0, 1.0, 0.0, 1.0])
    b = np.array([0.0, 1.0, 0.0, 0.0])
    out = paired_bootstrap_diff(a, b, n_bootstrap=500)
    assert out["diff"] == pytest.approx(0.5)
    assert 0.0 <= out["ci95"][0] <= 0.5 <= out["ci95"][1] <= 1.0


def test_profiles_from_findings_encode_like_the_study_profile():
    findings = (Finding("pleural effusion", "left", severity="mild"), Finding("cardiomegaly"))
    codes, names = encode_profiles([profile(findings)])
    assert names == ["cardiomegaly", "pleural effusion"]
    assert codes.tolist() == [[1, 3]]
