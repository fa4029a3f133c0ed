"""The public entry points: tags -> uint8 phantom, a study's phantom, byte-stable PNG encoding."""
from __future__ import annotations

import io
from collections import Counter
from typing import Sequence

import numpy as np
from PIL import Image

from data.phantom.anatomy import sample_anatomy
from data.phantom.constants import DEFAULT_SIZE
from data.phantom.rng import stream_rng
from data.phantom.rules import ANATOMY_RULES, DRAW_RULES
from data.phantom.scene import Scene
from data.phantom.tags import parse_tag
from data.records import Study


def render_phantom(tags: Sequence[str], seed: int = 0, study_id: str = "", size: int = DEFAULT_SIZE) -> np.ndarray:
    """The uint8 (size, size) PA phantom for a study's tags, deterministic in (seed, study_id, tags).

    Normal anatomy, exposure and noise depend only on (seed, study_id); each tag draws from its
    own stream, so ``render_phantom(["Pleural Effusion/left"], s, i)`` differs from
    ``render_phantom(["normal"], s, i)`` only where the effusion is.
    """
    parsed = [parse_tag(t) for t in tags]
    anat = sample_anatomy(stream_rng(seed, study_id, "anatomy"))
    seen: Counter[str] = Counter()
    keyed = []
    for tag in parsed:
        keyed.append((tag, seen[tag.text]))
        seen[tag.text] += 1
    for tag, k in keyed:
        rule = ANATOMY_RULES.get(tag.name)
        if rule is not None:
            rule(anat, tag, stream_rng(seed, study_id, "tag-anatomy", tag.text, k))
    scene = Scene(anat, size, stream_rng(seed, study_id, "noise"), stream_rng(seed, study_id, "vessels"))
    scene.draw_anatomy()
    for tag, k in keyed:
        rule = DRAW_RULES.get(tag.name)
        if rule is not None:
            rule(scene, tag, stream_rng(seed, study_id, "tag-draw", tag.text, k))
    return scene.finish()


def render_study(study: Study, seed: int = 0, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The phantom of one IU study (its MeSH major tags drive the findings)."""
    return render_phantom(study.tags, seed=seed, study_id=study.study_id, size=size)


def encode_png(image: np.ndarray) -> bytes:
    """8-bit grayscale PNG with fixed encoder settings and no metadata (byte-stable).

    zlib level 1: noise-heavy films barely compress better at 6, which costs twice the time."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", compress_level=1, optimize=False)
    return buf.getvalue()
