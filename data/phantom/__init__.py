"""Synthetic frontal (PA) chest radiograph phantoms whose content follows a report's MeSH tags.

Why: no real image-report pairs exist offline, so the demo renders, for every real IU X-ray
report, a radiograph-like phantom in which the report's findings are drawn where the report puts
them (side, zone, severity). Retrieval models then have real, learnable signal linking text to
pixels, and "normal" is a population of varied anatomy rather than one image.

Conventions
-----------
* Radiological PA orientation: the patient faces the viewer, so the patient's RIGHT is on the
  IMAGE LEFT and the patient's LEFT is on the IMAGE RIGHT. Sides in tags are the patient's;
  ``SIGN`` maps them to the image x direction (right -> -1, left -> +1).
* X-ray brightness: air dark, soft tissue and fluid grey-white, bone white, metal saturated.
  Internally a "density" map (roughly attenuation path length) is built and exposed with
  ``1 - exp(-k * density)``, then windowed, so findings change density, not grey levels.
* Geometry uses normalised coordinates, x in [0, 1] left->right, y in [0, 1] top->bottom, so any
  output size renders the same picture; a per-study rotation, shift and zoom is applied last.
* Determinism: every random choice comes from a numpy PCG64 generator seeded with
  sha256(seed, study_id, stream). Anatomy, vessels, noise and each tag have their own stream,
  so adding a finding leaves the rest of the image untouched (findings are measurable as
  differences) and rendering order is irrelevant. Only float64 numpy/scipy (single-threaded)
  arithmetic and explicit rounding are used; PNGs are encoded by PIL with fixed settings.
"""
from data.phantom.constants import DEFAULT_SIZE, LEFT, PHANTOM_VERSION, RIGHT, SIDES, SIGN
from data.phantom.render import encode_png, render_phantom, render_study
from data.phantom.rules import known_findings
from data.phantom.tags import Tag, parse_tag

__all__ = [
    "DEFAULT_SIZE",
    "LEFT",
    "PHANTOM_VERSION",
    "RIGHT",
    "SIDES",
    "SIGN",
    "Tag",
    "encode_png",
    "known_findings",
    "parse_tag",
    "render_phantom",
    "render_study",
]
