"""Graded (findings-level) retrieval metrics, with the chance and ceiling of every number.

Why: the binary normal/abnormal metrics cannot see whether a hit shows the *same finding on the
same side*; a random ranking already scores P@10 ~ 0.54 on them. Here relevance between two
studies is :func:`data.findings.relevance` (graded weighted Jaccard over (finding, side)) and:

- ``nDCG@10``: linear gains = graded relevance, log2 discount, ideal = every candidate sorted by
  relevance. Reported values come from ``ir_measures`` (trec_eval's ``ndcg_cut``);
  :func:`ndcg_at_k` is the same formula in numpy for early stopping (tests check they agree).
- ``finding_P@10``: share of the top 10 that :func:`data.findings.shares_finding` with the query.

Every direction also gets, over the same queries and candidates,
- ``chance``: the exact expectation under a uniformly random ranking;
- ``ceiling``: the expectation for the oracle ranking by true relevance (then by the binary label),
  ties broken uniformly at random. R@K's ceiling is below 1 wherever other studies have the same
  findings as the pair: the oracle cannot tell them apart.

Profiles are encoded once as small integer codes (:func:`encode_profiles`) so that an N x M
relevance matrix is a few vectorised numpy operations (:func:`relevance_matrix`), exactly
equal to :func:`data.findings.relevance` pair by pair.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from data.findings import LEFT, RIGHT, Profile

K = 10
_PRESENT, _LEFT, _RIGHT = 1, 2, 4


def encode_profiles(profiles: Sequence[Profile], names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(N, F) uint8 codes: bit 1 = finding present, bit 2 = on the left, bit 4 = on the right.

    ``names`` fixes the column order (pass the same list for queries and gallery); by default the
    sorted union of the names in ``profiles``. Names outside ``names`` raise, so none is dropped.
    """
    if names is None:
        names = sorted({n for p in profiles for n in p})
    col = {n: j for j, n in enumerate(names)}
    codes = np.zeros((len(profiles), len(names)), dtype=np.uint8)
    for i, p in enumerate(profiles):
        for name, sides in p.items():
            codes[i, col[name]] = _PRESENT | (_LEFT if LEFT in sides else 0) | (_RIGHT if RIGHT in sides else 0)
    return codes, list(names)


# Credit of a shared finding by the two sides' bits (0 unknown, 1 left, 2 right, 3 both), as
# :func:`data.findings.relevance`: same side 1, one side unknown or overlapping 0.5, opposite sides 0.25.
_SIDE_CREDIT = np.array([[1.0 if sa == sb else 0.5 if (sa == 0 or sb == 0 or sa & sb) else 0.25 for sb in range(4)]
                         for sa in range(4)])


def _pair_sums(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(credit sum, union count, shares a finding at credit >= 0.5) of every (a_i, b_j) pair.

    One finding at a time over the pairs that both have it: profiles are sparse (a study has a few of
    the F findings), so this touches a small part of the N x M x F cube the formula is written on.
    Credits are multiples of 1/4, so the sums are exact in any order.
    """
    a, b = np.asarray(a), np.asarray(b)
    total = np.zeros((len(a), len(b)))
    n_shared = np.zeros((len(a), len(b)), dtype=np.int32)
    shares = np.zeros((len(a), len(b)), dtype=bool)
    for f in range(a.shape[1]):
        ia, ib = np.flatnonzero(a[:, f] & _PRESENT), np.flatnonzero(b[:, f] & _PRESENT)
        if not len(ia) or not len(ib):
            continue
        credit = _SIDE_CREDIT[(a[ia, f] >> 1)[:, None], (b[ib, f] >> 1)[None, :]]
        block = np.ix_(ia, ib)
        total[block] += credit
        n_shared[block] += 1
        shares[block] |= credit >= 0.5
    present_a, present_b = (a & _PRESENT).astype(bool).sum(axis=1), (b & _PRESENT).astype(bool).sum(axis=1)
    union = present_a[:, None] + present_b[None, :] - n_shared
    shares |= (present_a == 0)[:, None] & (present_b == 0)[None, :]  # two normal studies share "no finding"
    return total, union, shares


def relevance_and_shares(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`relevance_matrix`, :func:`shares_matrix`) from one pass over the pairs (evaluation needs both)."""
    total, union, shares = _pair_sums(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, 1.0, total / np.maximum(union, 1)), shares


def relevance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Graded relevance of every (a_i, b_j) pair: :func:`data.findings.relevance`, vectorised."""
    return relevance_and_shares(a, b)[0]


def shares_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`data.findings.shares_finding` for every (a_i, b_j) pair, vectorised."""
    return _pair_sums(a, b)[2]


# ----------------------------------------------------------------------------- per query

def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(order: np.ndarray, gains: np.ndarray, k: int = K, candidates: np.ndarray | None = None) -> np.ndarray:
    """nDCG@k per query of a ranking ``order`` (n_q, >=k gallery indices) under ``gains`` (n_q, n_g).

    The ideal DCG sorts the gains of the ``candidates`` mask (default: every gallery item);
    a query with no positive gain scores 0.
    """
    k = min(k, order.shape[1])
    disc = _discounts(k)
    dcg = (np.take_along_axis(gains, order[:, :k], axis=1) * disc).sum(axis=1)
    g = gains if candidates is None else np.where(candidates, gains, 0.0)
    ideal = (-np.sort(-g, axis=1)[:, :k] * disc).sum(axis=1)
    return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)


