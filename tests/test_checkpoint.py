"""Checkpoints (round trip, refusal of another backbone's head, corruption) and RetrievalModel,
on a small deterministic stand-in backbone so these tests need no model weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.backbones import Backbone
from model.checkpoint import (
    CONFIG_FILE,
    HEAD_FILE,
    CheckpointError,
    head_checksum,
    load_checkpoint,
    save_checkpoint,
)
from model.head import RetrievalHead
from model.retrieval_model import RetrievalModel
from model.transform import build_transform, preprocess_identity


class TinyBackbone(Backbone):
    """Fixed random projections of pixels and of character counts: deterministic and instant."""

    name = "tiny"
    shared_space = False
    context_length = 32

    def __init__(self, backbone_id: str = "tiny:v1", seed: int = 0) -> None:
        super().__init__(build_transform(16, (0.5,) * 3, (0.5,) * 3))
        self.backbone_id = backbone_id
        self.preprocess_id = preprocess_identity(16, (0.5,) * 3, (0.5,) * 3)
        self.image_dim, self.text_dim = 24, 20
        gen = torch.Generator().manual_seed(seed)
        self._w_img = torch.randn(3 * 16 * 16, self.image_dim, generator=gen)
        self._w_txt = torch.randn(128, self.text_dim, generator=gen)

    def _image_features(self, pixels):
        return pixels.flatten(1) @ self._w_img

    def _text_features(self, texts):
        counts = torch.zeros(len(texts), 128)
        for row, text in enumerate(texts):
            for ch in text[: self.context_length].encode("ascii", "replace"):
                counts[row, ch % 128] += 1
        return counts @ self._w_txt + 1e-3

    def text_token_count(self, text):
        return len(text)


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20 + i, 30), dtype=np.uint8)) for i in range(3)]


TEXTS = ["small left pleural effusion", "normal heart size", "no acute cardiopulmonary abnormality"]


@pytest.fixture()
def head() -> RetrievalHead:
    torch.manual_seed(0)
    return RetrievalHead(24, 20, embed_dim=8, hidden_dim=16)


@pytest.fixture()
def saved_run(tmp_path, head) -> Path:
    run = tmp_path / "run"
    save_checkpoint(run, head, {"backbone_id": "tiny:v1", "backbone_name": "tiny", "loss": "clip+supcon+bce", "epochs": 3})
    return run


# ----------------------------------------------------------------------------------------
# checkpoint files
# ----------------------------------------------------------------------------------------

def test_round_trip_is_bitwise(saved_run, head):
    config = json.loads((saved_run / CONFIG_FILE).read_text())
    assert config["backbone_id"] == "tiny:v1" and config["backbone_name"] == "tiny"
    assert config["head"] == head.config and config["format_version"] == 1
    assert config["loss"] == "clip+supcon+bce" and config["epochs"] == 3
    assert config["head_sha256"] == head_checksum(saved_run) and len(config["head_sha256"]) == 64
    assert sorted(p.name for p in saved_run.iterdir()) == [CONFIG_FILE, HEAD_FILE]  # no temp files left

    loaded, loaded_config = load_checkpoint(saved_run, expected_backbone_id="tiny:v1")
    assert loaded_config == config and not loaded.training
    original = head.state_dict()
    assert original.keys() == loaded.state_dict().keys()
    assert all(torch.equal(original[k], v) for k, v in loaded.state_dict().items())
    head.eval()
    x_img, x_txt = torch.randn(4, 24), torch.randn(4, 20)
    with torch.no_grad():
        assert torch.equal(head.encode_image(x_img), loaded.encode_image(x_img))
        assert torch.equal(head.encode_text(x_txt), loaded.encode_text(x_txt))


def test_save_takes_ids_from_backbone_and_requires_them(tmp_path, head):
    save_checkpoint(tmp_path / "a", head, {"epochs": 1}, backbone=TinyBackbone())
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert (config["backbone_id"], config["backbone_name"]) == ("tiny:v1", "tiny")
    with pytest.raises(ValueError, match="backbone"):
        save_checkpoint(tmp_path / "b", head, {"epochs": 1})
    with pytest.raises(ValueError, match="disagrees"):
        save_checkpoint(tmp_path / "c", head, {"backbone_id": "other"}, backbone=TinyBackbone())


def test_refuses_a_head_trained_on_another_backbone(saved_run):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved_run, expected_backbone_id="biomedclip@sha256:0123456789abcdef")
    assert "tiny:v1" in str(info.value) and "biomedclip@sha256:0123456789abcdef" in str(info.value)


def test_truncated_head_file(saved_run):
    path = saved_run / HEAD_FILE
    path.write_bytes(path.read_bytes()[:-37])
    with pytest.raises(CheckpointError, match="head.safetensors is corrupt or truncated"):
        load_checkpoint(saved_run)


def test_garbage_head_file(saved_run):
    (saved_run / HEAD_FILE).write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(CheckpointError, match="head.safetensors is corrupt or truncated"):
        load_checkpoint(saved_run)


def test_flipped_byte_is_caught_by_the_checksum(saved_run):
    path = saved_run / HEAD_FILE
    payload = bytearray(path.read_bytes())
    payload[-5] ^= 0xFF  # inside the tensor data: still parses, different weights
    path.write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(saved_run)


def test_missing_pieces_name_the_folder(tmp_path, saved_run):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "never-trained")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=str(tmp_path / "empty")):
        load_checkpoint(tmp_path / "empty")
    (saved_run / HEAD_FILE).unlink()
    with pytest.raises(CheckpointError, match="no head.safetensors"):
        load_checkpoint(saved_run)
    with pytest.raises(CheckpointError):
        head_checksum(saved_run)


def test_unknown_format_version_is_refused(saved_run):
    config = json.loads((saved_run / CONFIG_FILE).read_text())
    config["format_version"] = 99
    (saved_run / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(saved_run)


# ----------------------------------------------------------------------------------------
# RetrievalModel
# ----------------------------------------------------------------------------------------

def test_retrieval_model_embeddings(head):
    model = RetrievalModel(TinyBackbone(), head)
    assert model.head_checksum == "" and model.embed_dim == 8 and model.backbone_id == "tiny:v1"
    img = model.embed_images(_images())
    txt = model.embed_texts(TEXTS)
    assert img.shape == (3, 8) and txt.shape == (3, 8)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    # cached-feature path gives the same vectors as the end-to-end path
    feats = TinyBackbone().encode_images(_images()).numpy()
    assert np.array_equal(model.project_image_features(feats), img)
    assert np.array_equal(model.project_text_features(TinyBackbone().encode_texts(TEXTS).numpy()), txt)
    prob = model.abnormal_probability(img)
    assert prob.shape == (3,) and prob.dtype == np.float32 and ((prob > 0) & (prob < 1)).all()
    expected = torch.sigmoid(head.classify(torch.from_numpy(img))).detach().numpy()
    assert np.allclose(prob, expected, atol=1e-6)
    assert model.embed_images([]).shape == (0, 8) and model.embed_texts([]).shape == (0, 8)
    with pytest.raises(ValueError):
        model.project_image_features(np.zeros((2, 5), np.float32))


def test_retrieval_model_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="dims"):
        RetrievalModel(TinyBackbone(), RetrievalHead(100, 20, embed_dim=8))


def test_from_run_reproduces_embeddings_exactly(saved_run, head):
    before = RetrievalModel(TinyBackbone(), head)
    expected_img, expected_txt = before.embed_images(_images()), before.embed_texts(TEXTS)

    after = RetrievalModel.from_run(saved_run, backbone=TinyBackbone())
    assert after.head_checksum == head_checksum(saved_run)
    assert np.array_equal(after.embed_images(_images()), expected_img)
    assert np.array_equal(after.embed_texts(TEXTS), expected_txt)


def test_from_run_refuses_another_backbone(saved_run):
    with pytest.raises(CheckpointError, match="tiny:v2"):
        RetrievalModel.from_run(saved_run, backbone=TinyBackbone(backbone_id="tiny:v2"))


def test_from_run_creates_the_backbone_named_in_config(saved_run, monkeypatch):
    import model.factory

    calls = []

    def fake_create_backbone(name, path=None, cache_dir=None, device="cpu"):
        calls.append((name, path))
        return TinyBackbone()

    monkeypatch.setattr(model.factory, "create_backbone", fake_create_backbone)
    loaded = RetrievalModel.from_run(saved_run, backbone_path="/models/biomedclip")
    assert calls == [("tiny", "/models/biomedclip")]
    assert loaded.backbone_id == "tiny:v1"


def test_save_killed_after_its_commit_point_is_completed_by_the_next_load(tmp_path, monkeypatch):
    """config.json is the commit point: weights left pending behind it are moved into place on load."""
    import os as _os

    from model.checkpoint import HEAD_FILE, PENDING_SUFFIX, load_checkpoint, save_checkpoint
    from model.head import RetrievalHead

    cfg = {"backbone_id": "b", "backbone_name": "offline"}
    torch.manual_seed(0)
    first, second = RetrievalHead(8, 4, embed_dim=6, hidden_dim=16), RetrievalHead(8, 4, embed_dim=6, hidden_dim=16)
    save_checkpoint(tmp_path, first, cfg)
    real_replace = _os.replace

    def die_on_final_rename(src, dst):
        if str(dst).endswith(HEAD_FILE) and str(src).endswith(PENDING_SUFFIX):
            raise KeyboardInterrupt("killed between the config commit and the weights rename")
        return real_replace(src, dst)

    monkeypatch.setattr(_os, "replace", die_on_final_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, second, cfg)
    monkeypatch.setattr(_os, "replace", real_replace)
    loaded, _ = load_checkpoint(tmp_path)
    for name, tensor in second.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not (tmp_path / (HEAD_FILE + PENDING_SUFFIX)).exists()


def test_run_options_are_read_from_args_and_from_runs_written_before():
    from model.checkpoint import run_option

    now = {"args": {"loss": "clip", "seed": 3, "epochs": 5}, "data": "demo"}
    before = {"loss": "clip+supcon", "seed": 1, "optim": {"epochs": 40}, "args": {"demo_seed": 0}}
    assert [run_option(now, k) for k in ("loss", "seed", "epochs", "data")] == ["clip", 3, 5, "demo"]
    assert [run_option(before, k) for k in ("loss", "seed", "epochs", "demo_seed")] == ["clip+supcon", 1, 40, 0]
    assert run_option(before, "missing", "x") == "x"
