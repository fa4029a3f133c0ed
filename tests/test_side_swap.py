"""Side-swapped reports as hard negatives (model.side_swap, model.loss.side_swap_loss)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.records import Study
from model.loss import CompositeLoss, side_swap_loss
from model.side_swap import swap_rows, swap_sides, swapped_text_features
from model.training import train_head
from pipeline.options import parse_training_args


def _study(i: int, report: str, tags: tuple[str, ...]) -> Study:
    return Study(study_id=f"S{i}", patient_id=f"P{i}", image_paths=(f"/nowhere/{i}.png",), findings=report,
                 impression="", label=int(bool(tags)), tags=tags)


def test_swap_sides_exchanges_whole_words_and_keeps_their_case():
    text = "Left pleural effusion. RIGHT lung clear; right-sided catheter. Leftover brightness, upright."
    assert swap_sides(text) == "Right pleural effusion. LEFT lung clear; left-sided catheter. Leftover brightness, upright."
    assert swap_sides(swap_sides(text)) == text


def test_only_studies_with_a_one_sided_finding_and_sided_words_get_a_swap():
    studies = [
        _study(0, "Small left pleural effusion.", ("Pleural Effusion/left/small",)),
        _study(1, "Bilateral pleural effusions, left greater than right.", ("Pleural Effusion/bilateral",)),
        _study(2, "No acute disease.", ()),
        _study(3, "Right lower lobe opacity.", ("Opacity/lung/base/right",)),
        _study(4, "Effusion.", ("Pleural Effusion/left",)),  # one-sided finding, but no side word to swap
    ]
    assert swap_rows(studies).tolist() == [True, False, False, True, False]


class _CountingBackbone:
    backbone_id, preprocess_id, text_dim = "fake", "fake-pre", 3

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode_texts(self, texts):
        self.calls.append(list(texts))
        return torch.tensor([[float("left" in t.lower()), float("right" in t.lower()), 1.0] for t in texts])


def test_swapped_features_are_embedded_once_and_row_aligned(tmp_path):
    studies = [_study(0, "Left effusion.", ("Pleural Effusion/left",)), _study(1, "Normal.", ()),
               _study(2, "Right effusion.", ("Pleural Effusion/right",))]
    backbone = _CountingBackbone()
    feats, mask = swapped_text_features(backbone, studies, cache_dir=tmp_path)
    assert mask.tolist() == [True, False, True]
    assert backbone.calls == [[swap_sides(studies[0].report_text), swap_sides(studies[2].report_text)]]
    assert feats[0].tolist() == [0.0, 1.0, 1.0] and feats[1].tolist() == [0.0, 0.0, 0.0] and feats[2].tolist() == [1.0, 0.0, 1.0]
    again, _ = swapped_text_features(backbone, studies, cache_dir=tmp_path)
    assert len(backbone.calls) == 1 and np.array_equal(again, feats)  # read back from the cache


def test_side_swap_loss_is_the_two_way_cross_entropy():
    torch.manual_seed(0)
    img, txt, swp = (F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1) for _ in range(3))
    scale = math.log(10.0)
    expected = np.mean([math.log(1 + math.exp(10.0 * float(img[i] @ swp[i] - img[i] @ txt[i]))) for i in range(5)])
    assert float(side_swap_loss(img, txt, swp, scale)) == pytest.approx(expected, rel=1e-9)
    assert float(side_swap_loss(img[:0], txt[:0], swp[:0], scale)) == 0.0
    with pytest.raises(ValueError, match="share a shape"):
        side_swap_loss(img, txt, swp[:3], scale)


def test_composite_loss_adds_the_side_term_only_when_weighted():
    torch.manual_seed(0)
    out = {"image_emb": F.normalize(torch.randn(4, 6), dim=1), "text_emb": F.normalize(torch.randn(4, 6), dim=1),
           "image_logit": torch.zeros(4), "text_logit": torch.zeros(4), "logit_scale": torch.tensor(math.log(10.0))}
    swap = (torch.tensor([0, 2]), F.normalize(torch.randn(2, 6), dim=1))
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    total_off, parts_off = CompositeLoss(1, 0, 0)(out, y, side_swap=swap)
    total_on, parts_on = CompositeLoss(1, 0, 0, w_side=0.5)(out, y, side_swap=swap)
    assert "side" not in parts_off
    assert parts_on["side"] == pytest.approx(float(side_swap_loss(out["image_emb"][[0, 2]], out["text_emb"][[0, 2]], swap[1],
                                                                  out["logit_scale"])))
    assert float(total_on) == pytest.approx(float(total_off) + 0.5 * parts_on["side"])


def _sided_toy(n: int = 240, seed: int = 0):
    """Images whose side shows plainly; reports whose side is one small direction (smaller than the
    noise between reports, as left/right is in MiniLM's space); the swap flips only that direction."""
    rng = np.random.default_rng(seed)
    finding = rng.standard_normal((n, 16))
    side = rng.choice([-1.0, 1.0], size=n)
    side_dir = np.zeros(16)
    side_dir[0] = 1.0
    image = np.concatenate([finding + 0.1 * rng.standard_normal((n, 16)), side[:, None] * np.ones((n, 4))], axis=1)
    report = finding + 0.1 * rng.standard_normal((n, 16)) + 0.25 * side[:, None] * side_dir
    swapped = report - 0.5 * side[:, None] * side_dir  # the same words, the side flipped
    return (torch.tensor(image, dtype=torch.float32), torch.tensor(report, dtype=torch.float32),
            torch.tensor(swapped, dtype=torch.float32))


def test_training_with_the_side_term_tells_a_report_from_its_swap_better():
    """On toy features where the report's side is a short direction, the head trained with the
    side-swap term ranks an image's own report above its swapped twin more often than without."""
    image, report, swapped = _sided_toy()
    n = len(image)
    rows = {"train": np.arange(0, 160), "val": np.arange(160, 200), "test": np.arange(200, n)}
    labels = np.ones(n, dtype=np.int64)
    mask = np.ones(n, dtype=bool)

    def side_accuracy(w_side: float) -> float:
        args = parse_training_args(["--quiet", "--loss", "clip", "--supcon-labels", "binary", "--val-metric", "r10p10",
                                    "--knowledge", "0", "--epochs", "30", "--patience", "30", "--batch-size", "32", "--embed-dim", "16",
                                    "--hidden-dim", "32", "--w-side", str(w_side), "--w-phrase", "0"])
        torch.manual_seed(0)
        trained = train_head(args, image.shape[1], report.shape[1], image, report, torch.ones(n), rows, labels,
                             swapped=(swapped, mask))
        test = rows["test"]
        with torch.no_grad():
            zi = trained.head.encode_image(image[test])
            own = (zi * trained.head.encode_text(report[test])).sum(-1)
            twin = (zi * trained.head.encode_text(swapped[test])).sum(-1)
        return float((own > twin).float().mean())

    assert side_accuracy(5.0) > side_accuracy(0.0) + 0.3


def test_side_term_without_swapped_features_is_refused():
    args = parse_training_args(["--quiet", "--w-side", "1", "--supcon-labels", "binary", "--val-metric", "r10p10"])
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="side-swapped"):
        train_head(args, 3, 3, x, x, torch.zeros(4), {"train": np.arange(4), "val": np.arange(4)}, np.zeros(4, int))
