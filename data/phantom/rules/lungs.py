"""Pleura and parenchyma: effusion, blunting, opacities, atelectasis, scarring, thickening, markings,
edema and congestion, pneumothorax."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from data.phantom.anatomy import LungGeom
from data.phantom.constants import FINE, LINE, SIDES, SIGN, SOFT
from data.phantom.curves import catmull_rom, ramp, smooth
from data.phantom.rules.registry import draw_rule
from data.phantom.rules.shapes import (
    draw_bone_lesion, draw_cavity, draw_effusion, draw_granulomas, draw_mediastinal_mass, draw_patch, draw_reticular, draw_streaks,
)
from data.phantom.scene import Scene
from data.phantom.tags import Tag, pick_sides


@draw_rule("pleural effusion", "hemothorax")
def _rule_effusion(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    sev = tag.severity
    frac = {0.45: 0.17, 0.75: 0.2, 1.0: 0.25, 1.25: 0.33, 1.6: 0.5}.get(sev, 0.25)
    for side in pick_sides(tag, rng, "both"):
        draw_effusion(scene, side, frac + rng.uniform(-0.02, 0.02), rng)


@draw_rule("costophrenic angle", "pleura", "sulcus")
def _rule_blunting(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("blunted", "obscured") or tag.name == "costophrenic angle":
        for side in pick_sides(tag, rng, "both"):
            draw_effusion(scene, side, 0.15 if tag.has("mild") else 0.17, rng)
    else:
        _pleural_thickening(scene, tag, rng)


@draw_rule("opacity", "density", "airspace disease", "infiltrate", "pneumonia", "consolidation", "bronchopneumonia", "pulmonary alveoli", "bronchitis", "bronchiolitis")
def _rule_opacity(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("mediastinum", "paratracheal") and not tag.has("lung"):
        draw_mediastinal_mass(scene, tag, rng)
        return
    if tag.has("ribs", "clavicle", "sternum") and not tag.has("lung"):
        draw_bone_lesion(scene, tag, rng)
        return
    dense = tag.name in ("pneumonia", "consolidation")
    strength = {0.45: 0.55, 0.75: 0.68}.get(tag.severity, 0.88 if dense else 0.8)
    sides = pick_sides(tag, rng, "both" if tag.has("diffuse", "interstitial") else "random")
    zone = tag.zone
    multi = tag.has("multiple", "scattered", "multilobar")
    for side in sides:
        if tag.has("interstitial", "reticular", "diffuse"):
            draw_reticular(scene, [side], zone, 0.45 * strength)
            if tag.has("diffuse"):
                draw_patch(scene, side, zone, rng, 0.35 * strength, 0.1)
        elif tag.has("streaky"):
            draw_streaks(scene, side, zone, rng, int(rng.integers(3, 5)), 0.7 * strength)
            draw_patch(scene, side, zone, rng, 0.35 * strength, 0.06)
        elif tag.has("round") or (tag.name == "density" and not tag.has("patchy")):
            for _ in range(int(rng.integers(2, 4)) if multi else 1):
                x, y = scene.zone_point(side, zone, rng)
                r = rng.uniform(0.022, 0.034)
                sl, val = scene.ellipse(x, y, r, r * rng.uniform(0.85, 1.1), profile="sphere")
                scene.add_fill(sl, 0.95 * val)
                scene.density[sl] += 0.06 * val
        else:
            radius = (0.085 if zone is not None else 0.095) * (1.25 if tag.severity > 1.1 else 1.0)
            radius *= 0.7 if tag.has("focal", "small") else 1.0
            for _ in range(2 if multi else 1):
                draw_patch(scene, side, zone, rng, strength, radius)
                if zone is None or tag.has("multilobar"):
                    draw_patch(scene, side, "lower" if zone is None else "upper", rng, strength * 0.8, radius * 0.8)
            if dense:
                _air_bronchograms(scene, side, zone, rng)


def _air_bronchograms(scene: Scene, side: str, zone: str | None, rng: np.random.Generator) -> None:
    cx, cy = scene.zone_point(side, zone, rng, jitter=0.3)
    hx, hy = scene.hilum(side)
    for _ in range(2):
        phi = math.atan2(cy - hy, cx - hx) + rng.uniform(-0.4, 0.4)
        L = rng.uniform(0.04, 0.07)
        pts = np.array([(cx - 0.5 * L * math.cos(phi), cy - 0.5 * L * math.sin(phi)), (cx + 0.5 * L * math.cos(phi), cy + 0.5 * L * math.sin(phi))])
        scene.stroke(pts, 0.1, LINE, target="lucent")


@draw_rule("pulmonary atelectasis")
def _rule_atelectasis(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    """Plate-like (band) atelectasis in the named zone, basal by default, with a little haze."""
    zone = tag.zone or "lower"
    strength = 0.7 if tag.severity < 1.0 else 0.85
    for side in pick_sides(tag, rng, "random"):
        g = scene.lungs[side]
        for _ in range(2 if tag.has("multiple", "scattered") else 1):
            x, y = scene.zone_point(side, zone, rng, jitter=0.6)
            if zone == "lower":
                y = float(g.dome(x)) - rng.uniform(0.045, 0.07)
            length = abs(g.x_wall - g.x_medial) * rng.uniform(0.5, 0.7)
            angle = -g.s * rng.uniform(0.05, 0.3)
            for k, (dy, frac_len, amp) in enumerate(((0.0, 1.0, strength), (rng.uniform(0.022, 0.034), 0.65, 0.6 * strength))):
                ux, uy = math.cos(angle), math.sin(angle)
                t = np.linspace(-0.5, 0.5, 7)[:, None] * length * frac_len
                wav = rng.normal(0.0, 0.003, (7, 1))
                pts = np.hstack([x + g.s * 0.01 * k + t * ux - wav * uy, y + dy + t * uy + wav * ux])
                scene.stroke(catmull_rom(pts, 6), amp * np.array([0.3, 0.8, 1, 1, 1, 0.8, 0.3]), SOFT, target="fill")
            draw_patch(scene, side, None, rng, 0.3, 0.05, at=(x, y + 0.01))
        if tag.has("patchy", "focal") or zone in ("middle", "retrocardiac") or tag.has("lower lobe"):
            draw_patch(scene, side, zone, rng, 0.55, 0.06)


@draw_rule("cicatrix", "pulmonary fibrosis", "fibrosis", "lung diseases, interstitial", "tuberculosis")
def _rule_scarring(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name in ("pulmonary fibrosis", "fibrosis", "lung diseases, interstitial"):
        sides = pick_sides(tag, rng, "both")
        draw_reticular(scene, sides, tag.zone or "lower", 0.55)
        for side in sides:
            draw_streaks(scene, side, tag.zone or "lower", rng, 3, 0.5)
        return
    zone = tag.zone or ("upper" if tag.name == "tuberculosis" else None)
    for side in pick_sides(tag, rng, "right" if tag.name == "tuberculosis" else "random"):
        if zone == "apex" or tag.has("pleura"):
            _apical_cap(scene, side, 0.022)
        draw_streaks(scene, side, zone, rng, int(rng.integers(4, 6)), 0.75, length=0.11)
        draw_patch(scene, side, zone, rng, 0.4, 0.055)
        if tag.name == "tuberculosis":
            draw_cavity(scene, side, zone, rng, 0.03)
            draw_granulomas(scene, [side], zone, rng, 3)


def _apical_cap(scene: Scene, side: str, thick: float) -> None:
    g = scene.lungs[side]
    sdf = scene.sdf[side]
    cap = (sdf > -0.004) * smooth((thick - sdf) / (0.5 * thick)) * smooth((g.y_top + 0.13 * g.height - scene.Y) / 0.03)
    scene.add_fill(slice(None), 0.95 * cap)


def _pleural_thickening(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    for side in pick_sides(tag, rng, "both"):
        g = scene.lungs[side]
        if tag.has("apex") or not tag.has("base", "lower lobe"):
            _apical_cap(scene, side, 0.03)
        if not tag.has("apex"):
            sdf = scene.sdf[side]
            lateral = (scene.X - g.xmed(scene.Y)) * g.s > 0.6 * abs(g.x_wall - g.x_medial)
            rim = (sdf > -0.004) * smooth((0.014 - sdf) / 0.007) * lateral * smooth((scene.Y - g.y_top - 0.15) / 0.05)
            scene.add_fill(slice(None), 0.9 * rim)


@draw_rule("thickening")
def _rule_thickening(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("bronchi", "interstitial", "bronchovascular"):
        draw_reticular(scene, pick_sides(tag, rng, "both"), tag.zone, 0.35)
    else:
        _pleural_thickening(scene, tag, rng)


@draw_rule("markings")
def _rule_markings(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    sides = pick_sides(tag, rng, "both")
    strength = 0.45 * min(tag.severity, 1.3)
    if tag.has("interstitial", "reticular", "irregular"):
        draw_reticular(scene, sides, tag.zone, strength)
    else:  # bronchovascular crowding: thicker streaks radiating from the hila
        for side in sides:
            hx, hy = scene.hilum(side)
            for _ in range(6):
                phi = rng.uniform(-1.2, 1.4)
                L = rng.uniform(0.1, 0.18)
                s = SIGN[side]
                pts = [(hx, hy), (hx + s * math.cos(phi) * L * 0.5, hy + math.sin(phi) * L * 0.5 + rng.uniform(-0.01, 0.01)), (hx + s * math.cos(phi) * L, hy + math.sin(phi) * L)]
                scene.stroke(catmull_rom(pts, 8), [0.35, 0.25, 0.05], SOFT, target="fill")
        draw_reticular(scene, sides, tag.zone, 0.15)


@draw_rule("pulmonary edema", "heart failure")
def _rule_edema(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    """Bilateral perihilar (bat-wing) haze; Kerley B lines when interstitial."""
    strength = 0.6 * min(tag.severity, 1.3) if tag.name == "pulmonary edema" else 0.45
    for side in SIDES:
        hx, hy = scene.hilum(side)
        g = scene.lungs[side]
        cx, cy = hx + g.s * 0.04, hy + (0.06 if tag.has("base", "lower lobe") else 0.02)
        sl, X, Y = scene.box(cx, cy, 0.22, 0.28)
        env = np.exp(-0.5 * (((X - cx) / 0.085) ** 2 + ((Y - cy) / 0.13) ** 2))
        tex = np.clip(0.7 + 0.3 * scene.cloud[sl], 0, 1.2)
        scene.add_fill(sl, strength * env * tex)
        if tag.has("interstitial") or tag.name == "heart failure":
            draw_reticular(scene, [side], "lower", 0.3 * strength)
            for k in range(7):
                y = g.y_cp - 0.03 - k * 0.016 + rng.uniform(-0.004, 0.004)
                x0 = float(g.xlat(y))
                scene.stroke(np.array([(x0 - g.s * 0.002, y), (x0 - g.s * 0.03, y + rng.uniform(-0.003, 0.003))]), 0.7, FINE, target="fill")
    if tag.name == "heart failure":
        for side in SIDES:
            draw_effusion(scene, side, 0.13, rng)


@draw_rule("pulmonary congestion")
def _rule_congestion_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    for side in SIDES:
        hx, hy = scene.hilum(side)
        g = scene.lungs[side]
        cx, cy = hx + g.s * 0.03, hy
        sl, X, Y = scene.box(cx, cy, 0.2, 0.25)
        env = np.exp(-0.5 * (((X - cx) / 0.08) ** 2 + ((Y - cy) / 0.12) ** 2))
        scene.add_fill(sl, 0.35 * min(tag.severity, 1.3) * env * np.clip(0.7 + 0.3 * scene.cloud[sl], 0, 1.2))


def _collapsed(g: LungGeom, c: float) -> LungGeom:
    return replace(g, x_wall=g.x_wall - g.s * c * 1.2, y_top=g.y_top + c * 1.3, x_apex=g.x_apex - g.s * c * 0.3)


def _pneumothorax(scene: Scene, side: str, size: float, fluid: bool) -> None:
    """Air between chest wall and a collapsed lung: a visible pleural line, no lung markings beyond."""
    g = scene.lungs[side]
    gc = _collapsed(g, size)
    sdf_c = scene.lung_sdf(gc)
    m_full = scene.lung_m[side]
    m_c = ramp(sdf_c / scene.e)
    region = m_full * (1.0 - m_c)
    scene.lucent += 0.16 * region
    scene.vessel_mask *= 1.0 - region
    near_wall = smooth(scene.sdf[side] / (3.0 * scene.e))
    line = np.exp(-((sdf_c / (1.1 / scene.N)) ** 2)) * near_wall
    scene.density += 0.16 * line
    scene.add_fill(slice(None), 0.05 * m_c * m_full)  # the collapsed lung is slightly denser
    if fluid:
        level = g.y_cp - 0.25 * g.height
        scene.add_fill(slice(None), m_full * ramp((scene.Y - level) / scene.e))


@draw_rule("pneumothorax", "hydropneumothorax", "hemopneumothorax")
def _rule_pneumothorax(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    size = {0.45: 0.03, 0.75: 0.035, 1.0: 0.05, 1.25: 0.065, 1.6: 0.1}.get(tag.severity, 0.05)
    for side in pick_sides(tag, rng, "random"):
        _pneumothorax(scene, side, size + rng.uniform(-0.005, 0.005), tag.name != "pneumothorax")
