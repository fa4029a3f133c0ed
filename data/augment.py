"""Plausible re-acquisitions of one image: crop, exposure, rotation, resampling, JPEG.

Why: the radiograph check (``trust.radiograph_check``) must accept a film however it was
exported, and the tests need an index of real films that is not a copy of 16 files. Each
variant is drawn from a seeded generator, so the same (image, seed) gives the same bytes.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps


def augment(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """One random variant of a grey image (mode "L"): crop 75-100% of each side, rotation of
    +-8 degrees, gamma 0.6-1.6 with a contrast stretch, resampling to 35-100% of the size, and
    a JPEG round trip at quality 40-95 (half of the time). ``strength`` scales the ranges."""
    img = img.convert("L")
    w, h = img.size
    keep = 1.0 - strength * rng.uniform(0.0, 0.25, size=2)
    cw, ch = max(int(w * keep[0]), 32), max(int(h * keep[1]), 32)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    angle = float(rng.uniform(-8, 8) * strength)
    fill = int(np.asarray(img).mean())
    img = img.rotate(angle, resample=Image.BILINEAR, expand=False, fillcolor=fill)
    a = np.asarray(img, np.float32) / 255.0
    gamma = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6)) * strength))
    lo, hi = np.quantile(a, [rng.uniform(0, 0.03 * strength), 1 - rng.uniform(0, 0.03 * strength)])
    a = np.clip((a - lo) / max(hi - lo, 1e-3), 0, 1) ** gamma
    img = Image.fromarray((a * 255).astype(np.uint8), mode="L")
    scale = float(1.0 - strength * rng.uniform(0.0, 0.65))
    small = (max(int(img.width * scale), 32), max(int(img.height * scale), 32))
    img = img.resize(small, Image.BILINEAR)
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=int(rng.integers(40, 96)))
        img = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    return img


def variants(img: Image.Image, n: int, seed: int, strength: float = 1.0) -> list[Image.Image]:
    """``n`` augmented copies of ``img`` from one seed."""
    rng = np.random.default_rng(seed)
    return [augment(img, rng, strength) for _ in range(n)]


def greyscale(img: Image.Image) -> Image.Image:
    """A colour picture as a grey one: what a photo looks like once its colour check is passed."""
    return ImageOps.grayscale(img.convert("RGB"))


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def write_film_manifest(films, out_dir, copies: int, seed: int = 0, report: str = "chest radiograph") -> "Path":
    """A CSV manifest (``data.manifest``) of ``copies`` augmented copies of each film, written
    under ``out_dir`` (files kept when present: their features stay cached); returns its path.
    Why: an index of real films that is not the demo, for the trust tests and bench."""
    import csv
    from pathlib import Path

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, film in enumerate(films):
        film = Path(film)
        names = [f"{film.stem}-c{j:03d}.png" for j in range(copies)]
        if not all((out / "images" / n).is_file() for n in names):
            with Image.open(film) as img:
                for n, copy in zip(names, variants(img.convert("L"), copies, seed * 1000 + k)):
                    copy.save(out / "images" / n)
        label = 0 if film.stem.upper().startswith("NORMAL") else 1
        rows += [{"image_path": f"images/{n}", "report": report if label == 0 else f"{report}: pneumonia",
                  "label": label, "patient_id": film.stem, "study_id": Path(n).stem} for n in names]
    path = out / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
