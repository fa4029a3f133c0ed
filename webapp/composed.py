"""Composed queries: an image plus a text modifier, in the head's shared space.

"Like this film, but with a left pleural effusion" / "... without the effusion". The head maps
images and reports into one L2-normalised space (trained with CLIP InfoNCE), so text vectors
point towards the images of their findings. The composed query is vector arithmetic:

    d = normalise(z_text - z_neutral)        the phrase's direction (default)
    with:     q = normalise(z_img + w * d)
    without:  q = normalise(z_img - w * d)

``z_img``, ``z_text`` and ``z_neutral`` are unit-length head embeddings of the image, of the
modifier and of a neutral report phrase (:data:`NEUTRAL_PHRASE`, the normal study's usual
impression). Why the neutral phrase: every text vector sits in the text side of the space (the
"modality gap"), so adding ``z_text`` itself mostly adds "a report" and barely moves an image
query towards the finding (``bench.composed``: 0.3% of the top 10 with a left effusion at w = 1,
normal source images); ``z_text - z_neutral`` keeps only what the phrase says beyond "normal"
(19% at w = 1, 57% at w = 2). ``z_neutral=None`` gives the plain sum ``normalise(z_img ± w z_text)``.
``w`` (the page's weight slider, 0-3) sets how far the query moves: 0 is the image alone.
The composed vector searches the image graph like any query.
"""
from __future__ import annotations

import numpy as np

from index.ann import normalise

MODES = ("with", "without")
NEUTRAL_PHRASE = "no acute cardiopulmonary abnormality"
DEFAULT_WEIGHT = 1.5
MAX_WEIGHT = 3.0


def compose(z_img: np.ndarray, z_text: np.ndarray, weight: float = DEFAULT_WEIGHT, mode: str = "with",
            z_neutral: np.ndarray | None = None) -> np.ndarray:
    """(D,) unit vector of the composed query (see the module docstring for the formula)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    w = float(weight)
    if not np.isfinite(w) or w < 0:
        raise ValueError(f"weight must be a finite number >= 0, not {weight!r}")
    a = normalise(np.asarray(z_img, np.float32).reshape(1, -1))[0]
    b = normalise(np.asarray(z_text, np.float32).reshape(1, -1))[0]
    if a.shape != b.shape:
        raise ValueError(f"image and text vectors differ in size: {a.shape} vs {b.shape}")
    if z_neutral is not None:
        b = b - normalise(np.asarray(z_neutral, np.float32).reshape(1, -1))[0]
        if float(np.linalg.norm(b)) < 1e-6:
            raise ValueError("the modifier says nothing beyond the neutral phrase")
        b = normalise(b[None])[0]
    q = a + w * b if mode == "with" else a - w * b
    if float(np.linalg.norm(q)) < 1e-6:  # "without" the image's own direction: nothing left
        raise ValueError("the modifier cancels the image exactly; lower the weight")
    return normalise(q[None])[0]


def compose_findings(image_findings, phrase, mode: str):
    """What the composed query asks for: the source image's findings (e.g. its neighbours'
    consensus) plus the phrase's findings ("with") or minus them ("without", i.e. negated)."""
    from dataclasses import replace

    from data.findings import NEGATIVE
    from webapp.why import QueryFindings

    asked = {f.name for f in phrase.positive}
    kept = tuple(f for f in image_findings.positive if f.name not in asked)
    if mode == "with":
        positive = kept + tuple(phrase.positive)
        negated = tuple(phrase.negated)
    else:
        positive = kept
        negated = tuple(replace(f, certainty=NEGATIVE) for f in phrase.positive)
    normal = image_findings.normal and not positive
    return QueryFindings(positive, negated, normal, "neighbours+phrase")
