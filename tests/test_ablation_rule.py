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
