"""train.py's options: one parser, so ``python train.py``, the app's first start and the
benches (``bench.ablation``, ``bench.train_head``) mean the same run by the same flags.

Defaults chosen on the validation split live here (``bench/results/ablation.md``; never on test).
"""
from __future__ import annotations

import argparse

from data.sources import add_data_arguments
from model.factory import available_backbones
from model.findings_training import SUPCON_LABELS
from model.loss import LOSS_PRESETS
from runtime.option import add_runtime_argument

DESCRIPTION = "Train the projector head on frozen-backbone features, evaluate it, write a run folder."
# Chosen on the validation split (bench/results/ablation.md; never on test) by the rule of
# bench.ablation.choose_default. The paper's recipe: --paper (PAPER_RECIPE below).
DEFAULT_SUPCON_LABELS = "findings"
DEFAULT_W_FINDINGS = 0.0
DEFAULT_W_SIDE = 5.0
DEFAULT_W_PHRASE = 5.0  # clip+supcon[findings]+bce+phrases x5+side x5+knowledge
DEFAULT_KNOWLEDGE = 2.0  # model.knowledge.DEFAULT_SCALE
DEFAULT_W_FLIP = 0.0  # the flip-twin term (model.flip_twins): off until the validation grid says otherwise
# The paper's recipe, kept reproducible as defaults move (``--paper`` sets exactly these).
PAPER_RECIPE = {"loss": "clip+supcon+bce", "w_clip": None, "w_supcon": None, "w_bce": None, "supcon_labels": "binary",
                "w_findings": 0.0, "w_side": 0.0, "w_phrase": 0.0, "knowledge": 0.0, "w_flip": 0.0,
                "flip_pairs": False}
PAPER_RECIPE_ARGS = ("--loss", "clip+supcon+bce", "--supcon-labels", "binary", "--w-findings", "0", "--w-side", "0",
                     "--w-phrase", "0", "--knowledge", "0", "--w-flip", "0")
# Options naming files or folders: left out of config.json (a run folder says nothing about where it was made).
PATH_ARGS = ("out", "backbone_path", "cache_dir", "features", "index", "data", "iu_reports", "iu_images", "mimic",
             "mimic_reports", "manifest")


def parse_training_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse ``python train.py`` options (``argv`` None: the process's own)."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    g.add_argument("--paper", action="store_true",
                   help=f"the paper's recipe, whatever the defaults: {' '.join(PAPER_RECIPE_ARGS)}")
    g.add_argument("--w-clip", type=float, help="override the preset's InfoNCE weight")
    g.add_argument("--w-supcon", type=float, help="override the preset's SupCon weight")
    g.add_argument("--w-bce", type=float, help="override the preset's BCE weight")
    g.add_argument("--supcon-temperature", type=float, default=0.1)
    g.add_argument("--supcon-labels", default=DEFAULT_SUPCON_LABELS, choices=SUPCON_LABELS,
                   help="SupCon positives: same normal/abnormal label (the paper) or graded finding+side overlap")
    g.add_argument("--w-side", type=float, default=DEFAULT_W_SIDE,
                   help="weight of the side-swap term: an image vs its report with left/right swapped (0 = off)")
    g.add_argument("--w-phrase", type=float, default=DEFAULT_W_PHRASE,
                   help="weight of the phrase-view term: phrases generated from each training study's findings "
                        "as extra text views of its image (model.phrase_views; 0 = off, the paper)")
    g.add_argument("--knowledge", type=float, default=DEFAULT_KNOWLEDGE, metavar="SCALE",
                   help="knowledge-enhanced text input: each text's parsed findings (finding x side x negation, "
                        "model.knowledge) beside its frozen features, at this scale (0 = off, the paper)")
    g.add_argument("--w-flip", type=float, default=DEFAULT_W_FLIP,
                   help="weight of the flip-twin term: a one-sided study's report vs its film and the film mirrored "
                        "left-right (model.flip_twins; 0 = off, the paper)")
    g.add_argument("--flip-pairs", action="store_true",
                   help="with --w-flip: the mirrored film also pairs with the side-swapped report (extra positives)")
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
    p.add_argument("--index", metavar="DIR", help="also build the run's search index here (as `python -m index build`)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.paper:
        vars(args).update(PAPER_RECIPE)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1 (got {args.epochs}): the head needs at least one epoch to train")
    if args.patience < 1:
        p.error(f"--patience must be >= 1 (got {args.patience})")
    return args
