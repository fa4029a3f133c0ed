"""Train the projector head on frozen-backbone features, evaluate it, write a run folder.

    python train.py                      # offline backbone on the offline demo dataset
    python train.py --backbone biomedclip --manifest my.csv --out runs/biomedclip
    python train.py --index .cache/indexes/mine   # ... and index the collection with the new head

The steps, in order (``pipeline.steps.train_run``, shared with ``python -m index build`` and the
app's first start):
  1. data: the studies and their held-out split, patient-level when the data gives patient ids,
     study-level otherwise (IU X-ray, the demo);
  2. features: embed every study once with the frozen backbone (one on-disk cache, resumable);
  3. head: train the MLP head with the composite loss (w_clip·InfoNCE + w_supcon·SupCon + w_bce·BCE
     [+ w_findings·finding x side BCE] [+ w_side·side-swap CE, ``model.side_swap``] [+ w_phrase·phrase views, ``model.phrase_views``]
     [+ w_flip·flip twins, the mirrored films, ``model.flip_twins``]), AdamW (no decay on biases and the logit scale), warm-up +
     cosine schedule over ``--epochs``, early stopping on the validation split's graded nDCG@10
     (``--val-metric``). When early stopping fires first, the best epoch's LR was not yet annealed
     (history.json records the LR of every epoch). The loop: ``model.training.train_head``;
  4. evaluation: frozen baselines vs fine-tuned on the test split, graded metrics beside chance and
     ceiling, the findings-phrase benchmark (``evaluation.phrase_benchmark``), calibration;
  5. index (with ``--index DIR``): hnswlib graphs + study records + familiarity model;
  6. maps: t-SNE/UMAP of the frozen and fine-tuned spaces (``--no-maps`` skips them).

The paper's recipe is ``--paper`` (= ``--loss clip+supcon+bce --supcon-labels binary --w-findings 0
--w-side 0 --w-phrase 0``, whatever the defaults).
The run folder holds head.safetensors, config.json, eval.json (+ eval.md), curves.png,
embedding_map.json, split.json and history.json. Options: ``pipeline.options``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from data.errors import REPORTED, one_line
from pipeline.options import parse_training_args
from pipeline.steps import train_run


def main(argv: list[str] | None = None) -> Path:
    """Every step of the pipeline for these options; returns the run folder."""
    args = parse_training_args(argv, prog="train.py")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return train_run(args)


def cli(argv: list[str] | None = None) -> int:
    """``python train.py``: ``main`` with input errors reported as one line (exit 2)."""
    try:
        main(argv)
    except REPORTED as exc:  # the inputs' fault (data.errors): one line, exit 2; anything else keeps its traceback
        print(one_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
