"""What the index needs from a model, stated whole: no caller probes an encoder with ``hasattr``.

``model.retrieval_model.RetrievalModel`` is the one implementation; tests use small doubles that
implement every member. The builder reads frozen features through ``backbone`` (shared cache or Ray
shards) and projects them with ``project_*_features``; the engine embeds queries with the
``embed_*`` methods, and scores familiarity on the frozen features they return alongside.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
import torch
from PIL import Image


class FrozenBackbone(Protocol):
    """The frozen towers as the feature cache (``model.features``) and the familiarity fit use them."""

    name: str
    backbone_id: str
    preprocess_id: str
    image_dim: int
    text_dim: int
    context_length: int  # text tokens the text tower reads (the app says when a query is cut)

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


class Encoder(Protocol):
    """A frozen backbone plus a trained head: identity, projections of frozen features, and queries."""

    backbone_id: str
    head_checksum: str
    embed_dim: int
    backbone: FrozenBackbone

    def project_image_features(self, feats: np.ndarray) -> np.ndarray:
        """(N, image_dim) frozen features -> (N, embed_dim) unit vectors (what the builder indexes)."""

    def project_text_features(self, feats: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """(N, text_dim) frozen features of ``texts`` -> (N, embed_dim) unit vectors (the texts: for a head
        that also reads their parsed findings, ``model.knowledge``)."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> (N, embed_dim), straight from pixels."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, embed_dim)."""

    def embed_images_with_features(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(frozen features, embeddings) of images in one backbone pass (familiarity reads the first)."""

    def embed_text_with_features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(frozen (1, text_dim), embedding (1, embed_dim)) of one query text."""

    def abnormal_probability(self, image_emb: np.ndarray) -> np.ndarray:
        """Calibrated P(abnormal) per image embedding, (N,) in [0, 1]."""


def encoder_identity(encoder: Encoder) -> dict[str, Any]:
    """What an index records of the model its vectors came from (``index.manifest.check_identity``)."""
    return {
        "backbone_id": str(encoder.backbone_id),
        "head_checksum": str(encoder.head_checksum),
        "embed_dim": int(encoder.embed_dim),
    }
