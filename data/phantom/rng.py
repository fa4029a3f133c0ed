"""Random streams: one independent generator per (seed, study, stream), the same on every machine."""
from __future__ import annotations

import hashlib

import numpy as np


def stream_rng(seed: int, study_id: str, *stream: object) -> np.random.Generator:
    """An independent, platform-independent generator for one (seed, study, stream) triple."""
    key = "\x1f".join([str(int(seed)), str(study_id), *(str(s) for s in stream)])
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
