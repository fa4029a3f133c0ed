"""The composite training objective: CLIP InfoNCE + supervised contrastive + BCE.

* :func:`clip_loss` aligns each study's image with its own report (and vice versa).
* :func:`supcon_loss` (Khosla et al. 2020) pulls together everything sharing a label -
  image with image, report with report and image with report - so that two different
  normal studies are not pushed apart just because they are different pairs.
* BCE trains the shared abnormality classifier on the projected embeddings.
* Finding-aware SupCon (``pos_weights``): positives weighted by the graded (finding, side)
  relevance of the two studies instead of "same binary label", so a left effusion is pulled
  toward left effusions, less toward right ones, and not toward cardiomegaly.
* Optional finding x side BCE (``w_findings``): an auxiliary multi-label linear probe on the
  shared space predicts which findings a study has and on which side (trained, never saved).
* Optional side-swap term (``w_side``, :func:`side_swap_loss`): each image with a one-sided
  finding must be closer to its report than to the same report with left and right swapped
  (``model.side_swap``); with phrase views on, the phrases' side-swapped twins join it.
* Optional phrase-view term (``w_phrase``, :func:`phrase_view_loss`): short phrases generated from
  each study's findings (``model.phrase_views``) as extra text views of its image, multi-positive.
* Optional flip-twin term (``w_flip``, :func:`flip_twin_loss`): the image-side twin of the side-swap
  term; each one-sided study's report must be closer to its own film than to the film mirrored
  left-right (``model.flip_twins``), optionally with the mirrored film paired to the swapped report.

``LOSS_PRESETS`` name the ablations of the ``--loss`` switch (the paper's three).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.head import MAX_LOGIT_SCALE

LOSS_PRESETS: dict[str, tuple[float, float, float]] = {
    "clip": (1.0, 0.0, 0.0),
    "clip+supcon": (1.0, 1.0, 0.0),
    "clip+supcon+bce": (1.0, 1.0, 1.0),
}


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy, targets = arange.

    ``logit_scale`` is in LOG space, log(1/temperature), exactly as stored in
    ``RetrievalHead.logit_scale``; it is clamped to <= log(100) and exponentiated here.
    Embeddings are expected L2-normalised (the head's outputs are).
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings differ in shape: {tuple(image_emb.shape)} vs {tuple(text_emb.shape)}")
    scale = torch.as_tensor(logit_scale, dtype=image_emb.dtype, device=image_emb.device).clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image_emb @ text_emb.T
    targets = torch.arange(len(image_emb), device=image_emb.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def supcon_loss(features: Tensor, labels: Tensor, temperature: float = 0.1, pos_weights: Tensor | None = None) -> Tensor:
    """Supervised contrastive loss L^sup_out of Khosla et al. (2020).

    For each anchor i with positives P(i) = {p != i : label_p == label_i}:

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

    and the loss is the mean of l_i over anchors that HAVE positives. An anchor whose class
    has a single member in the batch has no positive; the paper's formula would divide by
    |P(i)| = 0, so such anchors are excluded (if no anchor has a positive the loss is 0,
    still connected to the graph). Features are L2-normalised here (a no-op for the head's
    outputs).

    ``pos_weights`` (M, M) in [0, 1] replaces the 0/1 "same label" positives by graded ones:
    l_i = -sum_p w_ip log p_ip / sum_p w_ip (Khosla's formula when the weights are 0/1).
    """
    if features.ndim != 2 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"features (M,d) and labels (M,) expected, got {tuple(features.shape)} and {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    z = F.normalize(features, dim=-1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T) / temperature
    # log-softmax over a != i: exclude self by setting it to -inf before the logsumexp
    log_denominator = torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = sim - log_denominator
    labels = labels.reshape(-1)
    if pos_weights is None:
        positives = ((labels[:, None] == labels[None, :]) & ~self_mask).to(sim.dtype)
    else:
        if pos_weights.shape != (n, n):
            raise ValueError(f"pos_weights must be ({n},{n}), got {tuple(pos_weights.shape)}")
        positives = pos_weights.to(sim.dtype).masked_fill(self_mask, 0.0)
    n_pos = positives.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return features.sum() * 0.0
    mean_log_prob_pos = (log_prob * positives).sum(dim=1)[has_pos] / n_pos[has_pos]
    return -mean_log_prob_pos.mean()


def side_swap_loss(image_emb: Tensor, text_emb: Tensor, swapped_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Two-way cross-entropy per study: its image against its own report (the answer) and the
    same report with the sides swapped. Rows are studies with a one-sided finding; embeddings
    L2-normalised; ``logit_scale`` in log space as in :func:`clip_loss`."""
    if not (image_emb.shape == text_emb.shape == swapped_emb.shape):
        raise ValueError(f"image, text and swapped embeddings must share a shape, got {tuple(image_emb.shape)}, "
                         f"{tuple(text_emb.shape)}, {tuple(swapped_emb.shape)}")
    if len(image_emb) == 0:
        return image_emb.sum() * 0.0
    scale = torch.as_tensor(logit_scale, dtype=image_emb.dtype, device=image_emb.device).clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * torch.stack([(image_emb * text_emb).sum(-1), (image_emb * swapped_emb).sum(-1)], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def flip_twin_loss(text_emb: Tensor, image_emb: Tensor, flipped_emb: Tensor, logit_scale: Tensor | float,
                   swapped_emb: Tensor | None = None) -> Tensor:
    """Two-way cross-entropy per one-sided study: its report against its own image (the answer)
    and its mirrored film (an image-side hard negative). With ``swapped_emb`` (the side-swapped
    reports), the mirrored pair counts too, as extra positives: the swapped report must pick the
    mirrored film over the original and the mirrored film the swapped report over the original
    report; the terms are averaged. Embeddings L2-normalised; ``logit_scale`` in log space."""
    shapes = [tuple(t.shape) for t in (text_emb, image_emb, flipped_emb) + (() if swapped_emb is None else (swapped_emb,))]
    if len(set(shapes)) != 1:
        raise ValueError(f"text, image, flipped (and swapped) embeddings must share a shape, got {shapes}")
    if len(text_emb) == 0:
        return image_emb.sum() * 0.0
    scale = torch.as_tensor(logit_scale, dtype=image_emb.dtype, device=image_emb.device).clamp(max=MAX_LOGIT_SCALE).exp()
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    pairs = [(dot(text_emb, image_emb), dot(text_emb, flipped_emb))]  # (answer, hard negative) per row
    if swapped_emb is not None:
        pairs += [(dot(swapped_emb, flipped_emb), dot(swapped_emb, image_emb)),
                  (dot(flipped_emb, swapped_emb), dot(flipped_emb, text_emb))]
    logits = scale * torch.cat([torch.stack(p, dim=1) for p in pairs])
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def phrase_view_loss(image_emb: Tensor, phrase_emb: Tensor, targets: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Multi-positive InfoNCE between P phrases and the batch's B images, both directions.

    ``targets`` (P, B) >= 0: how true phrase p is of image b (two studies with the same findings
    give the same phrases, so every such image is a target, not a false negative). Each row (and
    column) with a positive is normalised to a target distribution; soft-target cross-entropy."""
    if phrase_emb.shape[0] != targets.shape[0] or image_emb.shape[0] != targets.shape[1]:
        raise ValueError(f"targets must be (phrases, images), got {tuple(targets.shape)}")
    scale = torch.as_tensor(logit_scale, dtype=image_emb.dtype, device=image_emb.device).clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * phrase_emb @ image_emb.T
    terms = []
    for lg, t in ((logits, targets), (logits.T, targets.T)):
        mass = t.sum(dim=1)
        keep = mass > 0
        if bool(keep.any()):
            terms.append(-(F.log_softmax(lg[keep], dim=1) * (t[keep] / mass[keep, None])).sum(dim=1).mean())
    return torch.stack(terms).mean() if terms else image_emb.sum() * 0.0


class CompositeLoss(nn.Module):
    """w_clip * InfoNCE + w_supcon * SupCon(images ++ texts) + w_bce * BCE(image & text logits).

    A term whose weight is 0 is not computed at all (and is absent from ``parts``).
    """

    def __init__(self, w_clip: float = 1.0, w_supcon: float = 1.0, w_bce: float = 1.0, supcon_temperature: float = 0.1,
                 w_findings: float = 0.0, n_findings: int = 0, embed_dim: int = 0, w_side: float = 0.0, w_phrase: float = 0.0,
                 w_flip: float = 0.0) -> None:
        super().__init__()
        weights = (float(w_clip), float(w_supcon), float(w_bce), float(w_findings), float(w_side), float(w_phrase),
                   float(w_flip))
        if any(w < 0 or not math.isfinite(w) for w in weights):
            raise ValueError(f"loss weights must be finite and >= 0, got {weights}")
        if not any(weights):
            raise ValueError("all loss weights are 0: nothing to train")
        self.w_clip, self.w_supcon, self.w_bce, self.w_findings, self.w_side, self.w_phrase, self.w_flip = weights
        self.supcon_temperature = float(supcon_temperature)
        # the auxiliary finding x side probe (its own parameters: the optimiser must see them)
        self.finding_head = nn.Linear(embed_dim, n_findings) if self.w_findings and n_findings and embed_dim else None
        if self.w_findings and self.finding_head is None:
            raise ValueError("w_findings > 0 needs n_findings and embed_dim")

    @classmethod
    def from_preset(cls, name: str, supcon_temperature: float = 0.1) -> "CompositeLoss":
        if name not in LOSS_PRESETS:
            raise ValueError(f"unknown loss preset {name!r}; choose from {', '.join(LOSS_PRESETS)}")
        return cls(*LOSS_PRESETS[name], supcon_temperature=supcon_temperature)

    def forward(
        self,
        outputs: Mapping[str, Tensor],
        labels: Tensor,
        supcon_labels: Tensor | None = None,
        pos_weights: Tensor | None = None,
        finding_targets: Tensor | None = None,
        side_swap: tuple[Tensor, Tensor] | None = None,
        phrases: tuple[Tensor, Tensor] | None = None,
        phrase_swap: tuple[Tensor, Tensor, Tensor] | None = None,
        flip: tuple[Tensor, Tensor, Tensor | None] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """``outputs`` is ``RetrievalHead.forward(image_feats, text_feats)``: image_emb, text_emb,
        logit_scale, image_logit and (optionally) text_logit. ``labels`` are 0/1 (normal/abnormal)
        per study; ``supcon_labels`` optionally gives finer class ids for SupCon (default: labels);
        ``pos_weights`` (B, B) graded study-to-study positives for SupCon (finding-aware SupCon;
        tiled over images ++ texts); ``finding_targets`` (B, n_findings) 0/1 for the finding probe;
        ``side_swap`` = (batch positions of studies with a one-sided finding, their swapped reports' embeddings).
        ``phrases`` = (P sampled phrases' embeddings, (P, B) targets) for the phrase-view term;
        ``phrase_swap`` = (batch positions, those studies' one-sided phrases' embeddings, their twins')
        joins the side-swap term. ``flip`` = (batch positions of one-sided studies, their mirrored films'
        embeddings, their swapped reports' embeddings or None) for the flip-twin term.

        Returns the differentiable total and a dict of the computed terms (unweighted) and total.
        """
        image_emb, text_emb = outputs["image_emb"], outputs["text_emb"]
        labels = labels.reshape(-1)
        parts: dict[str, float] = {}
        total = image_emb.new_zeros(())
        if self.w_clip:
            term = clip_loss(image_emb, text_emb, outputs["logit_scale"])
            parts["clip"] = float(term.detach())
            total = total + self.w_clip * term
        if self.w_supcon:
            group = (supcon_labels if supcon_labels is not None else labels).reshape(-1)
            tiled = None if pos_weights is None else pos_weights.repeat(2, 2)
            term = supcon_loss(torch.cat([image_emb, text_emb]), torch.cat([group, group]), self.supcon_temperature,
                               pos_weights=tiled)
            parts["supcon"] = float(term.detach())
            total = total + self.w_supcon * term
        if self.w_bce:
            target = labels.to(image_emb.dtype)
            term = F.binary_cross_entropy_with_logits(outputs["image_logit"], target)
            if outputs.get("text_logit") is not None:
                term = 0.5 * (term + F.binary_cross_entropy_with_logits(outputs["text_logit"], target))
            parts["bce"] = float(term.detach())
            total = total + self.w_bce * term
        if self.finding_head is not None:
            if finding_targets is None:
                raise ValueError("w_findings > 0 needs finding_targets")
            target = finding_targets.to(image_emb.dtype)
            term = 0.5 * (F.binary_cross_entropy_with_logits(self.finding_head(image_emb), target)
                          + F.binary_cross_entropy_with_logits(self.finding_head(text_emb), target))
            parts["findings"] = float(term.detach())
            total = total + self.w_findings * term
        if self.w_phrase and phrases is not None:
            term = phrase_view_loss(image_emb, phrases[0], phrases[1], outputs["logit_scale"])
            parts["phrase"] = float(term.detach())
            total = total + self.w_phrase * term
        if self.w_side and (side_swap is not None or phrase_swap is not None):
            img, own, other = [], [], []
            if side_swap is not None:
                img.append(image_emb[side_swap[0]]), own.append(text_emb[side_swap[0]]), other.append(side_swap[1])
            if phrase_swap is not None:
                img.append(image_emb[phrase_swap[0]]), own.append(phrase_swap[1]), other.append(phrase_swap[2])
            term = side_swap_loss(torch.cat(img), torch.cat(own), torch.cat(other), outputs["logit_scale"])
            parts["side"] = float(term.detach())
            total = total + self.w_side * term
        if self.w_flip and flip is not None:
            at, flipped, swapped = flip
            term = flip_twin_loss(text_emb[at], image_emb[at], flipped, outputs["logit_scale"], swapped)
            parts["flip"] = float(term.detach())
            total = total + self.w_flip * term
        parts["total"] = float(total.detach())
        return total, parts
