"""Models: frozen backbones (factory/backbones/transform), the trainable head, its loss,
checkpoints, and RetrievalModel (backbone + head) used by the index and the app.

Names are resolved lazily (PEP 562) so that ``from model.head import RetrievalHead`` - all
that training on cached features needs - does not pay for importing open_clip/timm/
transformers (several seconds).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backbone": "model.backbones",
    "BackboneUnavailableError": "model.backbones",
    "BACKBONES": "model.factory",
    "available_backbones": "model.factory",
    "create_backbone": "model.factory",
    "ProjectionHead": "model.head",
    "RetrievalHead": "model.head",
    "CompositeLoss": "model.loss",
    "LOSS_PRESETS": "model.loss",
    "clip_loss": "model.loss",
    "supcon_loss": "model.loss",
    "CheckpointError": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "head_checksum": "model.checkpoint",
    "RetrievalModel": "model.retrieval_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
