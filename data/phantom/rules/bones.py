"""Bones: spine degeneration, vertebral compression, rib and clavicle fractures, shoulders."""
from __future__ import annotations

import math

import numpy as np

from data.phantom.constants import SIDES, SIGN, SOFT
from data.phantom.rules.registry import draw_rule
from data.phantom.rules.shapes import draw_compressed_vertebra, draw_streaks, draw_vertebra_levels
from data.phantom.scene import Scene
from data.phantom.tags import Tag, pick_sides


@draw_rule("thoracic vertebrae", "spine", "lumbar vertebrae", "cervical vertebrae", "osteophyte", "spondylosis", "arthritis", "hyperostosis, diffuse idiopathic skeletal", "sclerosis")
def _rule_spine_degeneration(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    """Marginal osteophytes (bright spurs at vertebral corners) and endplate sclerosis."""
    if tag.name in ("arthritis", "sclerosis") and tag.has("humerus", "shoulder", "clavicle"):
        _shoulder(scene, tag, rng)
        return
    if tag.name in ("thoracic vertebrae", "lumbar vertebrae") and tag.has("fracture", "deformity", "wedge"):
        draw_compressed_vertebra(scene, tag, rng)
        return
    if tag.has("lumbar vertebrae") or tag.name == "lumbar vertebrae":
        y0, y1 = 0.72, 0.98
    elif tag.has("cervical vertebrae") or tag.name == "cervical vertebrae":
        y0, y1 = 0.0, scene.a.y_top + 0.02
    else:
        y0, y1 = scene.a.y_top + 0.15, 0.74
    levels = draw_vertebra_levels(scene, y0, y1)
    n = min(len(levels), int(round({0.45: 4, 0.75: 5, 1.0: 7, 1.25: 8, 1.6: 10}.get(tag.severity, 6))))
    if n <= 0:
        return
    chosen = np.sort(rng.choice(levels, size=n, replace=False))
    hw = scene.spine_hw
    amp = 0.5 if tag.name != "sclerosis" else 0.3
    for y in chosen:
        x = float(scene.spine_x(y))
        scene.band(x, y - 0.005, 2 * hw, 0.0035, 0.0, 0.3, target="density")
        scene.band(x, y + 0.005, 2 * hw, 0.0035, 0.0, 0.3, target="density")
        for side in SIDES:
            if rng.uniform() < 0.85:
                s = SIGN[side]
                for dy in (-1, 1):
                    sl, val = scene.ellipse(x + s * (hw + 0.004), y + dy * 0.006, 0.011, 0.0045, angle=s * dy * 0.35, profile="sphere")
                    scene.density[sl] += amp * val
    if tag.name == "hyperostosis, diffuse idiopathic skeletal":
        ys = np.linspace(y0, y1, 20)
        scene.stroke(np.stack([scene.spine_x(ys) - hw - 0.006, ys], 1), 0.35, SOFT, target="density")


def _rib_fracture(scene: Scene, side: str, rng: np.random.Generator, healed: bool) -> None:
    ribs = scene.ribs[side]
    xs, ys, hh = ribs[int(rng.integers(3, 9))]
    j = int(rng.integers(22, 37))
    x, y = xs[j], ys[j]
    phi = math.atan2(ys[j + 1] - ys[j - 1], xs[j + 1] - xs[j - 1])
    if healed:  # fusiform callus
        sl, val = scene.ellipse(x, y, 0.028, hh * 2.0, angle=phi, profile="sphere")
        scene.bones[sl] += 0.4 * val
    else:  # lucent fracture line with a stepped fragment
        scene.band(x, y, hh * 3.5, 0.004, phi + math.pi / 2, 0.2, target="lucent")
        sl, val = scene.ellipse(x + 0.012 * math.cos(phi), y + 0.012 * math.sin(phi) + hh * 0.7, 0.014, hh * 1.1, angle=phi, profile="sphere")
        scene.bones[sl] += 0.25 * val


@draw_rule("fractures, bone", "deformity", "ribs", "bone and bones", "dislocations", "shoulder", "humerus", "clavicle")
def _rule_bones(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    name = tag.name
    if name in ("shoulder", "dislocations", "humerus") or tag.has("humerus", "shoulder"):
        _shoulder(scene, tag, rng)
        return
    if tag.has("thoracic vertebrae", "lumbar vertebrae", "spine") or (name == "deformity" and not tag.has("ribs", "clavicle", "thorax", "lung", "breast", "sternum", "trachea", "mediastinum", "hilum")):
        draw_compressed_vertebra(scene, tag, rng)
        return
    if tag.has("clavicle") or name == "clavicle":
        side = pick_sides(tag, rng)[0]
        curve = scene.clavicle[side]
        j = int(rng.integers(20, 40))
        x, y = curve[j]
        scene.band(x, y, 0.04, 0.0035, math.pi / 2 + 0.3, 0.35, target="lucent")
        sl, val = scene.ellipse(x + SIGN[side] * 0.01, y + 0.008, 0.02, 0.01, profile="sphere")
        scene.bones[sl] += 0.2 * val
        return
    if name == "deformity" and tag.has("lung", "hilum", "mediastinum", "trachea"):
        side = pick_sides(tag, rng)[0]
        draw_streaks(scene, side, "hilum", rng, 3, 0.6)
        return
    if name == "deformity" and tag.has("breast"):
        side = pick_sides(tag, rng)[0]
        g = scene.lungs[side]
        x, y = g.point(0.8, 0.6)
        sl, val = scene.ellipse(x, y, 0.08, 0.05, profile="sphere")
        scene.density[sl] += 0.15 * val
        return
    sides = pick_sides(tag, rng, "both" if tag.has("bilateral") else "random")
    healed = tag.has("healed", "chronic") or name == "deformity"
    n = int(rng.integers(2, 4)) if tag.has("multiple") else 1
    for side in sides:
        for _ in range(n):
            _rib_fracture(scene, side, rng, healed)


def _shoulder(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    for side in pick_sides(tag, rng, "both" if tag.has("degenerative") else "random"):
        hx, hy = scene.humeral_head[side]
        if tag.name == "dislocations":
            sl, val = scene.ellipse(hx - SIGN[side] * 0.03, hy + 0.06, 0.06, 0.065, profile="sphere")
            scene.bones[sl] += 0.3 * val
        else:
            sl, val = scene.ellipse(hx, hy, 0.06, 0.065, profile="ring")
            scene.bones[sl] += 0.35 * val
            sl, val = scene.ellipse(hx + SIGN[side] * 0.02, hy + 0.055, 0.012, 0.008, profile="sphere")
            scene.bones[sl] += 0.4 * val
