"""Image preprocessing shared by every backbone: any PIL image -> normalised (3, H, W) tensor.

Chest X-rays arrive as 8-bit PNG/JPEG, 16-bit PNG ("I;16"), 32-bit ("I"/"F" from DICOM
conversions), palette or RGBA screenshots. Every tower here was trained on RGB photos, so
we first reduce every input to one 8-bit grayscale picture (the information an X-ray has),
then replicate it to three channels, then apply the tower's own geometry and normalisation
via open_clip's inference transform. Grayscale-first also means a colour photo of a film and
the film itself get the same treatment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Modes whose pixel values are not 0..255 and must be rescaled by their real range.
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the array's actual [min, max] onto [0, 255] (a 12-bit X-ray in a 16-bit PNG uses
    only 0..4095: clipping or dividing by 65535 would leave it black)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    values = np.where(finite, values, lo)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    """Transparent pixels become black (the background of a radiograph), not white."""
    rgba = rgba.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def to_grayscale8(image: Image.Image) -> Image.Image:
    """Any PIL mode -> mode "L" (8-bit grayscale), applying EXIF orientation first.

    16/32-bit and float images are rescaled by their actual value range; images with an
    alpha channel (RGBA, LA, PA, palette with transparency) are composited on black.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "L":
        return image
    if mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_rescale_to_uint8(np.asarray(image)), mode="L")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        image = _composite_on_black(image)
    elif mode != "RGB":  # "1", CMYK, YCbCr, LAB, HSV, ...
        image = image.convert("RGB")
    return image.convert("L")


class ToGrayscale8:
    """Transform step wrapping :func:`to_grayscale8` (a class so the pipeline has a clear repr)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_grayscale8(image)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


def build_transform(
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> Callable[[Image.Image], torch.Tensor]:
    """Grayscale-8 -> open_clip's inference transform (resize, crop or pad, RGB, tensor, normalise).

    ``resize_mode`` is open_clip's: "shortest" (resize shortest side + centre crop, what CLIP
    and BiomedCLIP were trained with), "longest" (fit inside + pad) or "squash".
    """
    from open_clip.transform import image_transform  # lazy: open_clip imports take seconds

    base = image_transform(
        size, is_train=False, mean=tuple(mean), std=tuple(std),
        resize_mode=resize_mode, interpolation=interpolation,
    )
    steps = [ToGrayscale8(), *base.transforms]
    return _Pipeline(steps)


class _Pipeline:
    """Compose that always returns a contiguous float32 (3, H, W) tensor."""

    def __init__(self, steps: list) -> None:
        self.transforms = steps

    def __call__(self, image: Image.Image) -> torch.Tensor:
        out = image
        for step in self.transforms:
            out = step(out)
        return out.to(torch.float32).contiguous()

    def __repr__(self) -> str:
        inner = "\n".join(f"    {s!r}" for s in self.transforms)
        return f"Pipeline(\n{inner}\n)"


def preprocess_identity(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> str:
    """Short, stable description of the preprocessing; part of embedding-cache keys so a
    change in size or normalisation can never silently reuse stale features."""
    def fmt(values: Sequence[float]) -> str:
        return ",".join(f"{float(v):.4g}" for v in values)

    return f"gray8x3-{resize_mode}{size}-{interpolation}-mean{fmt(mean)}-std{fmt(std)}"


@dataclass(frozen=True)
class PreprocessCfg:
    """A tower's preprocessing stated once (open_clip's ``PreprocessCfg`` habit): the transform
    and the identity that keys the feature cache are both read from it, so they cannot disagree."""

    size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return build_transform(self.size, self.mean, self.std, self.interpolation, self.resize_mode)

    @property
    def identity(self) -> str:
        return preprocess_identity(self.size, self.mean, self.std, self.interpolation, self.resize_mode)
