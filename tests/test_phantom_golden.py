"""Golden-image hashes pin the renderer's pixels; the cache id follows them, not the source text."""
from __future__ import annotations

import json

import pytest

from data.phantom import golden
from data.phantom import PHANTOM_VERSION, known_findings


def test_every_golden_render_matches_its_stored_hash():
    stored = golden.load_golden()
    assert stored["phantom_version"] == PHANTOM_VERSION, "PHANTOM_VERSION bumped: regenerate golden.json (--write)"
    now = golden.golden_hashes()
    changed = sorted(k for k in now.keys() | stored["hashes"].keys() if now.get(k) != stored["hashes"].get(k))
    assert not changed, (
        f"phantom pixels changed for {changed}: if intended, bump PHANTOM_VERSION and run "
        "python -m data.phantom.golden --write (cached demos then re-render)"
    )


def test_known_findings_are_pinned():
    """118 headings from 40 anatomy and 90 draw registrations: a rule module left unimported fails here."""
    names = known_findings()
    assert len(names) == 118
    stored = {k.split(":", 1)[1] for k in golden.load_golden()["hashes"] if k.startswith("finding:")}
    assert names == stored
    assert {"cardiomegaly", "pleural effusion", "pneumothorax", "nodule", "catheters, indwelling",
            "fractures, bone", "hernia, hiatal", "pulmonary congestion", "kyphosis"} <= names


def test_renderer_id_depends_on_version_and_hashes_not_on_layout(tmp_path):
    stored = golden.load_golden()
    base = golden.renderer_id()
    assert base.startswith(f"v{PHANTOM_VERSION}-")

    reformatted = tmp_path / "same.json"
    reformatted.write_text(json.dumps(stored, indent=4))
    assert golden.renderer_id(reformatted) == base

    one_pixel = dict(stored, hashes=dict(stored["hashes"], **{"study:normal@256": "0" * 64}))
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(one_pixel))
    assert golden.renderer_id(changed) != base

    bumped = tmp_path / "bumped.json"
    bumped.write_text(json.dumps(dict(stored, phantom_version=PHANTOM_VERSION + 1)))
    assert golden.renderer_id(bumped) not in (base, golden.renderer_id(changed))


def test_writing_new_hashes_needs_a_version_bump(tmp_path, monkeypatch):
    path = tmp_path / "golden.json"
    stored = golden.load_golden()
    path.write_text(json.dumps(dict(stored, hashes=dict(stored["hashes"], **{"study:normal@256": "0" * 64}))))
    fast = {k: v for k, v in stored["hashes"].items()}
    monkeypatch.setattr(golden, "golden_hashes", lambda: dict(fast))
    with pytest.raises(ValueError, match="bump"):
        golden.write_golden(path, version=PHANTOM_VERSION)
    written = golden.write_golden(path, version=PHANTOM_VERSION + 1)
    assert written == {"phantom_version": PHANTOM_VERSION + 1, "hashes": fast}
    assert golden.load_golden(path) == written
    # Unchanged pixels may be rewritten under the same version (e.g. a reformatted file).
    assert golden.write_golden(path, version=PHANTOM_VERSION + 1)["hashes"] == fast


def test_demo_cache_id_is_the_golden_renderer_id():
    from data.demo import demo_meta

    assert demo_meta(0, 64, None)["renderer"] == golden.renderer_id()


def test_package_layout_rules_share_only_shapes_and_modules_stay_small():
    """Rule modules import the registry and ``shapes``, never each other; no module over 600 lines."""
    import ast
    from pathlib import Path

    import data.phantom

    root = Path(data.phantom.__file__).parent
    rules = sorted((root / "rules").glob("*.py"))
    organ_modules = {p.stem for p in rules} - {"__init__", "registry", "shapes"}
    assert organ_modules == {"anatomy", "bones", "devices", "lungs", "mediastinum", "nodules"}
    for path in rules:
        if path.stem == "__init__":
            continue
        imported = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        siblings = {m.rsplit(".", 1)[1] for m in imported if m and m.startswith("data.phantom.rules.")}
        assert siblings <= {"registry", "shapes"} - {path.stem}, (path.name, siblings)
    for path in root.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path