def ndcg_ir_measures(order: np.ndarray, gains: np.ndarray, k: int = K, candidates: np.ndarray | None = None) -> np.ndarray:
    """nDCG@k per query computed by ``ir_measures`` (trec_eval ``ndcg_cut``) from the same ranking.

    trec_eval wants integer gains: graded relevance is scaled by 10^6 (nDCG is scale-free). The run
    lists each query's top k with strictly decreasing scores, so the library sees no ties and
    scores exactly our ranking. The judgments given are the ranked items' and the k largest gains:
    the ideal DCG@k reads only those, so the value is the same as with every judgment (thousands of
    Python objects fewer per query).
    """
    import ir_measures
    from ir_measures import nDCG

    n_q = order.shape[0]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for i in range(n_q):
        g = gains[i] if candidates is None else np.where(candidates[i], gains[i], 0.0)
        judged = np.union1d(order[i, :k], np.argpartition(-g, k)[:k] if len(g) > k else np.arange(len(g)))
        judged = judged[g[judged] > 0]
        if len(judged):
            qrels[str(i)] = dict(zip(map(str, judged.tolist()), np.rint(g[judged] * 1_000_000).astype(int).tolist()))
        run[str(i)] = {str(int(j)): float(k - r) for r, j in enumerate(order[i, :k])}
    out = np.zeros(n_q)
    for m in ir_measures.iter_calc([nDCG @ k], qrels, run):
        out[int(m.query_id)] = m.value
    return out  # queries without any relevant item stay 0, as in ndcg_at_k


def graded_per_query(
    order: np.ndarray, rel: np.ndarray, shares: np.ndarray, candidates: np.ndarray, k: int = K, use_library: bool = True
) -> dict[str, np.ndarray]:
    """nDCG@k and finding_P@k per query for a ranking ``order`` (candidates only, best first)."""
    fn = ndcg_ir_measures if use_library else ndcg_at_k
    top = order[:, :k]
    return {f"nDCG@{k}": fn(order, rel, k, candidates),
            f"finding_P@{k}": np.take_along_axis(shares, top, axis=1).mean(axis=1)}


# ----------------------------------------------------------------------------- chance and ceiling

def _harmonic(n: np.ndarray | int) -> np.ndarray:
    n = np.asarray(n)
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max()) + 1))])
    return table[n]


def expected_ap_random(n_relevant: np.ndarray, n: int) -> np.ndarray:
    """Exact E[AP] of a uniformly random ranking of n items with R relevant:
    (1/n) * (H_n + (R-1)/(n-1) * (n - H_n)); 0 when R = 0."""
    r = np.asarray(n_relevant, dtype=np.float64)
    h = float(_harmonic(n))
    val = (h + (r - 1) / max(n - 1, 1) * (n - h)) / n
    return np.where(r > 0, val, 0.0)


