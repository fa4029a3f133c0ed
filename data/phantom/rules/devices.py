"""Devices: central lines, pacemakers, valves, ECG leads, wires, clips, stents, tubes, spinal hardware."""
from __future__ import annotations

import math

import numpy as np

from data.phantom.constants import FINE, LEFT, LINE, MIDLINE, RIGHT, SIDES, SIGN, SOFT
from data.phantom.curves import catmull_rom
from data.phantom.rules.registry import draw_rule
from data.phantom.rules.shapes import draw_clips
from data.phantom.scene import Scene
from data.phantom.tags import Tag, pick_sides


def _venous_route(scene: Scene, side: str) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """Subclavian -> brachiocephalic -> SVC points for a line entering on ``side``, and the RA entry."""
    a = scene.a
    s = SIGN[side]
    clav_y = a.y_top + a.clav_dy
    cx, cy, rr, rl, ry = scene.heart_geometry()
    svc_x = MIDLINE + a.shift - a.med_w * 0.7
    route = [(MIDLINE + s * 0.11, clav_y + 0.025)]
    if side == LEFT:
        route.append((MIDLINE + 0.02, clav_y + 0.05))
    route += [(svc_x, clav_y + 0.075), (svc_x + 0.003, cy - ry * 0.75)]
    return route, (svc_x + 0.008, cy - ry * 0.5)


