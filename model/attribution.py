"""Similarity heat-map: which parts of the query image make it match a given hit.

Occlusion attribution of the query-hit cosine in the head space: the preprocessed query is
copied once per cell of a ``grid`` x ``grid`` lattice with that cell blanked (set to 0, the
normalised mean colour), every copy goes through backbone + head in one batch, and a cell's
score is how much the cosine to the hit drops when it is hidden. For a conv tower with a spatial
feature map (the offline backbone) the cells are blanked in that map instead, so the backbone
runs once (see ``occlusion_maps``). Occlusion rather than
gradients because it needs no autograd through the frozen towers (they run in inference mode,
int8 variants have no gradients) and it is exact about what it measures.

The occluded embeddings do not depend on the hit, so one batch serves every hit of a query:
:class:`OcclusionMaps` is computed once per query, and each hit's map is then one matrix-vector
product.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

DEFAULT_GRID = 7  # pixel occlusion: one cell per 32 px of a 224 px input (the offline tower occludes its own 14x14 map)


@dataclass
class OcclusionMaps:
    """Head-space embeddings of the query and of its ``grid``² occluded copies."""

    base: np.ndarray  # (D,) L2-normalised
    occluded: np.ndarray  # (grid*grid, D) L2-normalised
    grid: int
    method: str = "pixels"  # "pixels" | "features"

    def heat(self, target: np.ndarray) -> np.ndarray:
        """(grid, grid) map in [0, 1]: cosine drop to ``target`` when each cell is hidden,
        scaled by the largest drop (all zeros when hiding nothing lowers the cosine)."""
        t = np.asarray(target, np.float32).reshape(-1)
        t = t / max(float(np.linalg.norm(t)), 1e-12)
        drop = float(self.base @ t) - self.occluded @ t
        drop = np.clip(drop, 0.0, None).reshape(self.grid, self.grid)
        top = float(drop.max())
        return drop / top if top > 0 else drop

    def cosine(self, target: np.ndarray) -> float:
        t = np.asarray(target, np.float32).reshape(-1)
        return float(self.base @ (t / max(float(np.linalg.norm(t)), 1e-12)))


def occlusion_maps(model, image: Image.Image, grid: int = DEFAULT_GRID, method: str = "auto") -> OcclusionMaps:
    """Embed ``image`` and its occluded copies with ``model`` (a ``RetrievalModel``).

    ``method``: "pixels" blanks image cells and runs the backbone on every copy (any backbone;
    ``grid``² + 1 forward passes in one batch); "features" runs the backbone once and blanks the
    cells of its last spatial feature map before pooling (backbones with ``feature_map`` /
    ``pool_feature_map``, i.e. the offline conv tower: one forward pass, ~40x cheaper; the grid is
    the feature map's own 14 x 14). "auto" takes "features" where available."""
    backbone = model.backbone
    if method == "auto":
        method = "features" if hasattr(backbone, "feature_map") else "pixels"
    if method == "features":
        return _feature_occlusion(model, image)
    if grid < 2:
        raise ValueError(f"grid must be at least 2, not {grid}")
    pixels = model.backbone.preprocess(image)  # (3, H, W)
    _, h, w = pixels.shape
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    batch = pixels.unsqueeze(0).repeat(grid * grid + 1, 1, 1, 1)
    for i in range(grid):
        for j in range(grid):
            batch[1 + i * grid + j, :, ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = 0.0
    return _project(model, model.backbone.encode_image_batch(batch), grid, "pixels")


def _feature_occlusion(model, image: Image.Image) -> OcclusionMaps:
    backbone = model.backbone
    pixels = backbone.preprocess(image).unsqueeze(0)
    with torch.inference_mode():
        fmap = backbone.feature_map(pixels.to(backbone.device, torch.float32)).float().cpu()  # (1, C, g, g)
        grid = int(fmap.shape[-1])
        copies = fmap.repeat(grid * grid + 1, 1, 1, 1)
        for i in range(grid):
            for j in range(grid):
                copies[1 + i * grid + j, :, i, j] = 0.0
        feats = torch.nn.functional.normalize(backbone.pool_feature_map(copies), dim=-1)
    return _project(model, feats.clone(), grid, "features")


def _project(model, feats, grid: int, method: str) -> OcclusionMaps:
    z = model.project_image_features(feats)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return OcclusionMaps(base=z[0], occluded=z[1:], grid=grid, method=method)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.45, size: int = 320) -> Image.Image:
    """The heat map, upsampled smoothly and coloured (transparent -> red), over a grey copy of ``image``.

    The overlay covers the square the backbone saw (``preprocess`` resizes the whole image to a
    square), so the image is shown squashed to that square too: cells line up with what was hidden."""
    base = image.convert("L").resize((size, size), Image.BILINEAR).convert("RGB")
    h8 = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8), mode="L").resize((size, size), Image.BICUBIC)
    weight = np.asarray(h8, np.float32)[..., None] / 255.0
    colour = np.array([220, 30, 30], np.float32)  # red: "hiding this lowers the similarity"
    rgb = np.asarray(base, np.float32)
    mixed = rgb * (1 - alpha * weight) + colour * alpha * weight
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))
