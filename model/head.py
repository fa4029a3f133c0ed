"""The trainable part: two small MLP projectors into one retrieval space + a normal/abnormal classifier.

Following "Multi-task Cross-modal Learning for Chest X-ray Image Retrieval", the backbone
stays frozen and only these heads learn: the image projector and the text projector map
frozen features into a shared ``embed_dim`` space (trained with CLIP InfoNCE + SupCon), and
one linear classifier on that space predicts abnormality (trained with BCE). The classifier
is shared by both modalities so that "abnormal" means the same direction for a radiograph
and for a report - which is what lets a typed findings phrase retrieve abnormal images.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: temperature never below 0.01


class ProjectionHead(nn.Module):
    """Linear(in, hidden) - GELU - Dropout - Linear(hidden, out) [+ Linear(in, out) skip], L2-normalised.

    The residual linear skip lets the head start close to a linear projection of the
    frozen features (which already carry most of the signal) and learn the non-linear
    correction on top.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512, dropout: float = 0.1, residual: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )
        self.skip = nn.Linear(in_dim, out_dim, bias=False) if residual else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(x)
        if self.skip is not None:
            y = y + self.skip(x)
        return F.normalize(y, dim=-1)


class RetrievalHead(nn.Module):
    """Image projector, text projector, shared abnormality classifier and CLIP temperature."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        dropout: float = 0.1,
        residual: bool = True,
        init_temperature: float = 0.07,
        knowledge_dim: int = 0,
        knowledge_scale: float = 0.0,
    ) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError("init_temperature must be > 0")
        self.config: dict[str, Any] = {
            "image_dim": int(image_dim),
            "text_dim": int(text_dim),
            "embed_dim": int(embed_dim),
            "hidden_dim": int(hidden_dim),
            "dropout": float(dropout),
            "residual": bool(residual),
            "init_temperature": float(init_temperature),
        }
        if knowledge_dim:  # model.knowledge: the parsed findings beside the frozen text features
            self.config.update(knowledge_dim=int(knowledge_dim), knowledge_scale=float(knowledge_scale))
        self.image_dim, self.text_dim, self.embed_dim = int(image_dim), int(text_dim), int(embed_dim)
        self.image_proj = ProjectionHead(image_dim, embed_dim, hidden_dim, dropout, residual)
        self.text_input_dim = int(text_dim) + int(knowledge_dim)
        self.text_proj = ProjectionHead(self.text_input_dim, embed_dim, hidden_dim, dropout, residual)
        self.classifier = nn.Linear(embed_dim, 1)
        # learnable log(1/temperature), as in CLIP; clamped to <= log(100) wherever it is used
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32))

    def encode_image(self, feats: Tensor) -> Tensor:
        """(N,image_dim) frozen image features -> (N,embed_dim) L2-normalised."""
        return self.image_proj(feats)

    def encode_text(self, feats: Tensor) -> Tensor:
        """(N,text_input_dim) text inputs (frozen features [+ knowledge, ``model.knowledge.text_inputs``])
        -> (N,embed_dim) L2-normalised."""
        return self.text_proj(feats)

    def classify(self, image_emb: Tensor) -> Tensor:
        """Abnormal-vs-normal logit (N,) from projected image embeddings."""
        return self.classifier(image_emb).squeeze(-1)

    def classify_text(self, text_emb: Tensor) -> Tensor:
        """Same shared classifier applied to projected report embeddings."""
        return self.classifier(text_emb).squeeze(-1)

    def clamped_logit_scale(self) -> Tensor:
        """log(1/temperature) limited to log(100) (the value the losses use)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.clamped_logit_scale().detach()))

    def forward(self, image_feats: Tensor, text_feats: Tensor) -> dict[str, Tensor]:
        """Everything :class:`model.loss.CompositeLoss` needs for one batch of paired studies."""
        image_emb = self.encode_image(image_feats)
        text_emb = self.encode_text(text_feats)
        return {
            "image_emb": image_emb,
            "text_emb": text_emb,
            "image_logit": self.classify(image_emb),
            "text_logit": self.classify_text(text_emb),
            "logit_scale": self.logit_scale,
        }


@torch.no_grad()
def project(head: RetrievalHead, feats: torch.Tensor, modality: str) -> "np.ndarray":
    """Frozen features through the head (eval mode) into the shared space, as numpy."""
    head.eval()
    fn = head.encode_image if modality == "image" else head.encode_text
    return fn(feats).numpy()
