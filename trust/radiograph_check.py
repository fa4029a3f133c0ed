"""Is this a chest radiograph at all? One logistic model per backbone, independent of any index.

Why: refusing "not a radiograph" by distance to the indexed studies depends on how spread out
the user's index is: a collection of real films from many hospitals let grey photos through
(issue 25). This check reads only the query's frozen image features (the ones the familiarity
check and the head already get: no second backbone pass) and a weight vector fitted once for
the backbone by ``python -m trust.radiograph_fit`` on radiographs (phantoms, real films, with
augmentation) against non-radiographs (photos, pages, screenshots, charts, noise). The model
is shipped beside this module as safetensors (weights + JSON metadata), pinned by SHA-256 in
:data:`SHIPPED`; a backbone without a shipped model can be fitted into the cache
(``cache_root()/radiograph``); with neither, the familiarity check falls back to its
index-relative rule. Scoring is one dot product (``python -m bench.familiarity``: cost_ms).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "radiograph_models"
# backbone_id -> SHA-256 of the committed file: a changed file is refused, not silently used
SHIPPED: dict[str, str] = {
    "offline:efficientnet_lite0-imagenet-stage4grid4x4+all-MiniLM-L6-v2":
        "8aa82e54b36456f15c1ffa2b2a095abcbb5e9e3a5f1df0d0399ad514643c166b",
}


def slug(backbone_id: str) -> str:
    """A file name for a backbone id (ids hold ':', '+', '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", backbone_id)[:120] + ".safetensors"


@dataclass(frozen=True)
class RadiographModel:
    """P(radiograph | frozen features) = sigmoid(w . unit(x) + b); refused below ``threshold``."""

    weight: np.ndarray  # (D,) float32
    bias: float
    threshold: float  # on the probability
    meta: dict[str, Any]

    @property
    def backbone_id(self) -> str:
        return str(self.meta.get("backbone_id", ""))

    def probability(self, feats: np.ndarray) -> np.ndarray:
        x = np.asarray(feats, np.float32)
        x = x[None] if x.ndim == 1 else x
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"radiograph model expects {self.weight.shape[0]}-d features, got {x.shape[1]}")
        norms = np.maximum(np.linalg.norm(x, axis=1), 1e-12)
        z = (x @ self.weight) / norms + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    def accepts(self, feats: np.ndarray) -> np.ndarray:
        """Boolean per row: features of a chest radiograph."""
        return self.probability(feats) >= self.threshold

    def save(self, path: Path | str) -> None:
        from safetensors.numpy import save_file

        meta = {**self.meta, "format_version": FORMAT_VERSION, "bias": float(self.bias),
                "threshold": float(self.threshold)}
        save_file({"weight": np.ascontiguousarray(self.weight, np.float32)}, str(path),
                  metadata={"radiograph_check": json.dumps(meta, sort_keys=True)})

    @classmethod
    def load(cls, path: Path | str) -> "RadiographModel":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            meta = json.loads(handle.metadata()["radiograph_check"])
            weight = handle.get_tensor("weight")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: radiograph check format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        return cls(weight.astype(np.float32), float(meta["bias"]), float(meta["threshold"]), meta)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_path(backbone_id: str) -> Path:
    from data.paths import cache_root

    return cache_root() / "radiograph" / slug(backbone_id)


@functools.lru_cache(maxsize=8)
def for_backbone(backbone_id: str) -> RadiographModel | None:
    """The radiograph check of a backbone: the shipped one (checksum verified), else one fitted
    into the cache for it, else None (the caller falls back to index-relative refusal)."""
    shipped = SHIPPED_DIR / slug(backbone_id)
    if backbone_id in SHIPPED and shipped.is_file():
        if _sha256(shipped) != SHIPPED[backbone_id]:
            raise ValueError(f"{shipped}: checksum differs from the pinned one; reinstall the package")
        found: Path | None = shipped
    else:
        found = cache_path(backbone_id) if cache_path(backbone_id).is_file() else None
    if found is None:
        return None
    model = RadiographModel.load(found)
    if model.backbone_id != backbone_id:
        raise ValueError(f"{found}: fitted for backbone {model.backbone_id!r}, not {backbone_id!r}")
    return model