def _catheter_path(scene: Scene, side: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """A central line entering on ``side`` and ending at the cavo-atrial junction (right of midline)."""
    a = scene.a
    s = SIGN[side]
    clav_y = a.y_top + a.clav_dy
    route, ra = _venous_route(scene, side)
    kind = int(rng.integers(3))
    if kind == 0:  # internal jugular: straight down the neck into the SVC
        svc_x = route[-2][0]
        start = [(MIDLINE + s * 0.07, -0.02), (MIDLINE + s * 0.055, clav_y - 0.04)]
        route = [(svc_x + (0.03 if side == LEFT else 0.0), clav_y + 0.03)] + route[-2:]
    elif kind == 1:  # subclavian
        start = [(MIDLINE + s * (a.tw - 0.02), clav_y - 0.025), (MIDLINE + s * 0.2, clav_y + 0.005)]
    else:  # PICC from the arm
        start = [(MIDLINE + s * 0.52, clav_y + 0.07), (MIDLINE + s * (a.tw + 0.03), clav_y), (MIDLINE + s * 0.2, clav_y + 0.01)]
    return start + route + [ra]


@draw_rule("catheters, indwelling")
def _rule_catheter(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("abdomen"):
        _tube_ng(scene, rng)
        return
    for side in pick_sides(tag, rng, "right"):
        pts = catmull_rom(_catheter_path(scene, side, rng), 16)
        scene.stroke(pts, 0.75, LINE, target="density")
        if rng.uniform() < 0.3:  # dual-lumen / second line alongside
            scene.stroke(pts + np.array([0.006, 0.0]), 0.5, FINE, target="density")


def _pacemaker(scene: Scene, side: str, rng: np.random.Generator) -> None:
    """Generator pocket below the clavicle, leads through the veins to the right atrium/ventricle."""
    a = scene.a
    s = SIGN[side]
    clav_y = a.y_top + a.clav_dy
    gx, gy = MIDLINE + s * rng.uniform(0.2, 0.26), clav_y + rng.uniform(0.035, 0.06)
    ang = rng.uniform(-0.3, 0.3)
    sl, val = scene.ellipse(gx, gy, 0.045, 0.032, angle=ang, profile="flat", wobble=[(4, -0.06, 0.0)])
    scene.density[sl] += 1.8 * val
    sl, val = scene.ellipse(gx + s * 0.018, gy - 0.028, 0.02, 0.012, angle=ang, profile="flat")
    scene.density[sl] += 0.6 * val
    cx, cy, rr, rl, ry = scene.heart_geometry()
    route, ra = _venous_route(scene, side)
    start = [(gx - s * 0.04, gy + 0.005), (gx - s * 0.07, gy - 0.01)]
    leads = [
        start + route + [ra, (cx - rr * 0.35, cy - ry * 0.3), (cx - rr * 0.15, cy - ry * 0.5)],
        start + route + [ra, (cx - rr * 0.2, cy - ry * 0.05), (cx + rl * 0.5, cy + 0.01)],
    ]
    for k, lead in enumerate(leads[: 1 + int(rng.uniform() < 0.75)]):
        scene.stroke(catmull_rom(lead, 16) + np.array([0.004 * k, 0.0]), 0.7, LINE, target="density")


@draw_rule("implanted medical device", "medical device", "pacemaker, artificial", "defibrillators, implantable")
def _rule_device(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    cx, cy, rr, rl, ry = scene.heart_geometry()
    if tag.has("aortic valve", "mitral valve", "heart atria"):
        px, py = (cx - 0.005, cy - ry * 0.5) if tag.has("aortic valve") else (cx + 0.03, cy - 0.02)
        sl, val = scene.ellipse(px, py, 0.022, 0.016, angle=0.6, profile="ring")
        scene.density[sl] += 0.9 * val
        return
    if tag.has("heart") and not tag.has("left", "right"):
        sl, val = scene.ellipse(cx + rl * 0.4, cy - ry * 0.4, 0.022, 0.008, angle=-0.6, profile="flat")
        scene.density[sl] += 1.2 * val
        return
    if tag.has("humerus", "shoulder"):
        side = pick_sides(tag, rng, "right")[0]
        hx, hy = scene.humeral_head[side]
        sl, val = scene.ellipse(hx, hy, 0.05, 0.05, profile="sphere")
        scene.density[sl] += 1.0 * val
        scene.stroke(np.array([(hx, hy), (hx + SIGN[side] * 0.03, hy + 0.2)]), 0.9, SOFT, target="density")
        return
    if tag.has("cervical vertebrae", "thoracic vertebrae", "spine"):
        _spinal_hardware(scene, tag, rng)
        return
    if tag.has("pulmonary artery"):  # pulmonary artery (Swan-Ganz) catheter: RA -> RV -> PA
        cx, cy, rr, rl, ry = scene.heart_geometry()
        route = _catheter_path(scene, pick_sides(tag, rng, "right")[0], rng)
        hx, hy = scene.hilum(LEFT if rng.uniform() < 0.5 else RIGHT)
        pts = route + [(cx + rl * 0.2, cy - ry * 0.05), (cx + rl * 0.25, cy - ry * 0.6), (hx, hy)]
        scene.stroke(catmull_rom(pts, 16), 0.75, LINE, target="density")
        return
    if tag.name == "medical device" and not tag.sides:
        _ecg_leads(scene, rng)
        return
    _pacemaker(scene, pick_sides(tag, rng, "left")[0], rng)


def _ecg_leads(scene: Scene, rng: np.random.Generator) -> None:
    a = scene.a
    pts = []
    for side in SIDES:
        s = SIGN[side]
        pts.append((MIDLINE + s * rng.uniform(0.2, 0.3), a.y_top + a.clav_dy + rng.uniform(0.0, 0.05)))
    pts.append((MIDLINE + rng.uniform(0.15, 0.28), a.y_cp[LEFT] - rng.uniform(0.0, 0.06)))
    for x, y in pts:
        sl, val = scene.ellipse(x, y, 0.014, 0.014, profile="ring")
        scene.density[sl] += 0.6 * val
        sl, val = scene.ellipse(x, y, 0.005, 0.005, profile="flat")
        scene.density[sl] += 0.9 * val
        wire = [(x, y), (x + rng.uniform(-0.08, 0.08), y + 0.08), (x + rng.uniform(-0.1, 0.1), 1.05)]
        scene.stroke(catmull_rom(wire, 12), 0.35, FINE, target="density")


def _sternotomy_wires(scene: Scene, rng: np.random.Generator) -> None:
    a = scene.a
    cx, cy, rr, rl, ry = scene.heart_geometry()
    y0, y1 = a.y_top + a.clav_dy + 0.03, cy + 0.02
    n = int(rng.integers(5, 8))
    x0 = MIDLINE + a.shift + rng.uniform(-0.01, 0.01)
    for y in np.linspace(y0, y1, n):
        sl, val = scene.ellipse(x0 + rng.uniform(-0.006, 0.006), y, 0.016, 0.007, angle=rng.uniform(-0.2, 0.2), profile="ring")
        scene.density[sl] += 0.9 * val
        scene.stroke(np.array([(x0 + 0.012, y), (x0 + 0.02, y - 0.012)]), 0.8, FINE, target="density")


@draw_rule("surgical instruments", "sutures", "stents", "foreign bodies", "contrast media", "tube, inserted", "spinal fusion", "breast implants")
def _rule_hardware(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    a = scene.a
    name = tag.name
    if name == "spinal fusion":
        _spinal_hardware(scene, tag, rng)
        return
    if name == "tube, inserted":
        if tag.has("trachea", "trachea, carina", "large"):
            _tube_et(scene, rng)
        elif tag.has("thorax", "left", "right") and not tag.has("abdomen"):
            _chest_tube(scene, pick_sides(tag, rng)[0], rng)
        else:
            _tube_ng(scene, rng)
        return
    if name == "breast implants":
        for side in SIDES:
            g = scene.lungs[side]
            x, y = g.point(0.76, 0.55)
            sl, val = scene.ellipse(x, y + 0.02, 0.1, 0.075, profile="sphere")
            scene.density[sl] += 0.22 * val
        return
    if name == "contrast media":
        g = scene.lungs[LEFT]
        x = g.x_medial + 0.4 * (g.x_wall - g.x_medial)
        sl, val = scene.ellipse(x, float(g.dome(x)) + 0.07, 0.05, 0.03, profile="sphere")
        scene.density[sl] += 0.8 * val
        return
    if name == "stents":
        cx, cy, rr, rl, ry = scene.heart_geometry()
        if tag.has("coronary vessels") or not tag.quals:
            x, y, phi, L = cx + rl * 0.1, cy - ry * 0.3, 1.0, 0.03
        elif tag.has("aorta", "abdomen"):
            x, y, phi, L = MIDLINE + 0.03, a.y_cp[LEFT] + 0.08, math.pi / 2, 0.08
        else:
            s = SIGN[pick_sides(tag, rng)[0]]
            x, y, phi, L = MIDLINE + s * 0.18, a.y_top + a.clav_dy + 0.01, 0.1, 0.05
        for off in (-0.004, 0.004):
            dx, dy = -math.sin(phi) * off, math.cos(phi) * off
            p = np.array([(x + dx - L * math.cos(phi) / 2, y + dy - L * math.sin(phi) / 2), (x + dx + L * math.cos(phi) / 2, y + dy + L * math.sin(phi) / 2)])
            scene.stroke(p, 0.9, FINE, target="density")
        return
    if name == "foreign bodies":
        side = pick_sides(tag, rng)[0]
        x, y = scene.zone_point(side, tag.zone, rng, jitter=2.0)
        if tag.has("breast"):
            y = a.y_cp[side] - 0.08
        for _ in range(int(rng.integers(1, 4))):
            sl, val = scene.ellipse(x + rng.uniform(-0.01, 0.01), y + rng.uniform(-0.01, 0.01), rng.uniform(0.006, 0.012), rng.uniform(0.004, 0.01), angle=rng.uniform(0, 3), profile="flat")
            scene.density[sl] += 1.5 * val
        return
    # surgical instruments / sutures
    if tag.has("mediastinum", "sternum", "heart") or (name == "surgical instruments" and not tag.quals):
        _sternotomy_wires(scene, rng)
        return
    if tag.has("abdomen"):
        side = pick_sides(tag, rng, "right")[0]
        g = scene.lungs[side]
        draw_clips(scene, g.x_medial + 0.35 * (g.x_wall - g.x_medial), g.y_cp + 0.07, rng, int(rng.integers(3, 6)))
        return
    if tag.has("neck", "cervical vertebrae"):
        draw_clips(scene, MIDLINE + rng.uniform(-0.05, 0.05), 0.04, rng, 4)
        return
    side = pick_sides(tag, rng)[0]
    zone = tag.zone or ("upper" if name == "sutures" else "hilum")
    x, y = scene.zone_point(side, zone, rng)
    if name == "sutures":  # staple line
        phi = rng.uniform(-0.5, 0.5)
        for k in range(-4, 5):
            px, py = x + k * 0.012 * math.cos(phi), y + k * 0.012 * math.sin(phi)
            scene.stroke(np.array([(px, py - 0.006), (px, py + 0.006)]), 1.0, FINE, target="density")
    else:
        draw_clips(scene, x, y, rng, int(rng.integers(3, 6)), 0.035)


def _tube_et(scene: Scene, rng: np.random.Generator) -> None:
    tx, ty = scene.carina
    tip = ty - rng.uniform(0.03, 0.06)
    for off in (-0.007, 0.007):
        scene.stroke(np.array([(tx + off, -0.02), (tx + off, tip)]), 0.45, FINE, target="density")
    scene.stroke(np.array([(tx - 0.003, -0.02), (tx - 0.003, tip)]), 0.5, FINE, target="density")


def _tube_ng(scene: Scene, rng: np.random.Generator) -> None:
    a = scene.a
    g = scene.lungs[LEFT]
    sx = MIDLINE + a.shift
    bx = g.x_medial + 0.45 * (g.x_wall - g.x_medial)
    by = float(g.dome(bx)) + 0.06
    pts = [(sx + 0.005, -0.02), (sx + 0.01, a.y_top + 0.2), (sx + 0.02, a.y_cp[LEFT] - 0.05), (bx - 0.03, by), (bx + 0.02, by + 0.02)]
    scene.stroke(catmull_rom(pts, 16), 0.6, LINE, target="density")


def _chest_tube(scene: Scene, side: str, rng: np.random.Generator) -> None:
    g = scene.lungs[side]
    s = g.s
    pts = [(g.x_wall + s * 0.1, g.y_cp - 0.1), (g.x_wall - s * 0.01, g.y_cp - 0.15), (g.x_apex + s * 0.02, g.y_top + 0.07)]
    curve = catmull_rom(pts, 20)
    for off in (-0.006, 0.006):
        scene.stroke(curve + np.array([off, 0.0]), 0.45, FINE, target="density")


def _spinal_hardware(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("cervical vertebrae"):
        y0, y1 = -0.02, scene.a.y_top - 0.02
    elif tag.has("lumbar vertebrae"):
        y0, y1 = 0.78, 1.02
    else:
        y0, y1 = 0.35, 0.7
    ys = np.linspace(y0, y1, 16)
    sx = scene.spine_x(ys)
    if tag.has("anterior") or tag.has("cervical vertebrae"):
        pts = np.stack([sx, ys], 1)
        for off in (-0.012, 0.0, 0.012):
            scene.stroke(pts + np.array([off, 0.0]), 0.8, SOFT, target="density")
    else:
        for off in (-0.022, 0.022):
            scene.stroke(np.stack([sx + off, ys], 1), 1.0, LINE, target="density")
    for y in np.linspace(y0 + 0.01, y1 - 0.01, 4):
        x = float(scene.spine_x(y))
        scene.stroke(np.array([(x - 0.024, y), (x + 0.024, y)]), 0.8, LINE, target="density")
