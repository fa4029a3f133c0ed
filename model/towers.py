"""Which module of each backbone a runtime exports, with which inputs, and how its runner is called.

``attach_runtime(backbone, "openvino")`` compiles the backbone's image and text towers
(``runtime.inference``) and sets them as the backbone's runners; tokenisation, preprocessing and
the final L2 normalisation stay in Python, exactly as on the torch path.

* open_clip image tower: ``model.encode_image`` with open_clip's ``nn.MultiheadAttention`` split
  into plain linear layers (``runtime.quantize.SelfAttention``: the same computation; torch's
  fused inference kernel for it has no ONNX export).
* open_clip text tower: ``encode_trimmed_text`` on tokens cut after the batch's last non-pad
  token, as the torch path does (CLIP's causal transformer, BiomedCLIP's PubMedBERT).
* offline image tower: EfficientNet-Lite0's blocks[4] features pooled on the 4x4 grid; offline text tower:
  MiniLM with sentence-transformers' mean pooling on its tokenizer's ids and attention mask.

A backbone whose image tower runs torch's dynamic int8 (``+int8``) keeps that tower on torch. One
named ``+ortint8`` runs its image tower in ONNX Runtime's dynamic int8 (``runtime.inference.quantize_onnx``),
whatever the runtime of its text tower; it has no torch fallback (its features are int8's), so
it fails with :class:`BackboneUnavailableError` where ONNX Runtime cannot run it.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from model.backbones import (
    INT8_SUFFIX,
    OFFLINE_GRID,
    ORT_INT8_SUFFIX,
    Backbone,
    BackboneUnavailableError,
    OfflineBackbone,
    OpenClipBackbone,
    encode_trimmed_text,
    stage_feature_map,
    text_trim_pad_id,
    unpadded_length,
)
from runtime.inference import TowerSpec, compile_tower
from runtime.option import resolve_runtime

log = logging.getLogger(__name__)

IMAGE_AXES = {"pixels": {0: "batch"}}
TOKEN_AXES = {"tokens": {0: "batch", 1: "length"}}


class _Call(nn.Module):
    """``fn(*inputs)`` as a module, so ``torch.onnx.export`` can trace it (``owner`` holds the weights)."""

    def __init__(self, owner: nn.Module, fn) -> None:
        super().__init__()
        self.owner, self.fn = owner, fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.owner, *inputs)


def _open_clip_image(owner: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return owner.encode_image(pixels)


def _offline_image(owner: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return grid_pool(stage_feature_map(owner, pixels), OFFLINE_GRID)


def grid_pool(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """``adaptive_avg_pool2d(fmap, grid).flatten(1)`` written as slices and means: ONNX has no
    adaptive pooling whose output size does not divide the input (14x14 -> 4x4 here). The bins are
    torch's: rows ``floor(i*H/g)`` to ``ceil((i+1)*H/g)``, overlapping when g does not divide H."""
    height, width = int(fmap.shape[-2]), int(fmap.shape[-1])
    cells = []
    for i in range(grid):
        top, bottom = (i * height) // grid, -((-(i + 1) * height) // grid)
        for j in range(grid):
            left, right = (j * width) // grid, -((-(j + 1) * width) // grid)
            cells.append(fmap[:, :, top:bottom, left:right].mean(dim=(2, 3)))
    return torch.stack(cells, dim=-1).flatten(1)  # channel-major, as adaptive pooling's flatten


