"""Safe decoding of PNG/JPEG/DICOM uploads: every bad input becomes a clear ImageLoadError."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data.images import MAX_SIDE, ImageLoadError, load_radiograph
from tests.helpers_dicom import PATIENT_ID, PATIENT_NAME, make_dicom


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient(h: int = 64, w: int = 80) -> np.ndarray:
    return np.tile(np.linspace(0, 1, w), (h, 1))


def test_8bit_png_roundtrip():
    arr = (_gradient() * 255).astype(np.uint8)
    loaded = load_radiograph(_png(Image.fromarray(arr)))
    assert loaded.image.mode == "L" and loaded.source_format == "PNG"
    assert np.array_equal(np.asarray(loaded.image), arr)


def test_16bit_png_is_rescaled_by_its_range_not_clipped():
    arr = (1000 + _gradient() * 3000).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    loaded = load_radiograph(_png(Image.fromarray(arr)))
    out = np.asarray(loaded.image)
    assert loaded.image.mode == "L"
    assert out.min() == 0 and out.max() == 255  # full 8-bit range used, not all-white
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # monotone: ordering kept
    assert any("rescaled" in n for n in loaded.notes)


def test_rgba_and_palette_become_grayscale():
    rgba = Image.new("RGBA", (64, 64), (200, 200, 200, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))
    out = load_radiograph(_png(rgba))
    assert out.image.mode == "L"
    assert out.image.getpixel((0, 0)) == 0 and out.image.getpixel((5, 5)) == 200
    pal = Image.fromarray((_gradient() * 255).astype(np.uint8)).convert("P")
    assert load_radiograph(_png(pal)).image.mode == "L"


def test_not_an_image():
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_radiograph(b"%PDF-1.4 this is a report, not a radiograph" * 10)


def test_empty_file():
    with pytest.raises(ImageLoadError, match="empty"):
        load_radiograph(b"")


def test_truncated_png_and_jpeg():
    arr = (np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)
    png = _png(Image.fromarray(arr))
    with pytest.raises(ImageLoadError, match="damaged or truncated"):
        load_radiograph(png[: len(png) // 2])
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG")
    with pytest.raises(ImageLoadError, match="damaged or truncated"):
        load_radiograph(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_tiny_image_refused():
    with pytest.raises(ImageLoadError, match="1×1"):
        load_radiograph(_png(Image.new("L", (1, 1))))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageLoadError, match="too large to open safely"):
        load_radiograph(_png_header_only(20000, 20000))


def test_image_just_over_the_limit_refused():
    with pytest.raises(ImageLoadError, match="over 100 MP"):
        load_radiograph(_png_header_only(12000, 9000))


def test_large_image_is_downsampled():
    big = Image.fromarray((_gradient(3000, 4000) * 255).astype(np.uint8))
    loaded = load_radiograph(_png(big))
    assert max(loaded.image.size) == MAX_SIDE
    assert any("Downsampled" in n for n in loaded.notes)


def test_dicom_monochrome1_is_inverted_and_identifiers_dropped():
    pixels = (_gradient() * 4000).astype(np.uint16)
    mono2 = load_radiograph(make_dicom(pixels, "MONOCHROME2"))
    mono1 = load_radiograph(make_dicom(pixels, "MONOCHROME1"))
    a, b = np.asarray(mono2.image).astype(int), np.asarray(mono1.image).astype(int)
    assert mono2.source_format == "DICOM" and mono2.view == "PA"
    assert a[:, -1].mean() > 200 and b[:, -1].mean() < 55  # bright end becomes dark
    assert np.array_equal(a, 255 - b)
    shown = repr(mono1) + " ".join(mono1.notes)
    assert PATIENT_NAME not in shown and PATIENT_ID not in shown
    assert "Doe" not in shown


def test_dicom_with_compressed_pixels_gets_clear_message():
    with pytest.raises(ImageLoadError, match="compressed as 'JPEG 2000"):
        load_radiograph(make_dicom((_gradient() * 4000).astype(np.uint16), compressed=True))


def test_dicom_without_pixels():
    with pytest.raises(ImageLoadError, match="no pixel data"):
        load_radiograph(make_dicom(None))
