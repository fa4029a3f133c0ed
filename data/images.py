"""Safe decoding of uploaded or on-disk radiographs (PNG, JPEG, DICOM) into 8-bit grayscale.

Every failure becomes an ``ImageLoadError`` whose message a clinician can act on; nothing
here raises a raw PIL/pydicom exception, and nothing is written to disk.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from data.errors import ImageLoadError  # noqa: F401 (defined in data.errors, re-exported)

# Decompression-bomb guard. Larger images are refused before their pixels are decoded;
# images between MAX_SIDE and this are downsampled on decode (JPEG draft mode) or after.
MAX_PIXELS = 100_000_000
MAX_SIDE = 2048  # working resolution: far above what any tower looks at (224 px)
MAX_FILE_BYTES = 200 * 1024 * 1024

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass
class LoadedImage:
    """A decoded radiograph and what the user should know about how it was read."""

    image: Image.Image  # mode "L"
    source_format: str  # "PNG", "JPEG", "DICOM", ...
    view: str = ""  # from DICOM ViewPosition when present
    notes: list[str] = field(default_factory=list)
    colourfulness: float = 0.0  # of the file before the grey conversion (trust.familiarity: photos are colourful)


def load_radiograph(source: str | Path | bytes) -> LoadedImage:
    """Decode a file path or raw bytes; DICOM is recognised by content, not by name."""
    data = _read_bytes(source)
    if len(data) == 0:
        raise ImageLoadError("The file is empty.")
    if _looks_like_dicom(data):
        return _load_dicom(data)
    return _load_raster(data)


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"File not found: {path.name}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ImageLoadError(f"The file is larger than {MAX_FILE_BYTES // 2**20} MB; please upload a smaller export.")
    return path.read_bytes()


def _looks_like_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _load_raster(data: bytes) -> LoadedImage:
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "image"
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{width}x{height}")
            if fmt == "JPEG" and max(width, height) > MAX_SIDE:
                img.draft("L", (MAX_SIDE, MAX_SIDE))  # decode at reduced scale: bounded memory
            img.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(
            f"The image is too large to open safely (over {MAX_PIXELS / 1e6:.0f} MP); "
            "please export it at a lower resolution."
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError("This file is not a readable image (expected PNG, JPEG or DICOM).") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        detail = str(exc).split("\n")[0][:120]
        raise ImageLoadError(
            f"The {fmt} file is damaged or truncated and cannot be decoded ({detail}); please export it again."
        ) from None
    notes: list[str] = []
    if img.size[0] < 32 or img.size[1] < 32:
        raise ImageLoadError(f"The image is only {img.size[0]}×{img.size[1]} pixels; a radiograph is needed.")
    img = ImageOps.exif_transpose(img)
    colour = colourfulness(img)
    gray = to_grayscale_8bit(img, notes)
    gray = _limit_size(gray, notes)
    return LoadedImage(image=gray, source_format=fmt, notes=notes, colourfulness=colour)


def colourfulness(img: Image.Image) -> float:
    """Mean (max - min) over RGB channels of a 64 px thumbnail: 0 for grey, ~0.2+ for photos."""
    if img.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        return 0.0
    thumb = img.convert("RGB")
    thumb.thumbnail((64, 64))
    a = np.asarray(thumb, np.float32) / 255.0
    return float((a.max(axis=2) - a.min(axis=2)).mean())


def to_grayscale_8bit(img: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """Any PIL mode -> 8-bit grayscale, stretching high-bit-depth data by its actual range."""
    notes = notes if notes is not None else []
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        notes.append(f"{img.mode} image rescaled to 8 bits by its intensity range.")
        return Image.fromarray(_window_to_uint8(arr, float(arr.min()), float(arr.max())), mode="L")
    if img.mode in ("P", "PA"):
        has_alpha = img.mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:  # some pixel is actually see-through
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            rgba = Image.alpha_composite(background, rgba)
            notes.append("Transparency removed (composited on black).")
        img = rgba.convert("RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, 1-bit, ...
    return img.convert("L")


def _window_to_uint8(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (np.clip(arr, low, high) - low) / (high - low)
    return np.round(scaled * 255.0).astype(np.uint8)


def _limit_size(img: Image.Image, notes: list[str]) -> Image.Image:
    if max(img.size) <= MAX_SIDE:
        return img
    original = img.size
    img = img.copy()
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    notes.append(f"Downsampled from {original[0]}×{original[1]} to {img.size[0]}×{img.size[1]}.")
    return img


def _load_dicom(data: bytes) -> LoadedImage:
    """DICOM -> windowed 8-bit grayscale; identifiers are never read into the result."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise ImageLoadError(f"The DICOM file cannot be parsed ({type(exc).__name__}).") from None
    if "PixelData" not in ds:
        raise ImageLoadError("The DICOM file has no image (no pixel data); it may be a report or structured document.")
    try:
        pixels = ds.pixel_array
    except Exception:  # pydicom raises many types for missing codecs and short data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and not getattr(syntax, "is_compressed", True):
            raise ImageLoadError(
                "The DICOM pixel data is damaged or truncated (shorter than its image size); "
                "please export the image again."
            ) from None
        name = getattr(syntax, "name", str(syntax)) if syntax is not None else "unknown"
        raise ImageLoadError(
            f"The DICOM pixel data is compressed as '{name}', which this server cannot decode; "
            "please export the image as uncompressed DICOM, PNG or JPEG."
        ) from None
    arr = np.asarray(pixels, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour DICOM (secondary capture)
        arr = arr[..., :3].mean(axis=-1)
    elif arr.ndim == 3:  # multi-frame: take the first frame
        arr = arr[0]
    if arr.ndim != 2:
        raise ImageLoadError(f"The DICOM image has an unsupported shape {pixels.shape}.")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    low, high = _dicom_window(ds, arr)
    out = _window_to_uint8(arr, low, high)
    notes = [f"DICOM windowed to [{low:g}, {high:g}]."]
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
        notes.append("MONOCHROME1 inverted so that air is dark.")
    if out.shape[0] < 32 or out.shape[1] < 32:
        raise ImageLoadError(f"The DICOM image is only {out.shape[1]}×{out.shape[0]} pixels; a radiograph is needed.")
    view = str(getattr(ds, "ViewPosition", "") or "").upper()
    img = _limit_size(Image.fromarray(out, mode="L"), notes)
    return LoadedImage(image=img, source_format="DICOM", view=view, notes=notes)


def _dicom_window(ds, arr: np.ndarray) -> tuple[float, float]:
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    try:
        if center is not None and width is not None:
            c = float(center[0] if isinstance(center, pydicom_multivalue()) else center)
            w = float(width[0] if isinstance(width, pydicom_multivalue()) else width)
            if w > 1:
                return c - w / 2.0, c + w / 2.0
    except (TypeError, ValueError):
        pass
    # No usable window: robust percentiles of the image itself.
    return float(np.percentile(arr, 0.5)), float(np.percentile(arr, 99.5))


def pydicom_multivalue():
    from pydicom.multival import MultiValue

    return (MultiValue, list, tuple)