def _sentence_embedding(owner: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return owner({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]


def _pixels_example(backbone: Backbone) -> tuple[torch.Tensor]:
    from PIL import Image

    side = backbone.preprocess(Image.new("L", (8, 8))).shape[-1]
    return (torch.randn(2, 3, side, side),)


def image_spec(backbone: Backbone) -> TowerSpec:
    """The image tower to export for ``backbone``."""
    if isinstance(backbone, OfflineBackbone):
        def build():
            return _Call(backbone.image_model, _offline_image), _pixels_example(backbone)
    else:
        def build():
            from runtime.quantize import split_open_clip_attention

            # a copy: the split attention must not change the model torch serves with
            model = split_open_clip_attention(copy.deepcopy(backbone.model)).eval()
            return _Call(model, _open_clip_image), _pixels_example(backbone)
    return TowerSpec("image", ("pixels",), IMAGE_AXES, build)


def text_spec(backbone: Backbone) -> TowerSpec:
    """The text tower to export for ``backbone``."""
    if isinstance(backbone, OfflineBackbone):
        def build():
            # padded rows in the example: a trace of an unpadded batch may drop the mask
            feats = _tokenize(backbone, ["a short one", "a longer example sentence with more tokens"])
            return _Call(backbone.text_model, _sentence_embedding), (feats["input_ids"], feats["attention_mask"])
        return TowerSpec("text", ("input_ids", "attention_mask"),
                         {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}, build)

    def build_open_clip():
        from runtime.quantize import split_open_clip_attention

        model = split_open_clip_attention(copy.deepcopy(backbone.model)).eval()
        tokens = backbone.tokenizer(["a short one", "a longer example sentence with more tokens"],
                                    context_length=backbone.context_length)
        pad_id = text_trim_pad_id(backbone.model)
        if pad_id is not None:
            tokens = tokens[:, :unpadded_length(tokens, pad_id)]
            return _Call(model, encode_trimmed_text), (tokens,)
        return _Call(model, lambda m, t: m.encode_text(t)), (tokens,)
    return TowerSpec("text", ("tokens",), TOKEN_AXES, build_open_clip)


def open_clip_text_runner(backbone: OpenClipBackbone, tower):
    pad_id = text_trim_pad_id(backbone.model)

    def run(texts: list[str]) -> torch.Tensor:
        tokens = backbone.tokenizer(texts, context_length=backbone.context_length)
        if pad_id is not None:
            tokens = tokens[:, :unpadded_length(tokens, pad_id)]
        return tower(tokens)
    return run


def _tokenize(backbone: OfflineBackbone, texts: list[str]) -> dict[str, torch.Tensor]:
    """sentence-transformers' tokenisation (``preprocess`` since 6.x, ``tokenize`` before)."""
    model = backbone.text_model
    return (getattr(model, "preprocess", None) or model.tokenize)(texts)


def offline_text_runner(backbone: OfflineBackbone, tower):
    def run(texts: list[str]) -> torch.Tensor:
        feats = _tokenize(backbone, texts)
        return tower(feats["input_ids"], feats["attention_mask"])
    return run


def attach_runtime(backbone: Backbone, runtime: str) -> Backbone:
    """Compile ``backbone``'s towers in ``runtime`` (``auto`` resolved by ``runtime.inference``) and
    make them its runners; ``torch`` detaches them. Returns ``backbone``."""
    runtime = resolve_runtime(runtime)
    ort_int8 = backbone.name.endswith(ORT_INT8_SUFFIX)
    backbone.image_runner = backbone.text_runner = None
    backbone.runtime = "torch"
    if runtime == "torch" and not ort_int8:
        return backbone
    base_id = backbone.backbone_id.removesuffix(INT8_SUFFIX).removesuffix(ORT_INT8_SUFFIX)
    if backbone.name.endswith(INT8_SUFFIX):
        log.info("%s: the image tower stays on torch's dynamic int8; text tower in %s", backbone.name, runtime)
        image = None
    elif ort_int8:
        image = compile_tower("onnxruntime", base_id, image_spec(backbone), int8=True)
        if image is None:
            raise BackboneUnavailableError(f"{backbone.name}: its int8 image tower needs onnxruntime (see the log)")
    else:
        image = compile_tower(runtime, base_id, image_spec(backbone))
    text = compile_tower(runtime, base_id, text_spec(backbone))
    if image is not None:
        backbone.image_runner = image
    if text is not None:
        backbone.text_runner = (offline_text_runner if isinstance(backbone, OfflineBackbone)
                                 else open_clip_text_runner)(backbone, text)
    if image is not None or text is not None:
        backbone.runtime = runtime if text is not None or not ort_int8 else "torch"
    return backbone
