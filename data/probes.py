"""Inputs that are NOT what the index holds, for measuring the trust checks (tests and bench).

``non_radiographs()`` gives encoded image files (PNG/JPEG bytes, decoded by the app's own
``data.images.load_radiograph``): the photographs scikit-image ships, colour images, noise,
gradients, rendered text pages and a screenshot of the app itself. ``NON_CLINICAL_PHRASES``
and ``FINDING_PHRASES`` are text queries without and with clinical content.
Everything is generated or read locally with fixed seeds: same bytes on every machine.
"""
from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
# scikit-image's bundled samples (no download needed); `lbp_*` and `stereo_*` are not single images
SKIMAGE_SAMPLES = (
    "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
    "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
    "logo", "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)
NON_CLINICAL_PHRASES = (
    "banana bread recipe",
    "asdfghjkl qwerty",
    "jjjjjjjjjjjjjj",
    "😀😂🎉",
    "🍌🍞",
    "def main(): return 0",
    "SELECT * FROM users WHERE id = 1;",
    "for (int i = 0; i < n; i++) { x += i; }",
    "the quick brown fox jumps over the lazy dog",
    "what is the weather in paris tomorrow",
    "buy cheap concert tickets online",
    "my favourite football team won the cup",
)
# IU-style finding phrases (the wording of IU X-ray findings and impressions)
FINDING_PHRASES = (
    "small left pleural effusion", "large right pleural effusion", "bilateral pleural effusions",
    "no acute cardiopulmonary abnormality", "no acute cardiopulmonary disease", "normal chest",
    "right lower lobe opacity", "left lower lobe opacity", "right upper lobe opacity", "left upper lobe opacity",
    "right middle lobe opacity", "lingular opacity", "cardiomegaly", "mild cardiomegaly",
    "heart size is normal", "the heart is enlarged", "stable cardiomegaly", "enlarged cardiac silhouette",
    "right pneumothorax", "left pneumothorax", "no pneumothorax", "small apical pneumothorax",
    "left lower lobe atelectasis", "bibasilar atelectasis", "right basilar atelectasis", "subsegmental atelectasis",
    "calcified granuloma", "right upper lobe calcified granuloma", "scattered calcified granulomas",
    "pulmonary nodule", "left upper lobe nodule", "no focal consolidation", "right lower lobe consolidation",
    "left lower lobe pneumonia", "pulmonary edema", "interstitial edema", "vascular congestion",
    "hyperinflated lungs", "emphysema", "chronic obstructive pulmonary disease", "thoracic spine degenerative changes",
    "degenerative changes of the spine", "scoliosis", "dextroscoliosis of the thoracic spine",
    "tortuous aorta", "atherosclerotic calcification of the aorta", "aortic ectasia",
    "right-sided central venous catheter", "left subclavian catheter tip in the svc", "sternotomy wires",
    "post median sternotomy", "surgical clips in the right upper quadrant", "healed right rib fracture",
    "elevated right hemidiaphragm", "blunting of the left costophrenic angle", "lungs are clear",
    "clear lungs bilaterally", "no pleural effusion", "mediastinal contours are normal", "hilar adenopathy",
    "low lung volumes", "streaky airspace disease in the right lung base", "increased interstitial markings",
)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def to_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        array = (array - array.min()) / max(float(array.max() - array.min()), 1e-9) * 255
        return array.astype(np.uint8)
    return array


def skimage_samples() -> list[tuple[str, bytes]]:
    import skimage.data

    return [(f"skimage:{name}", _png(to_uint8(getattr(skimage.data, name)()))) for name in SKIMAGE_SAMPLES]


def text_page(seed: int, size: tuple[int, int] = (600, 800), dark: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    page = Image.new("L", size, 20 if dark else 250)
    draw = ImageDraw.Draw(page)
    words = ["patient", "report", "invoice", "total", "the", "and", "meeting", "agenda", "lorem", "ipsum", "data"]
    y = 20
    while y < size[1] - 20:
        line = " ".join(rng.choice(words, size=int(rng.integers(4, 10))))
        draw.text((20, y), line, fill=230 if dark else 10)
        y += int(rng.integers(14, 22))
    return np.asarray(page)


def generated() -> list[tuple[str, bytes]]:
    """Noise, gradients, flat and colour fields, text pages (fixed seeds)."""
    rng = np.random.default_rng(14)
    out: list[tuple[str, bytes]] = []
    h, w = 512, 512
    yy, xx = np.mgrid[0:h, 0:w] / 511.0
    for i in range(3):
        out.append((f"noise:uniform{i}", _png(rng.integers(0, 256, (h, w), dtype=np.uint8))))
        out.append((f"noise:gaussian{i}", _png(np.clip(rng.normal(128, 40, (h, w)), 0, 255).astype(np.uint8))))
        out.append((f"noise:colour{i}", _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))))
    out.append(("noise:salt-pepper", _png((rng.random((h, w)) > 0.5).astype(np.uint8) * 255)))
    gradients = {"horizontal": xx, "vertical": yy, "diagonal": (xx + yy) / 2,
                 "radial": np.hypot(xx - 0.5, yy - 0.5), "inverse-radial": 1 - np.hypot(xx - 0.5, yy - 0.5)}
    for name, g in gradients.items():
        out.append((f"gradient:{name}", _png(to_uint8(g))))
    out.append(("gradient:colour", _png(to_uint8(np.dstack([xx, yy, 1 - xx])))))
    out.append(("gradient:sunset", _jpeg(to_uint8(np.dstack([1 - yy * 0.3, 0.5 * (1 - yy), yy])))))
    for value in (0, 128, 255):
        out.append((f"flat:grey{value}", _png(np.full((h, w), value, np.uint8))))
    for name, colour in {"red": (200, 30, 30), "blue": (20, 60, 200), "green": (30, 160, 60)}.items():
        out.append((f"flat:{name}", _png(np.tile(np.array(colour, np.uint8), (h, w, 1)))))
    for seed in range(4):
        out.append((f"text:page{seed}", _png(text_page(seed))))
    out.append(("text:dark-page", _png(text_page(9, dark=True))))
    out.append(("text:page-jpeg", _jpeg(text_page(11, size=(850, 1100)))))
    stripes = ((xx * 16).astype(int) % 2 * 255).astype(np.uint8)
    out.append(("pattern:stripes", _png(stripes)))
    return out


def app_screenshot() -> list[tuple[str, bytes]]:
    path = ROOT / "assets" / "screenshot.png"
    return [("screenshot:app", path.read_bytes())] if path.is_file() else []


@functools.lru_cache(maxsize=1)
def non_radiographs() -> tuple[tuple[str, bytes], ...]:
    """(name, encoded file bytes) of 50+ images that are not chest radiographs. Made once per process (a tuple,
    so no caller can change it): encoding them costs ~2 s, and every index build's calibration report asks."""
    return tuple(skimage_samples() + generated() + app_screenshot())
