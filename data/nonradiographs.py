"""More images that are not chest radiographs, for FITTING the radiograph check.

``data.probes.non_radiographs()`` is the probe set the check is measured on; this module adds
sources it does not hold (so the measurement is not only on what was fitted): the pictures
matplotlib and scikit-learn ship (a portrait, a logo, an MRI slice, terrain, two photos),
charts drawn with matplotlib, mock application windows, smooth and blotchy noise, and text
pages with other seeds. All local, seeded: the same bytes on every machine.
"""
from __future__ import annotations

import gzip
import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data.probes import text_page, to_uint8


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(to_uint8(array))


def shipped_pictures() -> list[tuple[str, Image.Image]]:
    """matplotlib's and scikit-learn's sample pictures (no download)."""
    out: list[tuple[str, Image.Image]] = []
    try:
        import matplotlib

        folder = os.path.join(matplotlib.get_data_path(), "sample_data")
        for name in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                out.append((f"mpl:{name}", Image.open(path).convert("RGB")))
        mri = os.path.join(folder, "s1045.ima.gz")
        if os.path.isfile(mri):
            with gzip.open(mri) as handle:
                out.append(("mpl:mri-slice", _image(np.frombuffer(handle.read(), np.uint16).reshape(256, 256))))
        for name in ("topobathy.npz", "jacksboro_fault_dem.npz"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with np.load(path, allow_pickle=False) as data:
                    key = "topo" if "topo" in data else "elevation"
                    out.append((f"mpl:{name}", _image(np.asarray(data[key], np.float64))))
    except ImportError:  # pragma: no cover - matplotlib is a runtime dependency
        pass
    try:
        from sklearn.datasets import load_sample_images

        for name, array in zip(("china", "flower"), load_sample_images().images):
            out.append((f"sklearn:{name}", Image.fromarray(array)))
    except ImportError:  # pragma: no cover
        pass
    return out


def charts(n: int = 6, seed: int = 21) -> list[tuple[str, Image.Image]]:
    """Line, bar, scatter and image plots as a report or a slide would show them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fig, ax = plt.subplots(figsize=(5, 4), dpi=80)
        kind = i % 4
        if kind == 0:
            ax.plot(np.cumsum(rng.normal(size=200)))
        elif kind == 1:
            ax.bar(range(8), rng.random(8))
        elif kind == 2:
            ax.scatter(rng.normal(size=150), rng.normal(size=150), s=6)
        else:
            ax.imshow(rng.random((16, 16)), cmap="gray")
        ax.set_title(f"figure {i}")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        out.append((f"chart:{i}", Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return out


def windows(n: int = 4, seed: int = 5) -> list[tuple[str, Image.Image]]:
    """Mock application windows: title bar, panels, buttons, lines of text, a grey picture."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.new("L", (800, 600), int(rng.integers(200, 250)))
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 0, 800, 30), fill=int(rng.integers(40, 120)))
        for _ in range(int(rng.integers(3, 7))):
            x, y = int(rng.integers(0, 600)), int(rng.integers(40, 500))
            draw.rectangle((x, y, x + int(rng.integers(80, 200)), y + int(rng.integers(20, 90))),
                           outline=60, fill=int(rng.integers(150, 255)))
            draw.text((x + 5, y + 5), "Button text", fill=20)
        x, y = int(rng.integers(300, 500)), int(rng.integers(150, 300))
        blob = _image(np.asarray(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).resize((200, 200))))
        img.paste(blob, (x, y))
        out.append((f"window:{i}", img))
    return out


def textures(n: int = 6, seed: int = 33) -> list[tuple[str, Image.Image]]:
    """Smooth and blotchy noise at several scales, text pages with other seeds."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cells = int(rng.integers(4, 40))
        field = Image.fromarray(rng.integers(0, 256, (cells, cells), dtype=np.uint8)).resize((512, 512), Image.BICUBIC)
        out.append((f"blotch:{i}", field.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 6))))))
    for i in range(3):
        out.append((f"page:{i}", Image.fromarray(text_page(100 + i, size=(700, 900)))))
    return out


def training_non_radiographs() -> list[tuple[str, Image.Image]]:
    """(name, picture) of the fitting-only non-radiographs."""
    return shipped_pictures() + charts() + windows() + textures()
