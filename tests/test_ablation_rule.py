"""The default-choosing rule of bench.ablation (issue #23), stated before looking at any result."""
from __future__ import annotations

from bench.ablation import PAPER, PREVIOUS_DEFAULT, choose_default


def _row(val_ndcg: float, val_side: float) -> dict:
    return {"val_nDCG@10": {"mean": val_ndcg}, "val_phrase": {"side_swap_rate": {"mean": val_side}}}


def test_best_validation_ndcg_among_the_side_safe_variants():
    rows = {PAPER: _row(0.53, 0.24), PREVIOUS_DEFAULT: _row(0.57, 0.22),
            "clip+supcon[findings]+bce+phrases+side": _row(0.55, 0.09),
            "clip+supcon[findings]+bce+phrases+side x5": _row(0.54, 0.05),
            "clip+supcon[findings]": _row(0.60, 0.01)}  # no BCE: the app needs the classifier
    assert choose_default(rows) == "clip+supcon[findings]+bce+phrases+side"


def test_lowest_validation_side_swap_when_none_qualifies():
    rows = {PAPER: _row(0.53, 0.24), PREVIOUS_DEFAULT: _row(0.57, 0.22),
            "clip+supcon[findings]+bce+phrases+side x5": _row(0.50, 0.12)}
    assert choose_default(rows) == "clip+supcon[findings]+bce+phrases+side x5"


def test_paper_flag_is_the_ablation_paper_row_whatever_the_defaults():
    from bench.ablation import VARIANTS
    from model.training import loss_weights
    from pipeline.options import parse_training_args

    loss, labels, w_findings, w_side, w_phrase, knowledge = VARIANTS[PAPER]
    explicit = parse_training_args(["--loss", loss, "--supcon-labels", labels, "--w-findings", str(w_findings),
                                    "--w-side", str(w_side), "--w-phrase", str(w_phrase), "--knowledge", str(knowledge)])
    flag = parse_training_args(["--paper", "--w-phrase", "3", "--supcon-labels", "findings", "--knowledge", "2"])
    assert loss_weights(flag) == loss_weights(explicit) == {"w_clip": 1.0, "w_supcon": 1.0, "w_bce": 1.0,
                                                            "w_findings": 0.0, "w_side": 0.0, "w_phrase": 0.0,
                                                            "w_flip": 0.0}
    assert flag.supcon_labels == explicit.supcon_labels == "binary"
    assert flag.knowledge == explicit.knowledge == 0.0  # the paper's head reads frozen text features only