def chance_per_query(rel: np.ndarray, shares: np.ndarray, same_label: np.ndarray, candidates: np.ndarray,
                     paired: bool, k: int = K) -> dict[str, np.ndarray]:
    """Exact expectations under a uniformly random ranking of each query's candidates."""
    n = int(candidates[0].sum())
    kk = min(k, n)
    cand = candidates.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    n_q = rel.shape[0]
    if paired:
        for kr in (1, 5, 10):
            out[f"R@{kr}"] = np.full(n_q, min(kr, n) / n)
        out["MRR"] = np.full(n_q, float(_harmonic(n)) / n)
    p_label = (same_label * cand).sum(axis=1) / n
    for kr in (1, 5, 10):
        out[f"P@{kr}"] = p_label
    out["mAP"] = expected_ap_random((same_label & candidates).sum(axis=1), n)
    mean_gain = (rel * cand).sum(axis=1) / n
    g = np.where(candidates, rel, 0.0)
    ideal = (-np.sort(-g, axis=1)[:, :kk] * _discounts(kk)).sum(axis=1)
    out[f"nDCG@{k}"] = np.where(ideal > 0, mean_gain * _discounts(kk).sum() / np.where(ideal > 0, ideal, 1.0), 0.0)
    out[f"finding_P@{k}"] = (shares * cand).sum(axis=1) / n
    return out


def _tie_averaged_topk(sorted_keys: np.ndarray, sorted_values: np.ndarray, k: int) -> float:
    """Expected mean of the top-k values when items with equal keys are in random order."""
    _, starts, counts = np.unique(-sorted_keys, return_index=True, return_counts=True)
    group_mean = np.add.reduceat(sorted_values, starts) / counts
    per_position = np.repeat(group_mean, counts)
    return float(per_position[:k].mean())


def ceiling_per_query(rel: np.ndarray, shares: np.ndarray, same_label: np.ndarray, candidates: np.ndarray,
                      paired: bool, k: int = K) -> dict[str, np.ndarray]:
    """Expectations for the oracle ranking by (graded relevance, then same binary label), random ties.

    nDCG is 1 by construction (0 for a query with nothing relevant); P@K and AP do not depend on
    the order inside a tie (a tie shares its label); finding_P@K, R@K and MRR are averaged exactly
    over the tie-breaking.
    """
    n_q = rel.shape[0]
    key = np.round(rel, 9) * 2.0 + same_label  # rel in [0,1] dominates; label breaks rel ties
    key = np.where(candidates, key, -np.inf)
    out: dict[str, list[float]] = {}
    for i in range(n_q):
        order = np.argsort(-key[i], kind="stable")[: int(candidates[i].sum())]
        ks, lab = key[i, order], same_label[i, order].astype(np.float64)
        vals: dict[str, float] = {}
        if paired:
            greater, ties = int((ks > key[i, i]).sum()), int((ks == key[i, i]).sum())  # ties include the pair
            for kr in (1, 5, 10):
                vals[f"R@{kr}"] = float(np.clip(kr - greater, 0, ties)) / ties
            vals["MRR"] = float(_harmonic(greater + ties) - _harmonic(greater)) / ties
        for kr in (1, 5, 10):
            vals[f"P@{kr}"] = float(lab[:kr].mean())
        n_rel = lab.sum()
        vals["mAP"] = float((np.cumsum(lab) / np.arange(1, len(lab) + 1) * lab).sum() / n_rel) if n_rel else 0.0
        vals[f"nDCG@{k}"] = 1.0 if (rel[i][candidates[i]] > 0).any() else 0.0
        vals[f"finding_P@{k}"] = _tie_averaged_topk(ks, shares[i, order].astype(np.float64), k)
        for name, v in vals.items():
            out.setdefault(name, []).append(v)
    return {name: np.asarray(v) for name, v in out.items()}


# ----------------------------------------------------------------------------- comparisons

def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over the same queries and its paired bootstrap 95% interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(max(n_bootstrap, 1), len(d)))].mean(axis=1)
    return {"diff": float(d.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def mean_rows(per_query: dict[str, np.ndarray], keys: Iterable[str] | None = None) -> dict[str, float]:
    """Means of per-query arrays (the chance/ceiling rows carry no interval: they are expectations)."""
    return {name: float(v.mean()) for name, v in per_query.items() if keys is None or name in keys}
