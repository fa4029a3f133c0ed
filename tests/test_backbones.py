"""Backbones: preprocessing of every image mode, the offline towers' weights and semantics,
fail-fast hub loading, and open_clip models loaded from a local folder (the --backbone-path
route), checked against the saved model's own outputs."""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from model.backbones import BackboneUnavailableError, OfflineBackbone
from model.factory import available_backbones, create_backbone
from model.transform import build_transform, to_grayscale8

HUB_TEXT_MODEL = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"  # what BiomedCLIP's config names


@pytest.fixture(scope="module")
def offline() -> OfflineBackbone:
    """Loaded once for the module: it takes a few seconds."""
    return create_backbone("offline")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


# ----------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------

def _gradient_u8(h: int = 60, w: int = 80) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))


def test_16bit_image_is_rescaled_by_its_range_not_clipped():
    u8 = _gradient_u8()
    twelve_bit = (u8.astype(np.int64) * 4095 // 255).astype(np.uint16)  # a 12-bit X-ray in a 16-bit PNG
    gray = np.asarray(to_grayscale8(Image.fromarray(twelve_bit)))  # mode "I;16"
    assert Image.fromarray(twelve_bit).mode == "I;16"
    assert gray.min() == 0 and gray.max() == 255
    assert np.abs(gray.astype(int) - u8.astype(int)).max() <= 1
    # 32-bit integer and float images take the same route
    for arr in (twelve_bit.astype(np.int32) - 1000, twelve_bit.astype(np.float32) / 7.0):
        out = np.asarray(to_grayscale8(Image.fromarray(arr)))
        assert np.abs(out.astype(int) - u8.astype(int)).max() <= 1
    # a constant image does not divide by zero
    assert np.asarray(to_grayscale8(Image.fromarray(np.full((4, 4), 700, np.uint16)))).max() == 0


def test_alpha_is_composited_on_black_and_palette_converted():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :5, 3] = 255  # left half opaque grey, right half transparent
    gray = np.asarray(to_grayscale8(Image.fromarray(rgba, "RGBA")))
    assert (gray[:, :5] == 200).all() and (gray[:, 5:] == 0).all()
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert np.array_equal(np.asarray(to_grayscale8(la)), gray)
    palette = Image.fromarray(_gradient_u8()).convert("P")
    assert to_grayscale8(palette).mode == "L"
    assert to_grayscale8(Image.new("1", (8, 8), 1)).getextrema() == (255, 255)


def test_every_mode_gives_the_same_normalised_three_channel_tensor():
    transform = build_transform(64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    u8 = _gradient_u8(90, 120)
    reference = transform(Image.fromarray(u8))
    assert reference.shape == (3, 64, 64) and reference.dtype == torch.float32
    # grayscale replicated to 3 channels, then (x - 0.5) / 0.25
    assert torch.equal(reference[0], reference[1]) and torch.equal(reference[1], reference[2])
    flat = transform(Image.new("L", (50, 70), 204))
    assert torch.allclose(flat, torch.full((3, 64, 64), (204 / 255 - 0.5) / 0.25), atol=1e-5)
    variants = {
        "RGB": Image.fromarray(u8).convert("RGB"),
        "RGBA": Image.fromarray(u8).convert("RGBA"),
        "I;16": Image.fromarray(u8.astype(np.uint16) * 257),
        "P": Image.fromarray(u8).convert("P"),
    }
    for mode, image in variants.items():
        out = transform(image)
        assert out.shape == (3, 64, 64), mode
        assert torch.allclose(out, reference, atol=0.03), mode


# ----------------------------------------------------------------------------------------
# offline backbone
# ----------------------------------------------------------------------------------------

def test_registry_names():
    assert {"offline", "biomedclip", "clip"} <= set(available_backbones())
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet-from-mars")


def test_offline_dims_and_identity(offline):
    assert (offline.image_dim, offline.text_dim) == (1792, 384)  # 112 channels x 4x4 grid
    assert offline.shared_space is False
    assert offline.context_length == 256
    assert offline.name == "offline"
    assert offline.backbone_id == "offline:efficientnet_lite0-imagenet-stage4grid4x4+all-MiniLM-L6-v2"
    assert "224" in offline.preprocess_id and "0.485" in offline.preprocess_id
    assert not any(p.requires_grad for p in offline.image_model.parameters())
    assert not offline.image_model.training


def test_offline_image_embeddings_are_unit_deterministic_and_batch_independent(offline):
    images = [Image.fromarray(skdata.camera()), Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())]
    first = offline.encode_images(images, batch_size=2)
    again = offline.encode_images(images, batch_size=3)
    assert first.shape == (3, 1792) and first.dtype == torch.float32
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(first, again, atol=1e-5)
    single = offline.encode_images(images[:1])
    assert torch.allclose(single[0], first[0], atol=1e-5)
    assert not first.is_inference() and not first.requires_grad  # usable in autograd downstream
    assert offline.encode_images([]).shape == (0, 1792)


