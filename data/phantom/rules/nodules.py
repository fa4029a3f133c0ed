"""Nodules, granulomas, masses, calcification and cavities or cysts."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from data.phantom.constants import FINE, RIGHT, SIDES, SIGN
from data.phantom.rules.registry import draw_rule
from data.phantom.rules.shapes import (
    draw_aortic_calcification, draw_bone_lesion, draw_cavity, draw_granulomas, draw_mediastinal_mass, draw_nodule,
)
from data.phantom.scene import Scene
from data.phantom.tags import Tag, pick_sides


@draw_rule("calcified granuloma", "granuloma", "granulomatous disease")
def _rule_granuloma(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    multi = tag.has("multiple", "scattered") or tag.name == "granulomatous disease"
    n = int(rng.integers(3, 7)) if multi else 1
    if tag.name == "granulomatous disease":
        sides = pick_sides(tag, rng, "both")
        draw_granulomas(scene, sides, tag.zone, rng, n)
        if rng.uniform() < 0.6:
            _hilar_calcification(scene, [sides[0]], rng)
        return
    if tag.has("hilum") and not tag.has("lung"):
        _hilar_calcification(scene, pick_sides(tag, rng), rng)
        return
    draw_granulomas(scene, pick_sides(tag, rng, "both" if multi else "random"), tag.zone, rng, n, big=tag.has("large"))


def _hilar_calcification(scene: Scene, sides: Sequence[str], rng: np.random.Generator) -> None:
    for side in sides:
        hx, hy = scene.hilum(side)
        for _ in range(int(rng.integers(2, 4))):
            x = hx + rng.uniform(-0.02, 0.03) * SIGN[side]
            y = hy + rng.uniform(-0.03, 0.03)
            draw_nodule(scene, x, y, rng.uniform(0.01, 0.014), 0.6, 0.85)


@draw_rule("calcinosis")
def _rule_calcinosis(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("aorta", "aorta, thoracic", "blood vessels"):
        draw_aortic_calcification(scene, rng)
    elif tag.has("mediastinum", "paratracheal", "trachea, carina") or (tag.has("lymph nodes") and not tag.has("hilum", "lung")):
        tx, ty = scene.carina
        side = pick_sides(tag, rng, "right")[0]
        for _ in range(int(rng.integers(2, 4))):
            if tag.has("trachea, carina"):
                x, y = tx + rng.uniform(-0.02, 0.02), ty + rng.uniform(0.01, 0.04)
            else:
                x, y = tx + SIGN[side] * rng.uniform(0.025, 0.045), ty - rng.uniform(0.02, 0.07)
            draw_nodule(scene, x, y, rng.uniform(0.008, 0.012), 0.5, 0.75)
    elif tag.has("hilum"):
        _hilar_calcification(scene, pick_sides(tag, rng), rng)
    elif tag.has("mitral valve"):
        cx, cy, rr, rl, ry = scene.heart_geometry()
        sl, val = scene.ellipse(cx + 0.03, cy - 0.01, 0.025, 0.018, angle=0.5, profile="ring")
        scene.density[sl] += 0.45 * val
    elif tag.has("abdomen"):
        g = scene.lungs[RIGHT]
        for _ in range(3):
            draw_nodule(scene, g.x_medial - 0.1 + rng.uniform(-0.05, 0.05), g.y_cp + rng.uniform(0.04, 0.12), 0.009, 0.0, 0.6)
    elif tag.has("pleura"):
        for side in pick_sides(tag, rng, "both"):
            g = scene.lungs[side]
            for _ in range(2):
                y = g.y_top + rng.uniform(0.4, 0.8) * g.height
                x = float(g.xlat(y)) - g.s * 0.008
                scene.band(x, y, 0.05, 0.006, math.pi / 2 + rng.uniform(-0.2, 0.2), 0.5, target="density")
    else:
        multi = tag.has("multiple", "scattered")
        sides = pick_sides(tag, rng, "both" if multi else "random")
        draw_granulomas(scene, sides, tag.zone, rng, int(rng.integers(2, 5)) if multi else 1, big=tag.has("large"))


@draw_rule("nodule", "nipple shadow")
def _rule_nodule(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "nipple shadow":
        for side in SIDES:
            g = scene.lungs[side]
            x, y = g.point(0.78, 0.62)
            draw_nodule(scene, x, y, 0.013, 0.55, 0.03)
        return
    multi = tag.has("multiple", "scattered", "diffuse")
    sides = pick_sides(tag, rng, "both" if multi else "random")
    n = int(rng.integers(3, 7)) if multi else 1
    small = tag.has("small")
    for i in range(n):
        side = sides[i % len(sides)]
        x, y = scene.zone_point(side, tag.zone, rng, jitter=1.5 if multi else 1.0)
        r = rng.uniform(0.015, 0.02) if small else rng.uniform(0.019, 0.026)
        draw_nodule(scene, x, y, r, 1.0, 0.12)


@draw_rule("mass", "expansile bone lesions")
def _rule_mass(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "expansile bone lesions" or (tag.has("ribs") and not tag.has("lung")):
        draw_bone_lesion(scene, tag, rng)
        return
    if tag.has("mediastinum", "paratracheal") and not tag.has("lung"):
        draw_mediastinal_mass(scene, tag, rng)
        return
    for side in pick_sides(tag, rng, "random"):
        x, y = scene.zone_point(side, tag.zone or "upper", rng)
        r = rng.uniform(0.045, 0.06) * (1.25 if tag.has("large") else 1.0)
        wob = [(3, 0.08, rng.uniform(0, 6.28)), (5, 0.05, rng.uniform(0, 6.28))]
        sl, val = scene.ellipse(x, y, r, r * rng.uniform(0.85, 1.05), angle=rng.uniform(0, 3), profile="sphere", wobble=wob)
        scene.add_fill(sl, np.clip(val * 2.5, 0, 1))
        scene.density[sl] += 0.05 * val


@draw_rule("cavitation", "cysts", "lucency", "blister", "bullous emphysema", "bronchiectasis", "cystic fibrosis")
def _rule_lucency(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "cavitation":
        for side in pick_sides(tag, rng, "right"):
            draw_cavity(scene, side, tag.zone or "upper", rng, 0.028)
        return
    if tag.name in ("bronchiectasis", "cystic fibrosis"):
        zone = tag.zone or ("upper" if tag.name == "cystic fibrosis" else "lower")
        for side in pick_sides(tag, rng, "both"):
            for _ in range(5):
                x, y = scene.zone_point(side, zone, rng, jitter=1.3)
                phi = rng.uniform(0, 3.14)
                for off in (-0.006, 0.006):
                    dx, dy = -math.sin(phi) * off, math.cos(phi) * off
                    p = np.array([(x + dx - 0.02 * math.cos(phi), y + dy - 0.02 * math.sin(phi)), (x + dx + 0.02 * math.cos(phi), y + dy + 0.02 * math.sin(phi))])
                    scene.stroke(p, 0.7, FINE, target="fill")
                sl, val = scene.ellipse(x + 0.03, y + 0.02, 0.009, 0.009, profile="ring")
                scene.add_fill(sl, 0.8 * val)
        return
    bullae = tag.name in ("blister", "bullous emphysema")
    zone = tag.zone or ("upper" if bullae else None)
    multi = bullae or tag.has("multiple", "scattered")
    for side in pick_sides(tag, rng, "both" if bullae else "random"):
        for _ in range(int(rng.integers(2, 4)) if multi else 1):
            x, y = scene.zone_point(side, zone, rng)
            r = rng.uniform(0.03, 0.05) if bullae or tag.has("large") else rng.uniform(0.02, 0.03)
            sl, val = scene.ellipse(x, y, r, r * 0.9, profile="flat")
            scene.lucent[sl] += 0.12 * val
            scene.vessel_mask[sl] *= 1.0 - val
            sl, val = scene.ellipse(x, y, r, r * 0.9, profile="ring")
            scene.add_fill(sl, 0.4 * val)
