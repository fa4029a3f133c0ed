"""Finding-aware SupCon, the finding probe, the optimiser fixes and the phrase benchmark's rules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.findings import Finding, relevance
from model.findings_training import PairRelevance, probe_targets
from model.head import MAX_LOGIT_SCALE, RetrievalHead
from model.loss import CompositeLoss, supcon_loss
from evaluation.phrase_benchmark import PHRASES, Phrase, benchmark
from evaluation.relevance_metrics import encode_profiles

L = frozenset({"left"})
R = frozenset({"right"})
PROFILES = [{"pleural effusion": L}, {"pleural effusion": L}, {"pleural effusion": R}, {}, {}, {"cardiomegaly": frozenset()}]


def _weighted_reference(z: torch.Tensor, w: np.ndarray, t: float) -> float:
    """-sum_p w_ip log p_ip / sum_p w_ip, averaged over anchors with any positive weight (loops)."""
    n = len(z)
    out = []
    for i in range(n):
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        ws = [(p, w[i, p]) for p in range(n) if p != i and w[i, p] > 0]
        if not ws:
            continue
        out.append(-sum(wp * math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p, wp in ws) / sum(wp for _, wp in ws))
    return sum(out) / len(out)


def test_finding_supcon_weights_positives_by_graded_relevance():
    codes, _ = encode_profiles(PROFILES)
    w = PairRelevance(codes).batch(torch.arange(6))
    for i in range(6):
        for j in range(6):
            assert float(w[i, j]) == pytest.approx(relevance(PROFILES[i], PROFILES[j]))
    # left-left full positive, left-right a quarter, effusion-cardiomegaly none, normal-normal full
    assert float(w[0, 1]) == 1.0 and float(w[0, 2]) == 0.25 and float(w[0, 5]) == 0.0 and float(w[3, 4]) == 1.0
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    got = supcon_loss(z, torch.zeros(6), temperature=0.2, pos_weights=w.double())
    assert float(got) == pytest.approx(_weighted_reference(z, w.double().numpy(), 0.2), rel=1e-9)
    # 0/1 weights are exactly the label-based (paper's) SupCon
    labels = torch.tensor([1, 1, 1, 0, 0, 1])
    same = (labels[:, None] == labels[None, :]).double()
    assert float(supcon_loss(z, labels, 0.2, pos_weights=same)) == pytest.approx(float(supcon_loss(z, labels, 0.2)), rel=1e-12)


def test_pair_relevance_table_equals_the_direct_computation():
    """The per-batch lookup gives exactly relevance_matrix of the batch's codes (duplicates, empty profiles)."""
    from evaluation.relevance_metrics import relevance_matrix

    rng = np.random.default_rng(0)
    codes = rng.choice(np.array([0, 1, 3, 5, 7], dtype=np.uint8), size=(300, 6), p=[0.7, 0.1, 0.1, 0.05, 0.05])
    codes[:40] = 0  # normal studies share one profile
    table = PairRelevance(codes)
    assert len(table.table) < 300  # distinct profiles, not studies
    for rows in (torch.arange(300), torch.from_numpy(rng.choice(300, size=64, replace=False))):
        c = codes[rows.numpy()]
        assert np.array_equal(table.batch(rows).numpy(), relevance_matrix(c, c).astype(np.float32))
    assert PairRelevance(np.zeros((5, 0), np.uint8)).batch(torch.arange(5)).numpy().tolist() == [[1.0] * 5] * 5


def test_finding_supcon_gradient_pulls_same_side_closer_than_opposite_side():
    codes, _ = encode_profiles(PROFILES[:3])  # left, left, right effusion
    w = PairRelevance(codes).batch(torch.arange(3)).double()
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64), dim=1)
    z.requires_grad_(True)
    supcon_loss(z, torch.zeros(3), temperature=0.5, pos_weights=w).backward()
    step = -z.grad[0]  # gradient descent direction of the first (left) anchor
    assert float(step @ torch.tensor([0.0, 1.0], dtype=torch.float64)) > float(step @ torch.tensor([0.0, -1.0], dtype=torch.float64))


