"""Where generated and downloaded artefacts live (never inside git)."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """Root for generated data, embedding caches, runs and indexes.

    Override with ``CXR_CACHE`` (tests point it at a temp dir or a shared session cache).
    """
    root = Path(os.environ.get("CXR_CACHE", PROJECT_ROOT / ".cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root