@pytest.mark.parametrize("image_name, expected", [
    ("chelsea", range(281, 286)),  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    ("coffee", [967]),  # espresso
])
def test_efficientnet_weights_give_known_imagenet_predictions(offline, image_name, expected):
    """Through the real (grayscale-first) preprocessing: proves the by-position weight mapping."""
    pixels = offline.preprocess(Image.fromarray(getattr(skdata, image_name)()))[None]
    logits = offline.imagenet_logits(pixels)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in expected


def _disc_film(x: int) -> Image.Image:
    """A grey square with a bright disc centred at image column ``x`` (off the picture: none)."""
    a = np.full((256, 256), 90, np.uint8)
    yy, xx = np.mgrid[:256, :256]
    a[(yy - 150) ** 2 + (xx - x) ** 2 < 30 ** 2] = 230
    return Image.fromarray(a)


def test_offline_features_are_the_stage4_map_on_a_4x4_grid_and_keep_the_side(offline):
    """The features are blocks[4]'s map pooled on a 4x4 grid, and they keep the side: a disc on the
    image's left changes mostly the grid's left columns, one on the right mostly its right columns
    (what a one-sided finding needs). The ImageNet logits continue from the same map."""
    pixels = offline.preprocess(Image.fromarray(skdata.chelsea()))[None]
    with torch.inference_mode():
        fmap = offline.feature_map(pixels)
        assert fmap.shape == (1, 112, 14, 14)
        assert torch.allclose(offline.imagenet_logits_from_map(fmap), offline.imagenet_logits(pixels), atol=1e-4)
        grids = {x: offline.pool_feature_map(offline.feature_map(offline.preprocess(_disc_film(x))[None])).reshape(112, 4, 4)
                 for x in (-999, 60, 196)}
    feats = offline.encode_image_batch(pixels)
    assert torch.allclose(feats, torch.nn.functional.normalize(offline.pool_feature_map(fmap), dim=-1), atol=1e-5)
    for x, (near, far) in ((60, (slice(0, 2), slice(2, 4))), (196, (slice(2, 4), slice(0, 2)))):
        change = (grids[x] - grids[-999]).abs().sum(dim=(0, 1))  # per grid column
        assert float(change[near].sum()) > 2 * float(change[far].sum()), (x, change.tolist())


def test_minilm_semantic_sanity(offline):
    a, b, c = offline.encode_texts(["small left pleural effusion", "left pleural effusion, small", "normal heart size"])
    assert _cos(a, b) > _cos(a, c) + 0.3
    assert torch.allclose(torch.stack([a, b, c]).norm(dim=-1), torch.ones(3), atol=1e-5)
    assert offline.encode_texts([]).shape == (0, 384)
    with pytest.raises(TypeError):
        offline.encode_texts("one string")


