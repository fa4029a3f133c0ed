"""The head's training loop: AdamW, warm-up + cosine schedule, early stopping on validation.

One plain loop (nanoGPT's habit): shuffle, forward, composite loss, step, clamp the logit scale,
log, then score the validation split and keep the best epoch. It reads cached frozen features
only, so ``pipeline.steps.train_run`` (``python train.py``), ``bench.ablation`` and
``bench.train_head`` all time and train this same function.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from model.findings_training import PairRelevance, probe_targets
from model.head import MAX_LOGIT_SCALE, RetrievalHead, project
from model.knowledge import KNOWLEDGE_DIM
from model.loss import LOSS_PRESETS, CompositeLoss
from evaluation.relevance_metrics import ndcg_at_k, relevance_matrix
from runtime.threads import torch_threads, training_threads

log = logging.getLogger("train")


def loss_weights(args: argparse.Namespace) -> dict[str, float]:
    """The preset's term weights with the command line's overrides (``--w-clip`` ...)."""
    w_clip, w_supcon, w_bce = LOSS_PRESETS[args.loss]
    return {
        "w_clip": w_clip if args.w_clip is None else args.w_clip,
        "w_supcon": w_supcon if args.w_supcon is None else args.w_supcon,
        "w_bce": w_bce if args.w_bce is None else args.w_bce,
        "w_findings": float(args.w_findings),
        "w_side": float(getattr(args, "w_side", 0.0)),
        "w_phrase": float(getattr(args, "w_phrase", 0.0)),
        "w_flip": float(getattr(args, "w_flip", 0.0)),
    }


@dataclass
class TrainedHead:
    """What step 2 hands to evaluation and the run folder."""

    head: RetrievalHead  # best validation epoch's weights, in eval mode
    untrained_state: dict[str, torch.Tensor]  # the initial weights (frozen-baseline projection)
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float  # the epoch loop alone (what eval.json reports as timings_s.train_head)
    loss_weights: dict[str, float]  # the weights the loss ran with (the probe's is 0 when it had no finding)


def train_head(
    args: argparse.Namespace,
    image_dim: int,
    text_dim: int,
    Xi: torch.Tensor,
    Xt: torch.Tensor,
    y: torch.Tensor,
    rows: dict[str, np.ndarray],
    labels: np.ndarray,
    codes: np.ndarray | None = None,
    swapped: tuple[torch.Tensor, np.ndarray] | None = None,
    views=None,
    flipped: tuple[torch.Tensor, np.ndarray] | None = None,
) -> TrainedHead:
    """Step 2: the projector head on cached frozen features (row-aligned ``Xi``, ``Xt``, float
    labels ``y``), AdamW with warm-up + cosine schedule, early stopping on the validation split.

    ``args`` carries the head/loss/optimisation options of ``pipeline.options`` (``bench.train_head``
    times this same function). The head is initialised from torch's global RNG here, as before.
    ``codes`` (study profile codes, :func:`model.findings_training.study_codes`) are needed by
    finding-aware SupCon, the finding probe and the nDCG early-stopping score. ``swapped`` = (frozen
    features of every study's side-swapped report, mask of studies that have one), row-aligned
    (:func:`model.side_swap.swapped_text_features`): needed by the side-swap term (``--w-side``).
    With ``--knowledge``, ``Xt``, the swapped reports' and the views' features are the head's text inputs
    (frozen features + parsed findings, :func:`model.knowledge.with_knowledge`), not the frozen features alone.
    ``views`` (:class:`model.phrase_views.PhraseViews` with its features): needed by ``--w-phrase``;
    one phrase per study and batch, drawn from its own generator (the batch order is unchanged).
    ``flipped`` = (frozen features of every study's mirrored film, mask of studies that have one), row-aligned
    (:func:`model.flip_twins.flipped_image_features`): needed by the flip-twin term (``--w-flip``); with
    ``--flip-pairs`` it also reads ``swapped`` (the mirrored film pairs with the side-swapped report).
    """
    weights = loss_weights(args)
    needs_codes = args.supcon_labels == "findings" or weights["w_findings"] > 0 or args.val_metric == "ndcg"
    if needs_codes and codes is None:
        raise ValueError("finding-aware training/validation needs the studies' finding codes")
    if weights["w_side"] > 0 and swapped is None:
        raise ValueError("the side-swap term (w_side > 0) needs the side-swapped reports' features")
    if weights["w_phrase"] > 0 and (views is None or views.features is None):
        raise ValueError("the phrase-view term (w_phrase > 0) needs the phrase views and their features")
    flip_pairs = weights["w_flip"] > 0 and bool(getattr(args, "flip_pairs", False))
    if weights["w_flip"] > 0 and (flipped is None or (flip_pairs and swapped is None)):
        raise ValueError("the flip-twin term (w_flip > 0) needs the mirrored films' features "
                         "(and, with --flip-pairs, the side-swapped reports')")
    Xs, swap_mask = ((swapped[0], torch.from_numpy(np.asarray(swapped[1], bool)))
                     if weights["w_side"] > 0 or flip_pairs else (None, None))
    Xf, flip_mask = (flipped[0], torch.from_numpy(np.asarray(flipped[1], bool))) if weights["w_flip"] > 0 else (None, None)
    Xp = torch.from_numpy(views.features) if weights["w_phrase"] > 0 else None
    phrase_generator = torch.Generator().manual_seed(args.seed + 7919)
    knowledge = float(getattr(args, "knowledge", 0.0) or 0.0)
    head = RetrievalHead(image_dim, text_dim, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                         dropout=args.dropout, residual=not args.no_residual,
                         knowledge_dim=KNOWLEDGE_DIM if knowledge > 0 else 0, knowledge_scale=knowledge)
    if Xt.shape[1] != head.text_input_dim:
        raise ValueError(f"the head reads {head.text_input_dim}-wide text inputs, got {Xt.shape[1]}: with --knowledge, "
                         "give the texts' inputs (pipeline.steps.training_text_inputs)")
    untrained = {k: v.clone() for k, v in head.state_dict().items()}
    pair_relevance = PairRelevance(codes) if args.supcon_labels == "findings" else None  # computed once, read per batch
    targets = probe_targets(codes, rows["train"]) if weights["w_findings"] > 0 else None
    if targets is not None and targets.shape[1] == 0:
        log.info("finding probe off: no finding is frequent enough in this training split")
        targets, weights = None, {**weights, "w_findings": 0.0}
    criterion = CompositeLoss(**weights, supcon_temperature=args.supcon_temperature,
                              n_findings=0 if targets is None else targets.shape[1], embed_dim=args.embed_dim)
    targets = None if targets is None else torch.from_numpy(targets)
    # fused: one kernel per step instead of ~10 elementwise passes over the 4M weights; a quarter
    # of each epoch on 1 CPU thread before (2.0 -> 1.55 s/epoch, weights within 2e-7 after 4 epochs)
    optimizer = torch.optim.AdamW(param_groups([head, criterion], args.weight_decay), lr=args.lr, fused=True)
    train_rows = torch.from_numpy(rows["train"])
    steps_per_epoch = max(1, math.ceil(len(train_rows) / args.batch_size))
    total_steps, warmup_steps = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, warmup_steps, total_steps))
    generator = torch.Generator().manual_seed(args.seed)
    history: list[dict[str, float]] = []
    best_score, best_state, best_epoch, bad_epochs = -1.0, None, 0, 0
    t0 = time.time()
    with torch_threads(training_threads()):  # see runtime.threads: 1 unless CXR_TRAIN_THREADS says more
        for epoch in range(args.epochs):
            head.train()
            epoch_parts: dict[str, float] = {}
            order = train_rows[torch.randperm(len(train_rows), generator=generator)]
            for start in range(0, len(order), args.batch_size):
                batch = order[start : start + args.batch_size]
                if len(batch) < 2:
                    continue
                extra = {}
                if pair_relevance is not None:
                    extra["pos_weights"] = pair_relevance.batch(batch)
                if targets is not None:
                    extra["finding_targets"] = targets[batch]
                if Xs is not None and weights["w_side"] > 0:  # positions in the batch of studies with a one-sided finding
                    at = torch.nonzero(swap_mask[batch]).squeeze(1)
                    extra["side_swap"] = (at, head.encode_text(Xs[batch[at]]))
                if Xf is not None:  # the same studies' mirrored films (and, with --flip-pairs, swapped reports)
                    at = torch.nonzero(flip_mask[batch]).squeeze(1)
                    extra["flip"] = (at, head.encode_image(Xf[batch[at]]),
                                     head.encode_text(Xs[batch[at]]) if flip_pairs else None)
                if Xp is not None:
                    extra.update(phrase_batch(head, views, Xp, batch, phrase_generator, weights["w_side"] > 0))
                loss, parts = criterion(head(Xi[batch], Xt[batch]), y[batch], **extra)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():  # the losses clamp it anyway; keep the stored value in range too
                    head.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
                schedule.step()
                for k, v in parts.items():
                    epoch_parts[k] = epoch_parts.get(k, 0.0) + v / steps_per_epoch
            val = rows["val"]
            score = validation_score(head, Xi[val], Xt[val], labels[val],
                                     codes[val] if args.val_metric == "ndcg" else None)
            history.append({"epoch": epoch + 1, "val_score": score, "lr": schedule.get_last_lr()[0], **epoch_parts})
            if score > best_score:
                best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
            else:
                bad_epochs += 1
            if not args.quiet:
                log.info("epoch %3d  loss %.4f  val %.4f%s", epoch + 1, epoch_parts.get("total", float("nan")), score,
                         "  *" if bad_epochs == 0 else "")
            if bad_epochs >= args.patience:
                log.info("early stop: no validation gain for %d epochs (best epoch %d)", args.patience, best_epoch)
                break
    t_train = time.time() - t0
    head.load_state_dict(best_state)
    head.eval()
    return TrainedHead(head, untrained, history, best_epoch, t_train, weights)


def phrase_batch(head: RetrievalHead, views, Xp: torch.Tensor, batch: torch.Tensor, generator: torch.Generator,
                 with_twins: bool) -> dict[str, tuple]:
    """The phrase-view inputs of one batch: a phrase per study, its targets over the batch's
    images, and (``with_twins``) the one-sided phrases with their side-swapped twins."""
    at, ids = views.sample(batch, generator)
    emb = head.encode_text(Xp[ids])
    out: dict[str, tuple] = {"phrases": (emb, torch.from_numpy(views.targets(ids.numpy(), batch.numpy())))}
    twin = torch.from_numpy(views.twin[ids.numpy()])
    has = twin >= 0
    if with_twins and bool(has.any()):
        out["phrase_swap"] = (at[has], emb[has], head.encode_text(Xp[twin[has]]))
    return out


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices only; none on biases, norms or the logit scale
    (decaying log(1/temperature) toward 0 would push the temperature toward 1)."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def validation_score(head: RetrievalHead, xi: torch.Tensor, xt: torch.Tensor, labels: np.ndarray,
                     codes: np.ndarray | None = None) -> float:
    """What early stopping maximises: with ``codes``, the graded nDCG@10 (evaluation.relevance_metrics)
    averaged over i2t and t2i - it sees findings and sides and still rewards the exact pair (gain 1);
    without, the old mean of R@10 and class-aware P@10 over both directions (``--val-metric r10p10``).

    The same numbers as ``evaluation.tables.evaluate_embeddings`` gives for these four metrics
    (same float64 similarity, same stable ranking), computed without the per-query mAP and
    i2i it also computes: those took ~3 s of every ~4 s epoch on 2 cores (bench.train_head).
    """
    was_training = head.training
    sim = project(head, xi, "image") @ project(head, xt, "text").T
    head.train(was_training)
    if codes is not None:
        rel = relevance_matrix(codes, codes)
        return float(np.mean([ndcg_at_k(np.argsort(-d, axis=1, kind="stable")[:, :10], rel).mean()
                              for d in (sim, sim.T)]))
    labels = np.asarray(labels)
    values = []
    for direction in (sim, sim.T):  # i2t, then t2i
        values += list(recall_and_precision_at_10(direction, labels))
    return float(np.mean(values))


def recall_and_precision_at_10(similarity: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """R@10 (the paired item in the top 10) and class-aware P@10 of a paired query x gallery
    matrix, exactly as ``evaluation.tables.per_query_metrics`` + ``summarize`` define them."""
    sim = np.asarray(similarity, dtype=np.float64)
    n_q, n_g = sim.shape
    order = np.argsort(-sim, axis=1, kind="stable")
    rank = np.argmax(order == np.arange(n_q)[:, None], axis=1)
    same_label = labels[order[:, : min(10, n_g)]] == labels[:, None]
    return float((rank < 10).astype(np.float64).mean()), float(same_label.mean(axis=1).mean())
