"""Flip twins, the image-side hard negative (model.flip_twins, model.loss.flip_twin_loss, --w-flip)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import model.flip_twins as flip_twins
from data.records import Study
from model.checkpoint import run_option
from model.features import feature_cache_dir
from model.flip_twins import flipped_image_features, mirror
from model.loss import CompositeLoss, flip_twin_loss
from model.training import loss_weights, train_head
from pipeline.options import parse_training_args

SCALE = math.log(10.0)


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_flip_loss_is_low_when_the_image_keeps_its_side_and_high_when_swapped():
    """Report "left" (axis 0), its film on the left (axis 0), its mirror on the right (axis 1)."""
    text, left, right = _unit([1.0, 0.2]), _unit([1.0, 0.0]), _unit([0.0, 1.0])
    consistent = float(flip_twin_loss(text, left, right, SCALE))
    swapped = float(flip_twin_loss(text, right, left, SCALE))  # the head mixed the film up with its mirror
    assert consistent == pytest.approx(math.log1p(math.exp(10.0 * float(text[0] @ right[0] - text[0] @ left[0]))), rel=1e-9)
    assert consistent < 0.01 < 5.0 < swapped
    same = float(flip_twin_loss(text, left, left, SCALE))  # an image-side blind head: film == mirror
    assert same == pytest.approx(math.log(2.0), rel=1e-9) and consistent < same < swapped


def test_flip_pairs_add_the_mirrored_film_with_the_swapped_report():
    text, swapped_report = _unit([1.0, 0.1]), _unit([0.1, 1.0])
    left, right = _unit([1.0, 0.0]), _unit([0.0, 1.0])
    good = float(flip_twin_loss(text, left, right, SCALE, swapped_report))
    bad = float(flip_twin_loss(text, left, left, SCALE, swapped_report))  # the mirror looks like the film
    assert good < 0.01 and bad > 1.0
    # three two-way terms, averaged: the negative alone is one third of them
    torch.manual_seed(0)
    t, i, f, s = (F.normalize(torch.randn(4, 6, dtype=torch.float64), dim=1) for _ in range(4))
    ce = lambda a, b: np.log1p(np.exp(10.0 * (b - a).numpy()))  # noqa: E731 - two-way CE, answer a
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    expected = np.concatenate([ce(dot(t, i), dot(t, f)), ce(dot(s, f), dot(s, i)), ce(dot(f, s), dot(f, t))]).mean()
    assert float(flip_twin_loss(t, i, f, SCALE, s)) == pytest.approx(expected, rel=1e-9)


def test_flip_loss_refuses_mismatched_shapes_and_is_zero_without_rows():
    t = _unit([1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="share a shape"):
        flip_twin_loss(t, t, t[:1], SCALE)
    with pytest.raises(ValueError, match="share a shape"):
        flip_twin_loss(t, t, t, SCALE, t[:1])
    assert float(flip_twin_loss(t[:0], t[:0], t[:0], SCALE)) == 0.0


def test_composite_loss_adds_the_flip_term_only_when_weighted():
    torch.manual_seed(0)
    out = {"image_emb": F.normalize(torch.randn(4, 6), dim=1), "text_emb": F.normalize(torch.randn(4, 6), dim=1),
           "image_logit": torch.zeros(4), "text_logit": torch.zeros(4), "logit_scale": torch.tensor(SCALE)}
    flip = (torch.tensor([1, 3]), F.normalize(torch.randn(2, 6), dim=1), None)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    total_off, parts_off = CompositeLoss(1, 0, 0)(out, y, flip=flip)
    total_on, parts_on = CompositeLoss(1, 0, 0, w_flip=2.0)(out, y, flip=flip)
    assert "flip" not in parts_off
    assert parts_on["flip"] == pytest.approx(float(flip_twin_loss(out["text_emb"][[1, 3]], out["image_emb"][[1, 3]],
                                                                  flip[1], out["logit_scale"])))
    assert float(total_on) == pytest.approx(float(total_off) + 2.0 * parts_on["flip"])


# ------------------------------------------------------------------------------------ the cache
class _HalvesBackbone:
    """A frozen "image tower" that reads the brightness of the film's left and right halves."""

    name, preprocess_id, image_dim = "halves", "halves-pre", 2

    def __init__(self, backbone_id: str = "halves-v1") -> None:
        self.backbone_id = backbone_id
        self.embedded = 0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.resize((8, 8), Image.NEAREST), dtype=np.float32) / 255.0)

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        self.embedded += len(pixels)
        return torch.stack([pixels[:, :, :4].mean((1, 2)), pixels[:, :, 4:].mean((1, 2))], dim=1)