def test_offline_text_truncation_and_token_count(offline):
    assert offline.text_token_count("the lungs are clear") == 6  # [CLS] 4 words [SEP]
    assert offline.text_token_count("pleural") == 5  # word pieces: pl ##eur ##al
    long_text = "the lungs are clear " * 80  # 320 words -> > 256 word pieces
    assert offline.text_token_count(long_text) > offline.context_length
    # everything past context_length is cut, so a different tail changes nothing
    base, changed = offline.encode_texts([long_text + "pneumothorax", long_text + "cardiomegaly"])
    assert torch.allclose(base, changed, atol=1e-6)


# ----------------------------------------------------------------------------------------
# hub models fail fast offline
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hub_text", [
    ("biomedclip", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
    ("clip", "timm/vit_base_patch16_clip_224.openai"),
])
def test_hub_backbone_offline_fails_fast_with_instructions(name, hub_text, tmp_path, monkeypatch):
    import huggingface_hub

    assert os.environ.get("HF_HUB_OFFLINE") == "1"

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted in offline mode")

    def no_retry_wait(seconds):  # hub retries back off with time.sleep: failing fast means never waiting
        raise AssertionError(f"waited {seconds}s for a retry in offline mode")

    def no_connection(self, address):
        raise AssertionError(f"a connection to {address} was attempted in offline mode")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(time, "sleep", no_retry_wait)
    monkeypatch.setattr(socket.socket, "connect", no_connection)
    with pytest.raises(BackboneUnavailableError) as info:  # fail fast: no download, no connection, no back-off
        create_backbone(name, cache_dir=str(tmp_path))  # empty cache
    message = str(info.value)
    assert hub_text in message and "--backbone-path" in message and "not in the local cache" in message


def test_missing_or_incomplete_folder_is_reported(tmp_path):
    with pytest.raises(BackboneUnavailableError, match="does not exist"):
        create_backbone("biomedclip", path=str(tmp_path / "nope"))
    with pytest.raises(BackboneUnavailableError, match="open_clip_config.json"):
        create_backbone("biomedclip", path=str(tmp_path))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}}))
    with pytest.raises(BackboneUnavailableError, match="no weights"):
        create_backbone("biomedclip", path=str(tmp_path))


# ----------------------------------------------------------------------------------------
# open_clip models from a local folder in the hub layout
# ----------------------------------------------------------------------------------------

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "resize_mode": "shortest"}


def _save_weights(model: torch.nn.Module, folder: Path, weights_name: str) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if weights_name.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, str(folder / weights_name))
    else:
        torch.save(state, folder / weights_name)


