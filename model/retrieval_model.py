"""Backbone + trained head: the one object the index builder and the app embed with."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from model.backbones import Backbone
from model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config
from model.head import RetrievalHead
from model.knowledge import text_inputs

TEXT_CACHE_SIZE = 1024  # text queries remembered per model (a few MB at 256-512 dims)


def _as_tensor(feats: np.ndarray | torch.Tensor, dim: int, what: str) -> torch.Tensor:
    if not isinstance(feats, torch.Tensor):
        feats = np.asarray(feats, dtype=np.float32)
    x = torch.as_tensor(feats, dtype=torch.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N,{dim}), got {tuple(x.shape)}")
    return x


class RetrievalModel:
    """Frozen backbone features -> trained head -> L2-normalised ``embed_dim`` vectors (numpy).

    The head is put in eval mode (dropout off): this object is for inference only.
    """

    def __init__(self, backbone: Backbone, head: RetrievalHead, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        saved_id = self.config.get("backbone_id")
        if saved_id is not None and saved_id != backbone.backbone_id:
            raise CheckpointError(
                f"head was trained on backbone '{saved_id}' but the given backbone is '{backbone.backbone_id}'"
            )
        if (head.image_dim, head.text_dim) != (backbone.image_dim, backbone.text_dim):
            raise ValueError(
                f"head expects features of {head.image_dim}/{head.text_dim} dims (image/text), "
                f"backbone {backbone.backbone_id} gives {backbone.image_dim}/{backbone.text_dim}"
            )
        self.backbone = backbone
        self.head = head.eval()
        self.backbone_id: str = backbone.backbone_id
        self.embed_dim: int = head.embed_dim
        self.head_checksum: str = str(self.config.get("head_sha256", ""))
        # per instance (a class-level lru_cache would keep every model alive); thread-safe
        self._embed_one_text = functools.lru_cache(maxsize=TEXT_CACHE_SIZE)(self._embed_one_text_uncached)
        self._text_pair = functools.lru_cache(maxsize=TEXT_CACHE_SIZE)(self._text_pair_uncached)

    # --- frozen features -> head space -------------------------------------------------
    def project_image_features(self, feats: np.ndarray) -> np.ndarray:
        """(N,image_dim) backbone features (e.g. from the embedding cache) -> (N,embed_dim)."""
        x = _as_tensor(feats, self.head.image_dim, "image features")
        with torch.inference_mode():
            return self.head.encode_image(x).numpy().astype(np.float32, copy=True)

    def project_text_features(self, feats: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """(N,text_dim) backbone features of ``texts`` -> (N,embed_dim). The texts are needed by a head
        with knowledge input (``model.knowledge``: their parsed findings go in beside the features)."""
        _as_tensor(feats, self.head.text_dim, "text features")  # the frozen part's width, checked first
        x = _as_tensor(text_inputs(self.head, np.asarray(feats, np.float32), texts), self.head.text_input_dim,
                       "text inputs")
        with torch.inference_mode():
            return self.head.encode_text(x).numpy().astype(np.float32, copy=True)

    # --- raw inputs -> head space --------------------------------------------------------
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images (any mode) -> (N,embed_dim) float32 L2-normalised."""
        if len(images) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return self.project_image_features(self.backbone.encode_images(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N,embed_dim) float32 L2-normalised (truncated to the backbone's context).

        A single text (what a text query is) is served from an LRU cache of the last
        ``TEXT_CACHE_SIZE`` phrases: the example phrases and repeated queries cost nothing
        after their first run. The model is frozen, so a cached vector never goes stale.
        """
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not one string")
        if len(texts) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        if len(texts) == 1:
            return self._embed_one_text(str(texts[0]))[None].copy()
        return self._embed_texts_uncached(texts)

    def clear_text_cache(self) -> None:
        """Forget the cached text embeddings (benches time the uncached path)."""
        self._embed_one_text.cache_clear()
        self._text_pair.cache_clear()

    def embed_images_with_features(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(frozen backbone features, head embeddings) of images in one backbone pass: the
        familiarity check (``trust.familiarity``) reads the first, the search the second."""
        feats = np.asarray(self.backbone.encode_images(images), np.float32)
        return feats, self.project_image_features(feats)

    def embed_text_with_features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(frozen (1,text_dim), head (1,embed_dim)) of one query text, from the LRU cache."""
        feats, emb = self._text_pair(str(text))
        return feats[None].copy(), emb[None].copy()

    def _text_pair_uncached(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        feats = np.asarray(self.backbone.encode_texts([text]), np.float32)
        emb = self.project_text_features(feats, [text])
        for a in (feats, emb):
            a.setflags(write=False)
        return feats[0], emb[0]

    def _embed_texts_uncached(self, texts: Sequence[str]) -> np.ndarray:
        return self.project_text_features(self.backbone.encode_texts(texts), texts)

    def _embed_one_text_uncached(self, text: str) -> np.ndarray:
        vector = self._embed_texts_uncached([text])[0]
        vector.setflags(write=False)  # shared by every later hit: callers get copies
        return vector

    def abnormal_probability(self, image_emb: np.ndarray) -> np.ndarray:
        """Calibrated P(abnormal) per row of projected image embeddings -> (N,) float32 in [0,1]:
        the classifier's logit through the run's validation-fitted ``evaluation.calibration``."""
        from evaluation.calibration import calibrated_probability

        x = _as_tensor(image_emb, self.embed_dim, "image embeddings")
        with torch.inference_mode():
            logits = self.head.classify(x).numpy()
        return calibrated_probability(self.config, logits).astype(np.float32)

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def from_run(
        cls,
        run_dir: Path | str,
        backbone: Backbone | None = None,
        backbone_path: str | None = None,
    ) -> "RetrievalModel":
        """Load a trained run: create the backbone its config names (unless one is given, in
        which case its id must match) and the head, verified against its checksum."""
        config = read_checkpoint_config(run_dir)
        if backbone is None:
            from model.factory import create_backbone

            backbone = create_backbone(config["backbone_name"], path=backbone_path)
        head, config = load_checkpoint(run_dir, expected_backbone_id=backbone.backbone_id)
        return cls(backbone, head, config)

    def __repr__(self) -> str:
        head = self.head_checksum[:12] or "unsaved"
        return f"RetrievalModel(backbone_id={self.backbone_id!r}, embed_dim={self.embed_dim}, head={head})"
