"""Mediastinum, abdomen and soft tissue: aortic wall, hernias, free gas, emphysema streaks, epicardial fat."""
from __future__ import annotations

import numpy as np

from data.phantom.constants import FINE, LEFT, LINE, MIDLINE, RIGHT, SIGN
from data.phantom.curves import ramp, smooth
from data.phantom.rules.registry import draw_rule
from data.phantom.rules.shapes import draw_aortic_calcification, draw_nodule
from data.phantom.scene import Scene
from data.phantom.tags import Tag, pick_sides


@draw_rule("aorta", "aorta, thoracic", "atherosclerosis", "aortic aneurysm")
def _rule_aortic_wall(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "atherosclerosis" or tag.has("calcified", "atherosclerosis", "calcinosis"):
        draw_aortic_calcification(scene, rng)
        if tag.name == "atherosclerosis" and not tag.has("aorta", "aorta, thoracic"):
            cx, cy, rr, rl, ry = scene.heart_geometry()
            scene.stroke(np.array([(cx + rl * 0.2, cy - ry * 0.45), (cx + rl * 0.45, cy - ry * 0.2)]), 0.4, FINE, target="density")


@draw_rule("hernia, hiatal")
def _rule_hiatal_hernia(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    """A retrocardiac soft-tissue mass holding an air-fluid level."""
    cx, cy, rr, rl, ry = scene.heart_geometry()
    r = 0.045 * min(max(tag.severity, 0.8), 1.4)
    x, y = MIDLINE + scene.a.shift + 0.015, cy + 0.0
    sl, val = scene.ellipse(x, y, r * 1.2, r, profile="flat")
    scene.density[sl] += 0.08 * val
    sl, X, Y = scene.box(x, y, r * 1.2, r)
    rho = np.sqrt(((X - x) / (r * 1.05)) ** 2 + ((Y - y) / (r * 0.88)) ** 2)
    air = ramp((1.0 - rho) / 0.08) * ramp((y + 0.15 * r - Y) / scene.e)
    scene.lucent[sl] += 0.38 * air


@draw_rule("hernia, diaphragmatic", "colonic interposition", "pneumoperitoneum", "cholelithiasis")
def _rule_abdomen(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "pneumoperitoneum":
        for side in (RIGHT,) if not tag.sides else tag.sides:
            g = scene.lungs[side]
            sl, X, Y = scene.box(0.5 * (g.x_medial + g.x_wall), g.y_cp, abs(g.x_wall - g.x_medial) / 2 + 0.02, 0.12)
            top = g.dome(X) + 0.008
            crescent = ramp((Y - top) / scene.e) * smooth((top + 0.03 - Y) / 0.012)
            r = (X - g.x_medial) / (g.x_wall - g.x_medial)
            scene.lucent[sl] += 0.45 * crescent * smooth(r / 0.15) * smooth((1 - r) / 0.1)
        return
    if tag.name == "cholelithiasis":
        g = scene.lungs[RIGHT]
        for _ in range(4):
            draw_nodule(scene, g.x_medial - 0.08 + rng.uniform(-0.02, 0.02), g.y_cp + 0.1 + rng.uniform(-0.02, 0.02), 0.008, 0.0, 0.5)
        return
    side = LEFT if tag.name == "hernia, diaphragmatic" else RIGHT
    side = tag.sides[0] if len(tag.sides) == 1 else side
    g = scene.lungs[side]
    above = tag.name == "hernia, diaphragmatic"
    for k in range(4):
        x = g.x_medial + (0.3 + 0.15 * k) * (g.x_wall - g.x_medial)
        y = float(g.dome(x)) + (-0.04 if above else 0.03) + rng.uniform(-0.01, 0.01)
        sl, val = scene.ellipse(x, y, 0.022, 0.016, profile="flat")
        if above:
            scene.add_fill(sl, val)
        scene.lucent[sl] += 0.3 * val


@draw_rule("subcutaneous emphysema", "mediastinal emphysema")
def _rule_gas_streaks(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    a = scene.a
    if tag.name == "mediastinal emphysema":
        for s in (-1, 1):
            ys = np.linspace(a.y_top, a.y_top + 0.4, 10)
            scene.stroke(np.stack([MIDLINE + s * (a.med_w + 0.004) + 0.0 * ys, ys], 1), 0.3, LINE, target="lucent")
        return
    for side in pick_sides(tag, rng, "both"):
        s = SIGN[side]
        for _ in range(6):
            x = MIDLINE + s * (a.tw + 0.03 + rng.uniform(0, a.body_margin * 0.6))
            y = rng.uniform(a.y_top, a.y_top + 0.5)
            pts = [(x, y), (x + s * rng.uniform(-0.01, 0.01), y + rng.uniform(0.04, 0.08))]
            scene.stroke(np.array(pts), 0.35, LINE, target="lucent")


@draw_rule("epicardial fat")
def _rule_epicardial_fat(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    cx, cy, rr, rl, ry = scene.heart_geometry()
    for side in pick_sides(tag, rng, "left"):
        x = cx + (rl + 0.015 if side == LEFT else -rr - 0.015)
        sl, val = scene.ellipse(x, cy + 0.02, 0.035, 0.035, profile="sphere")
        scene.add_occlude(sl, 0.7 * val)
