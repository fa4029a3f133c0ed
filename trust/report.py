"""The calibration report of an index's trust checks, made when the index is built.

Why: an index is only useful if its own kind of film gets through the checks, and the
"not a radiograph" refusals must still catch what the shipped probe set holds. At build time
this module measures both, stores the report in the familiarity model's metadata (so it is
covered by the manifest checksums, ``trust_report(engine.familiarity)`` reads it back) and
refuses to publish an index whose own films would be refused at more than
:data:`MAX_REFUSED` (one line, :class:`data.errors.IndexRefusedError`).

* ``held_out``: the indexed studies, each scored as a query of an index without it: the pixel
  checks (on up to :data:`PIXEL_SAMPLE` studies' images), the radiograph check (every study;
  it never saw the index) and the index distance (the familiarity model's 5-fold held-out
  scores): the share refused, the share called "unlike the index", the share familiar.
* ``probes``: the shipped non-radiograph probe set (``data.probes``) through the full check.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import numpy as np

from data.errors import IndexRefusedError

log = logging.getLogger(__name__)

MAX_REFUSED = 0.01  # an index whose own held-out films are refused more often is not published
MIN_TO_JUDGE = 100  # below this many studies one refusal is already > 1%: reported, not enforced
PIXEL_SAMPLE = 300  # studies whose images are decoded for the pixel checks (a fixed random sample)


@functools.lru_cache(maxsize=4)
def probe_inputs(backbone_id: str, backbone: Any) -> tuple[tuple[str, Any, float, np.ndarray], ...]:
    """(name, grey image, colourfulness, frozen features) of each probe, embedded once per backbone."""
    from data.images import load_radiograph
    from data.probes import non_radiographs

    loaded = [(name, load_radiograph(data)) for name, data in non_radiographs()]
    feats = np.asarray(backbone.encode_images([x.image for _, x in loaded]), np.float32)
    return tuple((name, x.image, x.colourfulness, f) for (name, x), f in zip(loaded, feats))


def _rates(verdicts: Sequence[str]) -> dict[str, Any]:
    from trust.familiarity import VERDICTS

    n = max(len(verdicts), 1)
    return {"n": len(verdicts), **{v: round(sum(x == v for x in verdicts) / n, 4) for v in VERDICTS}}


def held_out_report(familiarity: Any, studies: Sequence[Any], image_feats: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Verdict rates of the indexed studies as held-out queries (see the module docstring)."""
    from data.images import load_radiograph
    from trust.familiarity import pixel_check

    n = len(studies)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(PIXEL_SAMPLE, n), replace=False)) if n else np.zeros(0, int)
    pixel_refused = []
    for i in sample:
        loaded = load_radiograph(studies[i].image_path)
        if pixel_check(loaded.image, loaded.colourfulness) is not None:
            pixel_refused.append(studies[i].study_id)
    check = familiarity.radiograph
    if check is not None:
        model_refused = ~check.accepts(image_feats)
        by_model = float(model_refused.mean()) if n else 0.0
    else:  # no radiograph check for this backbone: the index-relative rule refuses instead
        by_model = float((familiarity.image.calibration > familiarity.far_threshold).mean()) if n else 0.0
    calibration = familiarity.image.calibration
    unlike = float((calibration > familiarity.unlike_threshold).mean()) if len(calibration) else 0.0
    by_pixels = len(pixel_refused) / max(len(sample), 1)
    refused = min(1.0, by_pixels + by_model)  # an upper bound: a study may fail both
    return {"n": n, "pixel_sample": int(len(sample)), "refused_by_pixels": round(by_pixels, 4),
            "refused_by_radiograph_model" if check is not None else "refused_by_index_distance": round(by_model, 4),
            "refused": round(refused, 4), "unlike_index": round(unlike, 4),
            "familiar": round(max(0.0, 1.0 - refused - unlike), 4),
            "examples_refused_by_pixels": pixel_refused[:5]}


def probe_report(familiarity: Any, backbone: Any) -> dict[str, Any]:
    """The shipped non-radiograph probes through the full image check of this index."""
    from trust.familiarity import NOT_RADIOGRAPH

    verdicts = {}
    for name, image, colour, feats in probe_inputs(str(backbone.backbone_id), backbone):
        verdicts[name] = familiarity.assess_image(image, feats[None], colour).verdict
    out = _rates(list(verdicts.values()))
    out["passed"] = sorted(k for k, v in verdicts.items() if v != NOT_RADIOGRAPH)
    return out


def calibration_report(familiarity: Any, backbone: Any, studies: Sequence[Any], image_feats: np.ndarray) -> dict[str, Any]:
    check = familiarity.radiograph
    return {"radiograph_check": None if check is None else {"backbone_id": check.backbone_id,
                                                            "threshold": check.threshold},
            "held_out": held_out_report(familiarity, studies, image_feats),
            "probes": probe_report(familiarity, backbone) if backbone is not None else None,
            "max_refused": MAX_REFUSED, "min_to_judge": MIN_TO_JUDGE}


def attach(familiarity: Any, backbone: Any, studies: Sequence[Any], image_feats: np.ndarray) -> Any:
    """Measure, store the report in the model's metadata, refuse an index its own films fail."""
    report = calibration_report(familiarity, backbone, studies, image_feats)
    familiarity.meta["calibration_report"] = report
    held = report["held_out"]
    line = (f"trust checks: {held['refused']:.1%} of the index's own {held['n']} studies refused as not radiographs, "
            f"{held['unlike_index']:.1%} unlike the index")
    if report["probes"] is not None:
        line += f"; {report['probes']['not_radiograph']:.0%} of {report['probes']['n']} non-radiograph probes refused"
    log.info(line)
    if held["refused"] > MAX_REFUSED and held["n"] >= MIN_TO_JUDGE:
        by_check = held.get("refused_by_radiograph_model", held.get("refused_by_index_distance", 0.0))
        raise IndexRefusedError(
            f"not publishing this index: {held['refused']:.1%} of its own {held['n']} studies would be refused as not "
            f"chest radiographs (limit {MAX_REFUSED:.0%}; pixel checks {held['refused_by_pixels']:.1%}, radiograph "
            f"check {by_check:.1%}): check the images, or refit the check (python -m trust.radiograph_fit)")
    return familiarity


def trust_report(familiarity: Any) -> dict[str, Any] | None:
    """The report stored at build time (None for an index built before it existed)."""
    return None if familiarity is None else familiarity.meta.get("calibration_report")
