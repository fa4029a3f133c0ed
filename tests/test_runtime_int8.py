"""Low precision in the runtime (``+ortint8``: ONNX Runtime dynamic int8): opt-in, its own
identity, and its fidelity measured against float32 on the REAL pretrained offline towers."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from model.backbones import BackboneUnavailableError
from model.checkpoint import CheckpointError
from model.factory import create_backbone
from model.head import RetrievalHead
from model.retrieval_model import RetrievalModel
from runtime.inference import compile_tower
from model.towers import image_spec, text_spec
from tests.test_backbones import write_tiny_clip_folder

TEXTS = ["small left pleural effusion", "no acute cardiopulmonary abnormality", "cardiomegaly"]


def _images() -> list[Image.Image]:
    return [Image.fromarray(skdata.camera()), Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.astronaut())]


@pytest.fixture()
def tiny_clip(tmp_path) -> str:
    write_tiny_clip_folder(tmp_path / "tiny", seed=1, weights_name="open_clip_model.safetensors")
    return str(tmp_path / "tiny")


def test_ortint8_is_opt_in_with_its_own_identity(tiny_clip):
    fp32 = create_backbone("clip", path=tiny_clip, runtime="torch")
    int8 = create_backbone("clip+ortint8", path=tiny_clip, runtime="torch")
    assert int8.name == "clip+ortint8" and int8.backbone_id == fp32.backbone_id + "+ortint8"
    assert int8.image_runner.runtime == "onnxruntime" and int8.image_runner.path.name == "model.int8.onnx"
    assert int8.text_runner is None  # the text tower stays float32, on the runtime asked for (torch here)
    images = _images()
    cosine = (fp32.encode_images(images) * int8.encode_images(images)).sum(dim=1)
    assert float(cosine.min()) > 0.99 and float(cosine.min()) < 1.0  # quantised: close, not equal
    assert torch.equal(fp32.encode_texts(TEXTS), int8.encode_texts(TEXTS))
    head = RetrievalHead(fp32.image_dim, fp32.text_dim)
    with pytest.raises(CheckpointError, match=r"\+ortint8"):
        RetrievalModel(int8, head, {"backbone_id": fp32.backbone_id})  # a float32 head never serves int8 queries


def test_ortint8_without_onnxruntime_fails_instead_of_serving_float(tiny_clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackboneUnavailableError, match="onnxruntime"):
        create_backbone("clip+ortint8", path=tiny_clip, runtime="torch")
    with pytest.raises(ValueError, match="one int8 variant"):
        create_backbone("clip+int8+ortint8", path=tiny_clip)


def _nearest(x: np.ndarray, k: int = 10) -> np.ndarray:
    sims = x @ x.T
    np.fill_diagonal(sims, -2.0)
    return np.argsort(-sims, axis=1)[:, :k]


def _kept(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(p) & set(q)) / 10 for p, q in zip(_nearest(a), _nearest(b))]))


def test_ortint8_fidelity_on_real_minilm_and_iu_reports():
    """MiniLM (real weights) on 120 real IU reports, the set tests/test_quantize.py measures
    torch's int8 on (mean cosine 0.974, 77% of the 10 nearest kept). ONNX Runtime's int8
    measured 0.991 mean / 0.985 min, 86% kept."""
    from data.iu_xray import load_iu_reports
    from model.towers import offline_text_runner

    texts = [s.report_text for s in load_iu_reports()[:200] if s.report_text.strip()][:120]
    backbone = create_backbone("offline", runtime="torch")
    reference = backbone.encode_texts(texts).numpy()
    tower = compile_tower("onnxruntime", backbone.backbone_id, text_spec(backbone), int8=True)
    assert tower is not None and tower.path.name == "model.int8.onnx"
    backbone.text_runner = offline_text_runner(backbone, tower)
    quantized = backbone.encode_texts(texts).numpy()
    cosine = (reference * quantized).sum(axis=1)
    assert cosine.mean() > 0.985 and cosine.min() > 0.97, (cosine.mean(), cosine.min())
    assert _kept(reference, quantized) > 0.8
    assert cosine.mean() < 0.9999  # real weights DO move


def test_ortint8_on_real_efficientnet_quantizes_nothing_of_the_conv_net():
    """EfficientNet-Lite0 (real ImageNet weights): dynamic int8 covers matrix products, and the
    offline image tower's features are convolutions only, so its '+ortint8' features equal
    float32's (measured: nothing to gain there; the conv tower already answers in ~40 ms)."""
    backbone = create_backbone("offline", runtime="torch")
    images = _images()
    reference = backbone.encode_images(images)
    tower = compile_tower("onnxruntime", backbone.backbone_id, image_spec(backbone), int8=True)
    assert tower is not None
    backbone.image_runner = tower
    cosine = (reference * backbone.encode_images(images)).sum(dim=1)
    assert float(cosine.min()) > 0.9999