def test_composite_loss_tiles_weights_and_trains_the_probe():
    torch.manual_seed(0)
    head = RetrievalHead(12, 10, embed_dim=8, hidden_dim=16, dropout=0.0)
    codes, _ = encode_profiles(PROFILES)
    targets = torch.from_numpy(probe_targets(codes, np.arange(6), min_count=1))
    assert targets.shape == (6, 6)  # 2 findings x (present, left, right)
    loss = CompositeLoss(1, 1, 1, w_findings=1.0, n_findings=targets.shape[1], embed_dim=8)
    out = head(torch.randn(6, 12), torch.randn(6, 10))
    total, parts = loss(out, torch.tensor([1, 1, 1, 0, 0, 1]), pos_weights=PairRelevance(codes).batch(torch.arange(6)),
                        finding_targets=targets)
    assert {"clip", "supcon", "bce", "findings", "total"} == set(parts)
    total.backward()
    assert loss.finding_head.weight.grad is not None and float(loss.finding_head.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError):
        CompositeLoss(1, 1, 1, w_findings=1.0)  # no probe size


def test_param_groups_skip_decay_on_biases_and_logit_scale_and_clamp():
    from model.training import param_groups
    from pipeline.options import parse_training_args

    head = RetrievalHead(12, 10, embed_dim=8, hidden_dim=16)
    decay, no_decay = param_groups([head], 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert any(p is head.logit_scale for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(head.parameters()))
    with pytest.raises(SystemExit):
        parse_training_args(["--epochs", "0"])
    assert MAX_LOGIT_SCALE == pytest.approx(math.log(100))


# ----------------------------------------------------------------------------- phrase benchmark

def test_phrase_list_covers_findings_sides_sizes_negations_and_normals():
    assert len(PHRASES) >= 60
    texts = [p.text for p in PHRASES]
    assert len(set(texts)) == len(texts)
    assert "small left pleural effusion" in texts and "no pleural effusion" in texts
    assert sum(p.negated for p in PHRASES) >= 5 and sum(p.finding is None for p in PHRASES) >= 5
    assert {p.side for p in PHRASES} >= {"left", "right", "bilateral", ""}


def test_phrase_relevance_rules():
    small_left = Phrase("small left pleural effusion", "pleural effusion", "left", "mild")
    eff = lambda side, sev="": Finding("pleural effusion", side, severity=sev)  # noqa: E731
    assert small_left.gain([eff("left", "mild")]) == 1.0
    assert small_left.gain([eff("left", "severe")]) == 0.75  # right side, wrong size
    assert small_left.gain([eff("bilateral", "mild")]) == 0.5
    assert small_left.gain([eff("right", "mild")]) == 0.25 and not small_left.hit([eff("right", "mild")])
    assert small_left.gain([Finding("cardiomegaly")]) == 0.0 and small_left.gain([]) == 0.0
    assert small_left.swapped([eff("right")]) is True and small_left.swapped([eff("bilateral")]) is False
    assert small_left.swapped([eff("")]) is None and small_left.swapped([Finding("cardiomegaly")]) is None
    negation = Phrase("no pleural effusion", "pleural effusion", negated=True)
    assert negation.gain([]) == 1.0 and negation.gain([Finding("cardiomegaly")]) == 1.0
    assert negation.gain([eff("left")]) == 0.0
    assert negation.gain([Finding("pleural effusion", certainty="negative")]) == 1.0  # "no effusion" tag
    normal = Phrase("normal chest")
    assert normal.gain([]) == 1.0 and normal.gain([Finding("cardiomegaly")]) == 0.0


def test_benchmark_side_swap_rate_and_precision_on_a_hand_built_gallery():
    left, right = Phrase("left pneumothorax", "pneumothorax", "left"), Phrase("right pneumothorax", "pneumothorax", "right")
    findings = [[Finding("pneumothorax", "left")], [Finding("pneumothorax", "right")], [Finding("cardiomegaly")]]
    # one-hot gallery; both phrases rank: right-PTX study, left-PTX study, cardiomegaly (k = 2)
    image = np.eye(3)
    phrase = np.array([[0.5, 1.0, 0.0], [0.5, 1.0, 0.0]])
    out = benchmark(phrase, image, findings, phrases=[left, right], k=2)
    # left phrase: top 2 = right (swap), left (ok); right phrase: right (ok), left (swap)
    assert out["side_swap_rate"] == pytest.approx(2 / 4)
    assert out["finding_P@10"] == pytest.approx(0.5)
    assert out["n_phrases"] == 2 and out["ceiling_finding_P@10"] == pytest.approx(0.5)
    assert out["chance_side_swap_rate"] == pytest.approx(0.5)  # 1 of the 2 sided studies is opposite, per phrase
    ideal = 1.0 + 0.25 / math.log2(3)
    assert out["nDCG@10"] == pytest.approx(np.mean([(0.25 + 1 / math.log2(3)) / ideal, 1.0]))
