"""Train the projector head on frozen-backbone features, evaluate it, write a run folder.

    python train.py                      # offline backbone on the offline demo dataset
    python train.py --backbone biomedclip --manifest my.csv --out runs/biomedclip

Three plain steps, nanoGPT style:
  1. embed every study once with the frozen backbone (cached on disk, resumable);
  2. train the MLP head with the composite loss (w_clip·InfoNCE + w_supcon·SupCon + w_bce·BCE
     [+ w_findings·finding x side BCE]) with AdamW (no decay on biases and the logit scale),
     warm-up + cosine schedule over the maximum epochs, and early stopping on the validation
     split's graded nDCG@10 (mean of i2t and t2i; ``--val-metric``). The cosine runs over
     ``--epochs``: when early stopping fires first, the best epoch's LR was not yet annealed
     (documented, not hidden: history.json records the LR of every epoch);
  3. evaluate frozen baselines vs fine-tuned on the held-out test split, with graded metrics,
     chance and ceiling rows and the findings-phrase benchmark (model.phrase_benchmark); the split is
     patient-level when the data gives patient ids, study-level otherwise (IU X-ray, the demo).

The paper's recipe is ``--loss clip+supcon+bce --supcon-labels binary --w-findings 0``.

The run folder holds head.safetensors, config.json, eval.json (+ eval.md), curves.png,
embedding_map.json and split.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.atomic_io import atomic_write_bytes, atomic_write_json
from data.dataset import studies_fingerprint
from data.errors import REPORTED, one_line
from data.paths import cache_root
from data.sources import add_data_arguments, load_source
from data.split import load_or_create_split, split_hash, split_level
from model.checkpoint import save_checkpoint
from model.embedding_map import build_embedding_maps
from model.evaluate import format_phrase_table, format_table
from model.evaluate_run import evaluate_models, project
from model.factory import available_backbones, create_backbone
from model.features import cached_frozen_features
from model.findings_training import SUPCON_LABELS, batch_pos_weights, probe_targets, study_codes
from model.head import MAX_LOGIT_SCALE, RetrievalHead
from model.loss import LOSS_PRESETS, CompositeLoss
from model.phrase_benchmark import phrase_texts
from model.relevance_metrics import ndcg_at_k, relevance_matrix
from model.runtime_option import add_runtime_argument, apply_runtime_argument
from model.threads import torch_threads, training_threads

log = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: .cache/runs/<backbone>-<data>)")
    g = p.add_argument_group("backbone (frozen)")
    g.add_argument("--backbone", default="offline", help=f"one of {', '.join(available_backbones())}")
    g.add_argument("--backbone-path", metavar="DIR", help="local folder/file with the backbone weights (no hub)")
    g.add_argument("--cache-dir", metavar="DIR", help="hub cache folder for backbone downloads")
    g.add_argument("--embed-batch-size", type=int, default=32, help="images per forward pass when embedding")
    g.add_argument("--features", metavar="DIR", help="frozen features from these Parquet shards (python -m index embed)")
    add_runtime_argument(g)
    add_data_arguments(p)
    g = p.add_argument_group("head")
    g.add_argument("--embed-dim", type=int, default=256, help="shared embedding width")
    g.add_argument("--hidden-dim", type=int, default=512, help="MLP hidden width")
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--no-residual", action="store_true", help="drop the linear skip path of the projector")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="clip+supcon+bce", choices=sorted(LOSS_PRESETS), help="ablation preset")
    g.add_argument("--w-clip", type=float, help="override the preset's InfoNCE weight")
    g.add_argument("--w-supcon", type=float, help="override the preset's SupCon weight")
    g.add_argument("--w-bce", type=float, help="override the preset's BCE weight")
    g.add_argument("--supcon-temperature", type=float, default=0.1)
    g.add_argument("--supcon-labels", default=DEFAULT_SUPCON_LABELS, choices=SUPCON_LABELS,
                   help="SupCon positives: same normal/abnormal label (the paper) or graded finding+side overlap")
    g.add_argument("--w-findings", type=float, default=DEFAULT_W_FINDINGS,
                   help="weight of the auxiliary finding x side BCE probe (0 = off, the paper)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=60, help="maximum epochs")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-epochs", type=int, default=2)
    g.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (validation score)")
    g.add_argument("--seed", type=int, default=0, help="seeds the split, the head init and batch order")
    g.add_argument("--val-metric", default="ndcg", choices=("ndcg", "r10p10"),
                   help="early-stopping score: graded nDCG@10 (i2t+t2i) or the old mean of R@10 and binary P@10")
    g = p.add_argument_group("evaluation")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals (0 = none)")
    g.add_argument("--no-maps", action="store_true", help="skip the t-SNE/UMAP export")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1 (got {args.epochs}): the head needs at least one epoch to train")
    if args.patience < 1:
        p.error(f"--patience must be >= 1 (got {args.patience})")
    return args


# Chosen on the validation split (bench/ablation.md; never on test).
DEFAULT_SUPCON_LABELS = "findings"
DEFAULT_W_FINDINGS = 0.0
PATH_ARGS = ("out", "backbone_path", "cache_dir", "data", "iu_reports", "iu_images", "mimic", "mimic_reports", "manifest")


def loss_weights(args: argparse.Namespace) -> dict[str, float]:
    w_clip, w_supcon, w_bce = LOSS_PRESETS[args.loss]
    return {
        "w_clip": w_clip if args.w_clip is None else args.w_clip,
        "w_supcon": w_supcon if args.w_supcon is None else args.w_supcon,
        "w_bce": w_bce if args.w_bce is None else args.w_bce,
        "w_findings": float(args.w_findings),
    }


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    apply_runtime_argument(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t_start = time.time()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    # ---- data and split --------------------------------------------------------------
    source = load_source(args)
    studies = source.studies
    split = load_or_create_split(source.split_path(args.seed), studies, seed=args.seed)
    index_of = {s.study_id: i for i, s in enumerate(studies)}
    rows = {k: np.array([index_of[i] for i in split[k]], dtype=np.int64) for k in split}
    labels = np.array([s.label for s in studies], dtype=np.int64)
    codes, _ = study_codes(studies)
    level = split_level(studies)
    log.info("data: %s, %d studies (%s-level split: train %d / val %d / test %d)", source.name, len(studies),
             level, *(len(rows[k]) for k in ("train", "val", "test")))
    out = Path(args.out) if args.out else cache_root() / "runs" / f"{args.backbone.replace(':', '-')}-{source.name}"
    out.mkdir(parents=True, exist_ok=True)

    # ---- step 1: frozen features (cached) --------------------------------------------
    backbone = create_backbone(args.backbone, path=args.backbone_path, cache_dir=args.cache_dir)
    t0 = time.time()
    if args.features:  # shards of `python -m index embed`: embedded once for training and indexing
        from index.shards import features_for

        image_feats, text_feats = features_for(args.features, backbone, studies)
    else:
        image_feats, text_feats = cached_frozen_features(backbone, studies, batch_size=args.embed_batch_size, progress=not args.quiet)
    t_embed = time.time() - t0
    log.info("features: image %s, text %s (%.1fs)", image_feats.shape, text_feats.shape, t_embed)
    Xi, Xt, y = torch.from_numpy(image_feats), torch.from_numpy(text_feats), torch.from_numpy(labels).float()

    # ---- step 2: train the head ------------------------------------------------------
    weights = loss_weights(args)
    trained = train_head(args, backbone.image_dim, backbone.text_dim, Xi, Xt, y, rows, labels, codes)
    head, untrained, history = trained.head, trained.untrained_state, trained.history
    best_epoch, t_train = trained.best_epoch, trained.seconds

    # ---- step 3: evaluate on the held-out test split ----------------------------------
    test = rows["test"]
    phrase_feats = backbone.encode_texts(phrase_texts()).numpy().astype(np.float32)
    report = evaluate_models(backbone, head, Xi, Xt, labels, rows, codes, [s.structured_findings for s in studies],
                             args.bootstrap, phrase_feats=phrase_feats)
    calibration, report["calibration"] = calibrate_head(head, Xi, labels, rows)
    report.update({"n_test": int(len(test)), "split_hash": split_hash(split), "split_level": level,
                   "data": source.name, "best_epoch": best_epoch, "timings_s": {"embed": round(t_embed, 1), "train_head": round(t_train, 1)}})

    config = {
        "backbone_name": backbone.name, "backbone_id": backbone.backbone_id, "preprocess_id": backbone.preprocess_id,
        "image_dim": backbone.image_dim, "text_dim": backbone.text_dim, "shared_space": backbone.shared_space,
        "loss": args.loss, "loss_weights": weights, "supcon_temperature": args.supcon_temperature,
        "supcon_labels": args.supcon_labels, "val_metric": args.val_metric,
        "args": {k: v for k, v in vars(args).items() if k not in PATH_ARGS},
        "optim": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "patience")},
        "best_epoch": best_epoch, "seed": args.seed, "data": source.name, "calibration": calibration,
        "data_version": studies_fingerprint(studies), "split_hash": split_hash(split),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    save_checkpoint(out, head, config)
    atomic_write_json(out / "eval.json", report)
    atomic_write_bytes(out / "eval.md", (format_table(report) + "\n\n" + format_phrase_table(report) + "\n").encode())
    atomic_write_json(out / "split.json", split)
    atomic_write_json(out / "history.json", history)
    plot_curves(history, out / "curves.png")
    if not args.no_maps:
        t0 = time.time()
        spaces = {"frozen": image_feats, "finetuned": project(head, Xi, "image")}
        maps = build_embedding_maps(spaces, [s.study_id for s in studies], labels.tolist(), seed=args.seed)
        atomic_write_json(out / "embedding_map.json", maps)
        log.info("embedding maps: %.1fs", time.time() - t0)
    log.info("\n%s\n\nrun folder: %s  (%.0fs in all)", format_table(report), out, time.time() - t_start)
    return out


@dataclass
class TrainedHead:
    """What step 2 hands to evaluation and the run folder."""

    head: RetrievalHead  # best validation epoch's weights, in eval mode
    untrained_state: dict[str, torch.Tensor]  # the initial weights (frozen-baseline projection)
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float  # the epoch loop alone (what eval.json reports as timings_s.train_head)


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
) -> TrainedHead:
    """Step 2: the projector head on cached frozen features (row-aligned ``Xi``, ``Xt``, float
    labels ``y``), AdamW with warm-up + cosine schedule, early stopping on the validation split.

    ``args`` carries the head/loss/optimisation options of :func:`parse_args` (``bench.train_head``
    times this same function). The head is initialised from torch's global RNG here, as before.
    ``codes`` (study profile codes, :func:`model.findings_training.study_codes`) are needed by
    finding-aware SupCon, the finding probe and the nDCG early-stopping score.
    """
    weights = loss_weights(args)
    needs_codes = args.supcon_labels == "findings" or weights["w_findings"] > 0 or args.val_metric == "ndcg"
    if needs_codes and codes is None:
        raise ValueError("finding-aware training/validation needs the studies' finding codes")
    head = RetrievalHead(image_dim, text_dim, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                         dropout=args.dropout, residual=not args.no_residual)
    untrained = {k: v.clone() for k, v in head.state_dict().items()}
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
    with torch_threads(training_threads()):  # see model.threads: 1 unless CXR_TRAIN_THREADS says more
        for epoch in range(args.epochs):
            head.train()
            epoch_parts: dict[str, float] = {}
            order = train_rows[torch.randperm(len(train_rows), generator=generator)]
            for start in range(0, len(order), args.batch_size):
                batch = order[start : start + args.batch_size]
                if len(batch) < 2:
                    continue
                extra = {}
                if args.supcon_labels == "findings":
                    extra["pos_weights"] = batch_pos_weights(codes, batch)
                if targets is not None:
                    extra["finding_targets"] = targets[batch]
                loss, parts = compute_loss(head, criterion, Xi[batch], Xt[batch], y[batch], **extra)
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
    return TrainedHead(head, untrained, history, best_epoch, t_train)


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


def compute_loss(head: RetrievalHead, criterion: CompositeLoss, xi: torch.Tensor, xt: torch.Tensor, y: torch.Tensor,
                 **extra):
    return criterion(head(xi, xt), y, **extra)


def validation_score(head: RetrievalHead, xi: torch.Tensor, xt: torch.Tensor, labels: np.ndarray,
                     codes: np.ndarray | None = None) -> float:
    """What early stopping maximises: with ``codes``, the graded nDCG@10 (model.relevance_metrics)
    averaged over i2t and t2i - it sees findings and sides and still rewards the exact pair (gain 1);
    without, the old mean of R@10 and class-aware P@10 over both directions (``--val-metric r10p10``).

    The same numbers as ``model.evaluate.evaluate_embeddings`` gives for these four metrics
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
    matrix, exactly as ``model.evaluate.per_query_metrics`` + ``summarize`` define them."""
    sim = np.asarray(similarity, dtype=np.float64)
    n_q, n_g = sim.shape
    order = np.argsort(-sim, axis=1, kind="stable")
    rank = np.argmax(order == np.arange(n_q)[:, None], axis=1)
    same_label = labels[order[:, : min(10, n_g)]] == labels[:, None]
    return float((rank < 10).astype(np.float64).mean()), float(same_label.mean(axis=1).mean())


def calibrate_head(head: RetrievalHead, Xi: torch.Tensor, labels: np.ndarray, rows: dict) -> tuple[dict, dict]:
    """Temperature of the abnormal estimate fitted on val, ECE/reliability on test (model.calibration)."""
    from model.calibration import calibration_report, head_logits

    logits = {k: head_logits(head, project(head, Xi[rows[k]], "image")) for k in ("val", "test")}
    return calibration_report(logits["val"], labels[rows["val"]], logits["test"], labels[rows["test"]])


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in sorted(k for k in history[0] if k not in ("epoch", "val_score", "lr")):
        ax_loss.plot(epochs, [h.get(key, np.nan) for h in history], label=key)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_loss.legend()
    ax_val.plot(epochs, [h["val_score"] for h in history], color="tab:green")
    ax_val.set(xlabel="epoch", ylabel="validation score (see --val-metric)", title="Validation score")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def cli(argv: list[str] | None = None) -> int:
    """``python train.py``: ``main`` with input errors reported as one line (exit 2)."""
    try:
        main(argv)
    except REPORTED as exc:  # the inputs' fault (data.errors): one line, exit 2; anything else keeps its traceback
        print(one_line(exc), file=sys.stderr)
        return 2
    except SystemExit as exc:  # data.sources reports unusable data options this way
        if isinstance(exc.code, str):
            print(f"error: {exc.code}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
