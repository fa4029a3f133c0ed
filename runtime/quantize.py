"""Dynamic int8 quantisation of a frozen tower's linear layers, for fast CPU queries.

Why: a ViT-B/16 image query is ~35 GFLOP of matrix products, 0.35-0.45 s in float32 on two
CPU cores here; int8 weights with per-call activation scales (``torch.ao`` dynamic
quantisation, fbgemm kernels) run them ~1.6-2x faster (``python -m bench.query``).

The price is fidelity, and random weights hide it: the ViT-B/16 with random weights keeps a
feature cosine of 0.9998 to float32, but the pretrained MiniLM text model (real weights, real
IU reports) drops to 0.974 mean cosine and keeps 77% of each report's 10 nearest reports
(``tests/test_quantize.py``). Most of that loss is in the activations (one scale per call,
7 bits on AVX2 fbgemm to avoid overflow; with 8 bits the cosine was 0.991). So int8 is
opt-in (``<backbone>+int8``) and must be checked on the real model before it serves: train
the same data with and without ``+int8`` and compare the two evaluation reports.

open_clip's own transformer blocks use ``nn.MultiheadAttention``, whose packed q/k/v weight
is a bare parameter that dynamic quantisation skips (a quarter of each block's weights).
:class:`SelfAttention` is the same computation with that weight in an ``nn.Linear``, so it
gets quantised too. timm ViTs (BiomedCLIP's image tower) and Hugging Face BERT towers
(BiomedCLIP's PubMedBERT, MiniLM) already use ``nn.Linear`` everywhere.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` self-attention rebuilt from two ``nn.Linear`` layers.

    Same call signature and output as the module it replaces (``(out, None)``), for
    self-attention (query, key and value the same tensor) without a key padding mask, which is
    how open_clip's ``ResidualAttentionBlock`` calls it.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise ValueError("only self-attention with a packed q/k/v projection can be rebuilt")
        dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=mha.in_proj_bias is not None)
        self.out_proj = nn.Linear(dim, dim, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(mha.in_proj_weight)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                self.qkv.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.requires_grad_(mha.in_proj_weight.requires_grad)
        self.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        **_: object,
    ) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise NotImplementedError("SelfAttention only computes self-attention (key and value = query)")
        if key_padding_mask is not None or need_weights:
            raise NotImplementedError("SelfAttention supports neither key_padding_mask nor need_weights")
        x = query if self.batch_first else query.transpose(0, 1)
        batch, length, dim = x.shape
        heads = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(x.dtype)  # additive float mask, as nn.MultiheadAttention takes it
        out = F.scaled_dot_product_attention(
            heads[0], heads[1], heads[2], attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def split_open_clip_attention(module: nn.Module) -> nn.Module:
    """Replace the ``nn.MultiheadAttention`` of every open_clip ``ResidualAttentionBlock`` in
    ``module`` (in place) by an equivalent :class:`SelfAttention`; returns ``module``."""
    from open_clip.transformer import ResidualAttentionBlock

    for block in module.modules():
        if isinstance(block, ResidualAttentionBlock) and isinstance(block.attn, nn.MultiheadAttention):
            block.attn = SelfAttention(block.attn)
    return module


def quantize_int8(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (inference only) with every ``nn.Linear`` in dynamic int8.

    The original is left untouched. Weights are quantised once, per output channel (on the
    pretrained MiniLM: feature cosine to float32 0.974 vs 0.920 per tensor); activations per
    call and per tensor, so no calibration data is needed.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    quantized = split_open_clip_attention(copy.deepcopy(module).eval())
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", message=r".*(deprecated|torchao).*", category=category)
        quantized = quantize_dynamic(quantized, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return quantized.requires_grad_(False)


def count_int8_linears(module: nn.Module) -> int:
    """How many linear layers of ``module`` run in dynamic int8 (0 for a float module)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, DynamicLinear) for m in module.modules())
