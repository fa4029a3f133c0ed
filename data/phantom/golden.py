"""Golden-image hashes of the phantom renderer, and the renderer id built from them.

Why: the demo cache must be re-rendered when, and only when, pixels change. Hashing the
renderer's source re-rendered all 3,955 images on a comment edit. Instead a fixed set of small
renders (every registered finding in three qualifier variants, real multi-tag studies, a normal
at full size) is hashed into ``golden.json``; ``tests/test_phantom_golden.py`` fails as soon as
any of them changes, and the cache id is ``PHANTOM_VERSION`` plus a hash of that file.

Bump policy: a change that alters pixels fails the golden test. If the change is intended, bump
``PHANTOM_VERSION`` and regenerate with ``python -m data.phantom.golden --write`` (it refuses to
store new hashes under the old version). Comment and layout edits change neither, so cached
demos stay valid.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

from data.phantom import PHANTOM_VERSION, known_findings, render_phantom

GOLDEN_FILE = Path(__file__).with_name("golden.json")
FINDING_SIZE = 64
# Qualifier sets each finding is rendered with: bare, and two that flip side, zone and size.
VARIANTS = ("", "/left/upper lobe/small", "/right/lower lobe/large/multiple")
# Real IU studies with many findings (tag order and repeats matter: each tag has its own stream).
STUDIES: dict[str, tuple[tuple[str, ...], int]] = {
    "normal@256": (("normal",), 256),
    "CXR2907@128": (("Cicatrix/lung/apex/bilateral", "Thickening/pleura/apex/bilateral",
                     "Airspace Disease/lung/upper lobe/right/patchy", "Lung/hyperdistention",
                     "Pulmonary Disease, Chronic Obstructive", "Pleural Effusion/left/large", "Opacity/lung/base/left",
                     "Mass/lung/base/left", "Surgical Instruments/mediastinum", "Implanted Medical Device/heart",
                     "Pneumonia/upper lobe/right", "Airspace Disease/lung/base/left",
                     "Pulmonary Atelectasis/base/left"), 128),
    "CXR650@256": (("Technical Quality of Image Unsatisfactory", "Aorta/tortuous", "Pleural Effusion/right/moderate",
                    "Pleural Effusion/left/small", "Opacity/lung/bilateral/interstitial",
                    "Nodule/lung/bilateral/interstitial", "Cardiac Shadow/enlarged/mild", "Fractures, Bone/humerus/left",
                    "Stents", "Hernia, Hiatal/large", "Cardiomegaly", "Aorta/prominent"), 256),
    "CXR1867@128": (("Cardiomegaly/mild", "Aorta, Thoracic/tortuous", "Calcinosis/aorta, thoracic",
                     "Opacity/lung/base/bilateral/streaky/mild", "Costophrenic Angle/left/blunted",
                     "Bone Diseases, Metabolic", "Spine/degenerative", "Deformity/humerus/right/chronic",
                     "Fractures, Bone/ribs/right/multiple/healed", "Pulmonary Atelectasis/base/bilateral/mild",
                     "Cicatrix/lung/base/bilateral/mild", "Pleural Effusion/left/small"), 128),
    "CXR2615@128": (("Cardiomegaly/moderate", "Pleural Effusion/bilateral/small", "Opacity/lung/multiple/abnormal",
                     "Pulmonary Edema", "Costophrenic Angle/bilateral/blunted/mild", "Thickening/pleura",
                     "Opacity/lung/middle lobe/bilateral/interstitial/multiple",
                     "Opacity/lung/base/bilateral/interstitial/multiple", "Pulmonary Congestion",
                     "Nodule/lung/lower lobe/right", "Density/lung/lower lobe/right", "Calcinosis/lung/hilum/right"), 128),
    "repeated-tag@96": (("Nodule/right", "Nodule/right", "Pneumothorax/left"), 96),
}


def _digest(images) -> str:
    h = hashlib.sha256()
    for img in images:
        h.update(f"{img.shape}{img.dtype};".encode())
        h.update(img.tobytes())
    return h.hexdigest()


def golden_hashes() -> dict[str, str]:
    """Render every golden case now: ``finding:<name>`` (its three variants) and ``study:<case>``."""
    out = {}
    for name in sorted(known_findings()):
        renders = [render_phantom([name + q], seed=0, study_id=f"golden-{name}", size=FINDING_SIZE) for q in VARIANTS]
        out[f"finding:{name}"] = _digest(renders)
    for case, (tags, size) in STUDIES.items():
        out[f"study:{case}"] = _digest([render_phantom(list(tags), seed=0, study_id=case, size=size)])
    return out


def load_golden(path: Path = GOLDEN_FILE) -> dict:
    """The stored ``{"phantom_version": int, "hashes": {case: sha256}}``."""
    return json.loads(Path(path).read_text())


def renderer_id(path: Path = GOLDEN_FILE) -> str:
    """Cache id of the renderer: its version plus a hash of the stored golden hashes.

    Independent of source text (comments, module layout), dependent on pixels via the golden test."""
    stored = load_golden(path)
    canonical = json.dumps(stored["hashes"], sort_keys=True, separators=(",", ":"))
    return f"v{int(stored['phantom_version'])}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def write_golden(path: Path = GOLDEN_FILE, version: int = PHANTOM_VERSION) -> dict:
    """Store the current hashes; refuse if pixels changed but ``version`` was not bumped."""
    path = Path(path)
    hashes = golden_hashes()
    if path.is_file():
        stored = load_golden(path)
        if stored["hashes"] != hashes and int(stored["phantom_version"]) >= int(version):
            changed = sorted(k for k in hashes.keys() | stored["hashes"].keys() if hashes.get(k) != stored["hashes"].get(k))
            raise ValueError(
                f"{len(changed)} golden renders changed ({', '.join(changed[:5])}...) but PHANTOM_VERSION is still "
                f"{version}: bump it (data/phantom/constants.py) so cached demos re-render, then write again"
            )
    data = {"phantom_version": int(version), "hashes": hashes}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check or rewrite the phantom renderer's golden hashes.")
    parser.add_argument("--write", action="store_true", help="store the current hashes (after bumping PHANTOM_VERSION)")
    args = parser.parse_args(argv)
    if args.write:
        try:
            data = write_golden()
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {GOLDEN_FILE} ({len(data['hashes'])} hashes), renderer id {renderer_id()}")
        return 0
    stored = load_golden()["hashes"]
    changed = sorted(k for k, v in golden_hashes().items() if stored.get(k) != v)
    print(f"renderer id {renderer_id()}: " + (f"{len(changed)} renders differ: {changed}" if changed else "all golden renders match"))
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
