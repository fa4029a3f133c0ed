"""Head shapes and each loss term against values written out by hand from its definition."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.head import ProjectionHead, RetrievalHead
from model.loss import LOSS_PRESETS, CompositeLoss, clip_loss, supcon_loss


def _unit(rows) -> torch.Tensor:
    x = torch.tensor(rows, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


# Four 3-d unit vectors, no symmetry, for the loop-based reference computations.
IMG = _unit([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [-0.5, 0.4, 1.0], [0.7, -0.6, 0.2]])
TXT = _unit([[0.9, 0.1, 0.3], [0.0, 1.0, 0.1], [-0.2, 0.3, 1.0], [1.0, -0.1, -0.4]])


# ----------------------------------------------------------------------------------------
# head
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("residual", [True, False])
def test_head_shapes_norms_and_config(residual):
    torch.manual_seed(0)
    head = RetrievalHead(image_dim=40, text_dim=24, embed_dim=16, hidden_dim=32, dropout=0.1, residual=residual)
    img, txt = torch.randn(5, 40), torch.randn(5, 24)
    out = head(img, txt)
    assert out["image_emb"].shape == (5, 16) and out["text_emb"].shape == (5, 16)
    assert torch.allclose(out["image_emb"].norm(dim=-1), torch.ones(5), atol=1e-6)
    assert torch.allclose(out["text_emb"].norm(dim=-1), torch.ones(5), atol=1e-6)
    assert out["image_logit"].shape == (5,) and out["text_logit"].shape == (5,)
    assert head.classify(out["image_emb"]).shape == (5,)
    assert head.config == {"image_dim": 40, "text_dim": 24, "embed_dim": 16, "hidden_dim": 32,
                           "dropout": 0.1, "residual": residual, "init_temperature": 0.07}
    assert (head.image_proj.skip is not None) == residual
    rebuilt = RetrievalHead(**head.config)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in head.parameters())


def test_projection_head_structure_and_eval_determinism():
    torch.manual_seed(0)
    proj = ProjectionHead(8, 4, hidden_dim=16, dropout=0.5, residual=True).eval()
    x = torch.randn(3, 8)
    expected = F.normalize(proj.mlp[3](F.gelu(proj.mlp[0](x))) + x @ proj.skip.weight.T, dim=-1)
    assert torch.allclose(proj(x), expected, atol=1e-6)  # dropout is off in eval mode
    assert isinstance(proj.mlp[1], torch.nn.GELU) and isinstance(proj.mlp[2], torch.nn.Dropout)


def test_logit_scale_initialisation_and_clamp():
    head = RetrievalHead(4, 4, init_temperature=0.07)
    assert float(head.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    assert head.temperature == pytest.approx(0.07, rel=1e-5)
    with torch.no_grad():
        head.logit_scale.fill_(math.log(1000.0))
    assert float(head.clamped_logit_scale().detach()) == pytest.approx(math.log(100.0))
    assert head.temperature == pytest.approx(0.01, rel=1e-5)


# ----------------------------------------------------------------------------------------
# CLIP InfoNCE
# ----------------------------------------------------------------------------------------

def test_clip_loss_closed_form():
    # image = text = [e1, e2, -e1, -e2], scale 2: every row's logits are a permutation of
    # (2, 0, -2, 0) with the 2 on the target, so each CE = log(e^2 + 2 + e^-2) - 2.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = math.log(math.exp(2) + 2 + math.exp(-2)) - 2  # = 2 log(e + 1/e) - 2
    assert float(clip_loss(x, x, torch.tensor(math.log(2.0)))) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.253856, abs=1e-5)


def test_clip_loss_matches_loop_reference():
    scale = 1 / 0.07
    sim = [[scale * float(IMG[i] @ TXT[j]) for j in range(4)] for i in range(4)]
    i2t = [-(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(4)))) for i in range(4)]
    t2i = [-(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(4)))) for j in range(4)]
    expected = 0.5 * (sum(i2t) / 4 + sum(t2i) / 4)
    got = clip_loss(IMG, TXT, torch.tensor(math.log(scale), dtype=torch.float64))
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_clip_loss_clamps_scale_to_100():
    at_cap = clip_loss(IMG, TXT, torch.tensor(math.log(100.0), dtype=torch.float64))
    above = clip_loss(IMG, TXT, torch.tensor(math.log(5000.0), dtype=torch.float64))
    assert float(above) == pytest.approx(float(at_cap), rel=1e-12)


# ----------------------------------------------------------------------------------------
# SupCon
# ----------------------------------------------------------------------------------------

def _supcon_reference(z: torch.Tensor, labels: list[int], t: float) -> float:
    """Khosla et al. L^sup_out written out with loops; anchors without positives skipped."""
    n = len(labels)
    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        terms = [-math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in positives]
        per_anchor.append(sum(terms) / len(positives))
    return sum(per_anchor) / len(per_anchor)


def test_supcon_closed_form():
    # z = e1, e1, e2, e2, labels 0,0,1,1, t = 1: each anchor has one positive at similarity 1
    # and two negatives at 0 -> loss = -log(e / (e + 1 + 1)) = log(e + 2) - 1 = 0.5514
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = supcon_loss(z, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    assert float(got) == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)
    assert math.log(math.e + 2) - 1 == pytest.approx(0.551445, abs=1e-5)


def test_supcon_matches_definition_with_loops():
    z = torch.cat([IMG, TXT])
    labels = [0, 1, 1, 0, 0, 1, 1, 0]
    got = supcon_loss(z, torch.tensor(labels), temperature=0.1)
    assert float(got) == pytest.approx(_supcon_reference(z, labels, 0.1), rel=1e-9)


def test_supcon_excludes_anchors_of_single_member_classes():
    # labels 0,0,1,2: anchors 2 and 3 have no positive and are left out of the mean; they
    # still act as negatives in anchors 0 and 1's denominators.
    labels = [0, 0, 1, 2]
    got = supcon_loss(IMG, torch.tensor(labels), temperature=0.5)
    reference = _supcon_reference(IMG, labels, 0.5)
    assert float(got) == pytest.approx(reference, rel=1e-9)
    # same value as averaging the two anchors by hand
    t = 0.5
    s = lambda i, j: math.exp(float(IMG[i] @ IMG[j]) / t)  # noqa: E731
    a0 = -math.log(s(0, 1) / (s(0, 1) + s(0, 2) + s(0, 3)))
    a1 = -math.log(s(1, 0) / (s(1, 0) + s(1, 2) + s(1, 3)))
    assert float(got) == pytest.approx((a0 + a1) / 2, rel=1e-9)


def test_supcon_with_no_positive_anywhere_is_zero_and_differentiable():
    z = IMG.clone().float().requires_grad_(True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2, 3]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert z.grad is not None and torch.all(z.grad == 0)


def test_supcon_normalises_features():
    labels = torch.tensor([0, 0, 1, 1])
    assert float(supcon_loss(IMG * 3.0, labels)) == pytest.approx(float(supcon_loss(IMG, labels)), rel=1e-9)


# ----------------------------------------------------------------------------------------
# composite
# ----------------------------------------------------------------------------------------

def _bce(logit: float, y: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _outputs(logit_scale: float | None = None):
    logit_scale = math.log(1 / 0.07) if logit_scale is None else logit_scale
    return {
        "image_emb": IMG, "text_emb": TXT,
        "image_logit": torch.tensor([0.0, 2.0, -1.0, 3.0], dtype=torch.float64),
        "text_logit": torch.tensor([0.5, -0.5, 1.5, -2.0], dtype=torch.float64),
        "logit_scale": torch.tensor(logit_scale, dtype=torch.float64),
    }


def test_composite_bce_matches_hand_values():
    labels = torch.tensor([0, 1, 1, 0])
    total, parts = CompositeLoss(w_clip=0, w_supcon=0, w_bce=1)(_outputs(), labels)
    img = [_bce(x, y) for x, y in zip([0.0, 2.0, -1.0, 3.0], [0, 1, 1, 0])]
    txt = [_bce(x, y) for x, y in zip([0.5, -0.5, 1.5, -2.0], [0, 1, 1, 0])]
    expected = 0.5 * (sum(img) / 4 + sum(txt) / 4)
    assert float(total) == pytest.approx(expected, rel=1e-9)
    assert set(parts) == {"bce", "total"}


def test_composite_weighting_and_dropped_terms():
    labels = torch.tensor([0, 1, 1, 0])
    out = _outputs()
    clip_v = float(clip_loss(IMG, TXT, out["logit_scale"]))
    sup_v = _supcon_reference(torch.cat([IMG, TXT]), [0, 1, 1, 0] * 2, 0.2)
    img = [_bce(x, y) for x, y in zip([0.0, 2.0, -1.0, 3.0], [0, 1, 1, 0])]
    txt = [_bce(x, y) for x, y in zip([0.5, -0.5, 1.5, -2.0], [0, 1, 1, 0])]
    bce_v = 0.5 * (sum(img) + sum(txt)) / 4

    total, parts = CompositeLoss(w_clip=2.0, w_supcon=0.5, w_bce=3.0, supcon_temperature=0.2)(out, labels)
    assert parts["clip"] == pytest.approx(clip_v) and parts["supcon"] == pytest.approx(sup_v)
    assert parts["bce"] == pytest.approx(bce_v)
    assert float(total) == pytest.approx(2.0 * clip_v + 0.5 * sup_v + 3.0 * bce_v, rel=1e-9)
    assert parts["total"] == pytest.approx(float(total))

    total, parts = CompositeLoss(w_clip=1.0, w_supcon=0.0, w_bce=0.0)(out, labels)
    assert set(parts) == {"clip", "total"} and float(total) == pytest.approx(clip_v, rel=1e-9)

    # a zero-weighted term is not computed at all: its inputs may be missing
    no_logits = {k: v for k, v in out.items() if k not in ("image_logit", "text_logit")}
    CompositeLoss(w_clip=1.0, w_supcon=1.0, w_bce=0.0)(no_logits, labels)

    with pytest.raises(ValueError):
        CompositeLoss(0, 0, 0)
    with pytest.raises(ValueError):
        CompositeLoss(-1, 1, 1)


def test_presets():
    assert LOSS_PRESETS == {"clip": (1, 0, 0), "clip+supcon": (1, 1, 0), "clip+supcon+bce": (1, 1, 1)}
    loss = CompositeLoss.from_preset("clip+supcon", supcon_temperature=0.3)
    assert (loss.w_clip, loss.w_supcon, loss.w_bce, loss.supcon_temperature) == (1, 1, 0, 0.3)
    with pytest.raises(ValueError):
        CompositeLoss.from_preset("triplet")


def test_supcon_labels_override():
    labels = torch.tensor([0, 1, 1, 0])
    fine = torch.tensor([0, 1, 2, 0])
    _, parts = CompositeLoss(0, 1, 0, supcon_temperature=0.1)(_outputs(), labels, supcon_labels=fine)
    assert parts["supcon"] == pytest.approx(_supcon_reference(torch.cat([IMG, TXT]), [0, 1, 2, 0] * 2, 0.1), rel=1e-9)


def test_gradients_reach_every_head_parameter_and_logit_scale():
    torch.manual_seed(0)
    head = RetrievalHead(12, 10, embed_dim=8, hidden_dim=16)
    img, txt = torch.randn(6, 12), torch.randn(6, 10)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    total, _ = CompositeLoss.from_preset("clip+supcon+bce")(head(img, txt), labels)
    total.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert float(param.grad.abs().sum()) > 0, name

    head.zero_grad(set_to_none=True)
    total, _ = CompositeLoss.from_preset("clip")(head(img, txt), labels)
    total.backward()
    assert head.logit_scale.grad is not None and float(head.logit_scale.grad) != 0
    assert head.classifier.weight.grad is None  # BCE off: the classifier is untouched


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    head = RetrievalHead(12, 10, embed_dim=8, hidden_dim=16, dropout=0.0)
    img, txt = torch.randn(16, 12), torch.randn(16, 10)
    labels = torch.randint(0, 2, (16,))
    loss_fn = CompositeLoss.from_preset("clip+supcon+bce")
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        total, _ = loss_fn(head(img, txt), labels)
        first = float(total.detach()) if first is None else first
        total.backward()
        opt.step()
    assert float(total.detach()) < 0.7 * first