def write_tiny_clip_folder(folder: Path, seed: int, weights_name: str) -> torch.nn.Module:
    """A few-layer open_clip CLIP (builtin transformer + CLIP BPE tokenizer) in the hub layout."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(TINY_CLIP_CFG))).eval()
    _save_weights(model, folder, weights_name)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": TINY_PREPROCESS}))
    return model


@pytest.mark.parametrize("weights_name", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_local_folder_tiny_clip_matches_saved_model(tmp_path, weights_name):
    import open_clip

    folder = tmp_path / "tiny"
    reference = write_tiny_clip_folder(folder, seed=1, weights_name=weights_name)
    backbone = create_backbone("biomedclip", path=str(folder))

    assert backbone.shared_space and (backbone.image_dim, backbone.text_dim) == (32, 32)
    assert backbone.context_length == 24
    assert backbone.backbone_id.startswith("biomedclip@sha256:")
    assert "32" in backbone.preprocess_id and "bilinear" in backbone.preprocess_id and "0.25" in backbone.preprocess_id

    images = [Image.fromarray(skdata.camera()), Image.fromarray(skdata.chelsea())]
    pixels = torch.stack([backbone.preprocess(im) for im in images])
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        expected_img = F.normalize(reference.encode_image(pixels), dim=-1)
        texts = ["small left pleural effusion", "normal heart size"]
        expected_txt = F.normalize(reference.encode_text(open_clip.SimpleTokenizer(context_length=24)(texts)), dim=-1)
    assert torch.allclose(backbone.encode_images(images), expected_img, atol=1e-5)
    assert torch.allclose(backbone.encode_texts(texts), expected_txt, atol=1e-5)

    # BPE count + start/end tokens; long text is truncated to the 24-token context
    assert backbone.text_token_count("normal heart size") == 5
    long_a, long_b = backbone.encode_texts(["lungs clear " * 30 + "effusion", "lungs clear " * 30 + "pneumonia"])
    assert backbone.text_token_count("lungs clear " * 30) > 24
    assert torch.allclose(long_a, long_b, atol=1e-6)


def test_backbone_id_follows_the_weights_not_the_folder(tmp_path):
    write_tiny_clip_folder(tmp_path / "a", seed=1, weights_name="open_clip_model.safetensors")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    write_tiny_clip_folder(tmp_path / "b", seed=2, weights_name="open_clip_model.safetensors")
    ids = [create_backbone("biomedclip", path=str(tmp_path / d)).backbone_id for d in ("a", "copy", "b")]
    assert ids[0] == ids[1] != ids[2]


def write_tiny_biomedclip_folder(folder: Path) -> torch.nn.Module:
    """BiomedCLIP's real shape in miniature, in the hub layout: timm ViT image tower + Hugging
    Face BERT text tower whose config names a hub model (its config.json and tokenizer are in
    the folder). Returns the saved model."""
    import open_clip
    from transformers import BertConfig, BertTokenizerFast

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "normal", "heart", "size", "small", "left",
             "pleural", "effusion", "lungs", "are", "clear", ",", "."]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(str(folder))
    text_cfg = {"hf_model_name": HUB_TEXT_MODEL, "hf_tokenizer_name": HUB_TEXT_MODEL, "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                                "timm_pool": "", "timm_proj": "linear", "image_size": 160},
                 "text_cfg": text_cfg}
    torch.manual_seed(3)
    reference = open_clip.CustomTextCLIP(
        embed_dim=16, vision_cfg=model_cfg["vision_cfg"],
        text_cfg={**text_cfg, "hf_model_name": str(folder), "hf_model_pretrained": False},
    ).eval()
    _save_weights(reference, folder, "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": TINY_PREPROCESS}))
    return reference


def test_local_folder_biomedclip_layout_with_hf_text_tower(tmp_path):
    """BiomedCLIP's real shape: timm ViT image tower + Hugging Face BERT text tower whose config
    names a hub model; the loader must take the tower's config.json and tokenizer from the folder."""
    from transformers import BertTokenizerFast

    folder = tmp_path / "biomedclip-like"
    reference = write_tiny_biomedclip_folder(folder)

    backbone = create_backbone("biomedclip", path=str(folder))
    assert (backbone.image_dim, backbone.context_length) == (16, 16)
    assert backbone.text_token_count("normal heart size") == 5  # [CLS] 3 words [SEP]

    images = [Image.fromarray(skdata.camera())]
    pixels = torch.stack([backbone.preprocess(im) for im in images])
    assert pixels.shape == (1, 3, 160, 160)
    texts = ["small left pleural effusion", "normal heart size"]
    tokens = BertTokenizerFast.from_pretrained(str(folder))(
        texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected_img = F.normalize(reference.encode_image(pixels), dim=-1)
        expected_txt = F.normalize(reference.encode_text(tokens), dim=-1)
    assert torch.allclose(backbone.encode_images(images), expected_img, atol=1e-5)
    assert torch.allclose(backbone.encode_texts(texts), expected_txt, atol=1e-5)


def test_random_openclip_config_is_seeded_and_labelled(tmp_path):
    first = create_backbone("openclip-random:ViT-S-16-alt")
    second = create_backbone("openclip-random:ViT-S-16-alt")
    assert "random" in first.backbone_id and first.backbone_id == second.backbone_id
    assert first.image_dim == first.text_dim == 256 and first.context_length == 77
    image = [Image.fromarray(skdata.camera())]
    assert torch.equal(first.encode_images(image), second.encode_images(image))
    assert torch.equal(first.encode_texts(["normal chest"]), second.encode_texts(["normal chest"]))