def _film(path, bright_left: bool) -> str:
    a = np.zeros((64, 64), np.uint8)
    a[:, slice(0, 32) if bright_left else slice(32, 64)] = 200
    Image.fromarray(a).save(path)
    return str(path)


def _studies(tmp_path) -> list[Study]:
    specs = [("Small left pleural effusion.", ("Pleural Effusion/left",), True), ("No acute disease.", (), True),
             ("Right lower lobe opacity.", ("Opacity/lung/base/right",), False),
             ("Left basilar atelectasis.", ("Atelectasis/left",), True)]
    return [Study(study_id=f"S{i}", patient_id=f"P{i}", image_paths=(_film(tmp_path / f"{i}.png", left),), findings=text,
                  impression="", label=int(bool(tags)), tags=tags) for i, (text, tags, left) in enumerate(specs)]


def test_mirror_swaps_the_film_left_to_right(tmp_path):
    film = Image.open(_film(tmp_path / "a.png", True))
    b = _HalvesBackbone()
    orig, flipped = b.encode_image_batch(torch.stack([b.preprocess(film), b.preprocess(mirror(film))]))
    assert orig.tolist() == pytest.approx([200 / 255, 0.0]) and flipped.tolist() == pytest.approx([0.0, 200 / 255])


def test_flipped_features_are_row_aligned_cached_and_resumable(tmp_path, monkeypatch):
    monkeypatch.setattr(flip_twins, "CHUNK", 2)  # two chunks of two studies
    studies, cache = _studies(tmp_path), tmp_path / "cache"
    backbone = _HalvesBackbone()
    feats, mask = flipped_image_features(backbone, studies, cache_dir=cache, progress=False)
    assert mask.tolist() == [True, False, True, True]  # one-sided findings only (model.side_swap.swap_rows)
    v = 200 / 255
    assert np.allclose(feats, [[0.0, v], [0.0, 0.0], [v, 0.0], [0.0, v]])  # mirrored: the sides swapped
    assert backbone.embedded == 3
    again, _ = flipped_image_features(backbone, studies, cache_dir=cache, progress=False)
    assert backbone.embedded == 3 and np.array_equal(again, feats)  # read back, nothing embedded
    (cache / flip_twins.CACHE_FOLDER / "chunk00001.npz").unlink()  # an interrupted run: the second chunk is missing
    resumed, _ = flipped_image_features(backbone, studies, cache_dir=cache, progress=False)
    assert backbone.embedded == 5 and np.array_equal(resumed, feats)  # only the missing chunk's two films
    (cache / flip_twins.CACHE_FOLDER / "chunk00000.npz").write_bytes(b"truncated")
    flipped_image_features(backbone, studies, cache_dir=cache, progress=False)
    assert backbone.embedded == 6  # a damaged chunk is embedded again


def test_the_cache_is_keyed_by_the_backbone(tmp_path):
    studies = _studies(tmp_path)
    one, other = _HalvesBackbone("halves-v1"), _HalvesBackbone("halves-v2")
    assert feature_cache_dir(one, studies, root=tmp_path) != feature_cache_dir(other, studies, root=tmp_path)
    flipped_image_features(one, studies, cache_dir=tmp_path / "c", progress=False)
    flipped_image_features(other, studies, cache_dir=tmp_path / "c", progress=False)  # same folder given by hand
    assert (one.embedded, other.embedded) == (3, 3)  # another backbone's chunks are never read as its own


# ------------------------------------------------------------------------------- options + training
def test_w_flip_parses_and_the_paper_recipe_keeps_it_off():
    args = parse_training_args(["--w-flip", "2.5", "--flip-pairs"])
    assert (args.w_flip, args.flip_pairs, loss_weights(args)["w_flip"]) == (2.5, True, 2.5)
    default = parse_training_args([])
    assert (default.w_flip, default.flip_pairs) == (0.0, False)  # off by default until the grid says otherwise
    paper = parse_training_args(["--paper", "--w-flip", "3", "--flip-pairs"])
    assert (paper.w_flip, paper.flip_pairs, loss_weights(paper)["w_flip"]) == (0.0, False, 0.0)


def _flip_toy(n: int = 240, seed: int = 0):
    """Reports whose side shows plainly; films whose side is one small direction (a quarter of the
    finding's noise), their mirrors the same film with that direction negated."""
    rng = np.random.default_rng(seed)
    finding = rng.standard_normal((n, 16))
    side = rng.choice([-1.0, 1.0], size=n)
    image = finding + 0.1 * rng.standard_normal((n, 16))
    image[:, 0] += 0.25 * side
    mirrored = image.copy()
    mirrored[:, 0] -= 0.5 * side
    report = np.concatenate([finding + 0.1 * rng.standard_normal((n, 16)), side[:, None] * np.ones((n, 4))], axis=1)
    return tuple(torch.tensor(a, dtype=torch.float32) for a in (image, mirrored, report))


@pytest.fixture(scope="module")
def flip_runs():
    image, mirrored, report = _flip_toy()
    n = len(image)
    rows = {"train": np.arange(0, 160), "val": np.arange(160, 200), "test": np.arange(200, n)}
    out = {}
    for w_flip in (0.0, 5.0):
        args = parse_training_args(["--quiet", "--loss", "clip", "--supcon-labels", "binary", "--val-metric", "r10p10",
                                    "--knowledge", "0", "--epochs", "30", "--patience", "30", "--batch-size", "32",
                                    "--embed-dim", "16", "--hidden-dim", "32", "--w-side", "0", "--w-phrase", "0",
                                    "--w-flip", str(w_flip)])
        torch.manual_seed(0)
        trained = train_head(args, image.shape[1], report.shape[1], image, report, torch.ones(n), rows,
                             np.ones(n, dtype=np.int64), flipped=(mirrored, np.ones(n, dtype=bool)))
        test = rows["test"]
        with torch.no_grad():
            zt = trained.head.encode_text(report[test])
            own = (zt * trained.head.encode_image(image[test])).sum(-1)
            twin = (zt * trained.head.encode_image(mirrored[test])).sum(-1)
        out[w_flip] = (args, trained, float((own > twin).float().mean()))
    return out


def test_training_with_the_flip_term_tells_a_film_from_its_mirror_better(flip_runs):
    assert flip_runs[5.0][2] > flip_runs[0.0][2] + 0.3
    assert "flip" in flip_runs[5.0][1].history[0] and "flip" not in flip_runs[0.0][1].history[0]


def test_w_flip_is_recorded_in_the_run_config(flip_runs, tmp_path):
    from pipeline.steps import run_config

    args, trained, _ = flip_runs[5.0]
    backbone = SimpleNamespace(name="toy", backbone_id="toy", preprocess_id="toy", image_dim=16, text_dim=20,
                               shared_space=False)
    data = SimpleNamespace(source=SimpleNamespace(name="toy"), studies=_studies(tmp_path),
                           split={"train": ["S0"], "val": ["S1"], "test": ["S2"]})
    config = run_config(args, backbone, trained, data, {})
    assert run_option(config, "w_flip") == 5.0 and run_option(config, "flip_pairs") is False
    assert config["loss_weights"]["w_flip"] == 5.0


def test_flip_term_without_mirrored_features_is_refused():
    x = torch.zeros(4, 3)
    rows = {"train": np.arange(4), "val": np.arange(4)}
    for argv, match in ((["--w-flip", "1"], "mirrored films"), (["--w-flip", "1", "--flip-pairs"], "side-swapped")):
        args = parse_training_args(["--quiet", "--supcon-labels", "binary", "--val-metric", "r10p10", "--knowledge", "0",
                                    "--w-side", "0", "--w-phrase", "0"] + argv)
        flipped = None if "--flip-pairs" not in argv else (x, np.ones(4, bool))
        with pytest.raises(ValueError, match=match):
            train_head(args, 3, 3, x, x, torch.zeros(4), rows, np.zeros(4, int), flipped=flipped)
