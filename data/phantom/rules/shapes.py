"""Finding shapes drawn by more than one organ system's rules (rule modules import these, never each other)."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from data.phantom.constants import LINE, MIDLINE, RIB, SIGN
from data.phantom.curves import smooth
from data.phantom.scene import Scene
from data.phantom.tags import Tag, pick_sides


def draw_effusion(scene: Scene, side: str, frac: float, rng: np.random.Generator) -> None:
    """Homogeneous basal fluid with a meniscus (higher laterally) that blunts the CP angle."""
    g = scene.lungs[side]
    h = g.height
    level = g.y_cp - frac * h
    men = (0.09 + 0.12 * min(frac, 0.5)) * h
    sl, X, Y = scene.box(0.5 * (g.x_medial + g.x_wall), g.y_cp - 0.5 * frac * h, 0.5 * abs(g.x_wall - g.x_medial) + 0.03, 0.5 * frac * h + men + 0.03)
    r = np.clip((X - g.x_medial) / (g.x_wall - g.x_medial), 0.0, 1.0)
    surface = level + men * (1.0 - r) ** 1.6
    f = smooth((Y - surface) / (0.035 * h + 0.02 * frac * h))
    scene.add_fill(sl, f)
    scene.density[sl] += 0.05 * f * scene.lung_m[side][sl]


def draw_patch(
    scene: Scene, side: str, zone: str | None, rng: np.random.Generator, strength: float, radius: float, at: tuple[float, float] | None = None
) -> None:
    """Patchy airspace opacity: a cluster of soft blobs textured by the study's cloud field."""
    cx, cy = at if at is not None else scene.zone_point(side, zone, rng)
    sl, X, Y = scene.box(cx, cy, radius * 2.0, radius * 2.0)
    acc = np.zeros((Y.shape[0], X.shape[1]))
    for _ in range(int(rng.integers(3, 7))):
        bx = cx + rng.uniform(-0.6, 0.6) * radius
        by = cy + rng.uniform(-0.45, 0.45) * radius
        sx = radius * rng.uniform(0.35, 0.6)
        sy = radius * rng.uniform(0.3, 0.5)
        acc = np.maximum(acc, np.exp(-0.5 * (((X - bx) / sx) ** 2 + ((Y - by) / sy) ** 2)))
    tex = np.clip(0.65 + 0.35 * scene.cloud[sl] + 0.15 * scene.cloud_fine[sl], 0.0, 1.2)
    f = strength * np.clip(1.3 * acc, 0, 1) * tex
    scene.add_fill(sl, f)
    if zone == "retrocardiac":  # behind the heart only added density shows
        scene.density[sl] += 0.2 * f


def draw_reticular(scene: Scene, sides: Iterable[str], zone: str | None, strength: float) -> None:
    """Interstitial (reticular) pattern: a net of fine lines, weighted to the named zone."""
    net = np.exp(-(((0.35 * scene.cloud_fine + scene.cloud) / 0.3) ** 2))
    for side in sides:
        g = scene.lungs[side]
        if zone in ("lower", "middle", "retrocardiac"):
            w = smooth((scene.Y - (g.y_top + 0.45 * g.height)) / (0.3 * g.height))
        elif zone in ("upper", "apex"):
            w = smooth(((g.y_top + 0.55 * g.height) - scene.Y) / (0.3 * g.height))
        else:
            w = np.ones_like(scene.Y)
        scene.add_fill(slice(None), strength * net * w * scene.lung_m[side])


def draw_streaks(scene: Scene, side: str, zone: str | None, rng: np.random.Generator, n: int, strength: float, length: float = 0.09) -> None:
    """Irregular linear opacities (scarring, streaky atelectasis)."""
    for _ in range(n):
        cx, cy = scene.zone_point(side, zone, rng)
        phi = rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.uniform() < 0.25 else 0.0)
        m = 10
        steps = np.cumsum(rng.normal(0.0, 0.15, m)) + phi
        L = length * rng.uniform(0.6, 1.2)
        px = cx + np.cumsum(np.cos(steps)) * L / m - 0.5 * L * math.cos(phi)
        py = cy + np.cumsum(np.sin(steps)) * L / m - 0.5 * L * math.sin(phi)
        scene.stroke(np.stack([px, py], 1), strength, RIB, target="fill")


def draw_nodule(scene: Scene, x: float, y: float, r: float, fill: float, dens: float) -> None:
    sl, val = scene.ellipse(x, y, r, r * 0.95, profile="sphere")
    scene.add_fill(sl, fill * val)
    scene.density[sl] += dens * val


def draw_granulomas(scene: Scene, sides: Sequence[str], zone: str | None, rng: np.random.Generator, n: int, big: bool = False) -> None:
    for i in range(n):
        side = sides[i % len(sides)]
        x, y = scene.zone_point(side, zone, rng, jitter=1.6 if zone is None else 1.0)
        r = rng.uniform(0.011, 0.015) * (1.4 if big else 1.0)
        draw_nodule(scene, x, y, r, 0.9, 0.9)


def draw_cavity(scene: Scene, side: str, zone: str | None, rng: np.random.Generator, r: float) -> None:
    x, y = scene.zone_point(side, zone, rng)
    sl, val = scene.ellipse(x, y, r * 1.5, r * 1.4, profile="sphere")
    scene.add_fill(sl, np.clip(val * 2.0, 0, 1))
    sl, val = scene.ellipse(x, y - r * 0.1, r, r * 0.9, profile="flat")
    scene.lucent[sl] += 0.3 * val


def draw_aortic_calcification(scene: Scene, rng: np.random.Generator) -> None:
    """Curvilinear calcification along the aortic knob's rim, plaques down the descending aorta."""
    kx, ky, kr = scene.knob
    th = np.linspace(-2.6, 0.6, 24) + rng.uniform(-0.2, 0.2)
    for shrink, amp in ((0.85, 0.8), (0.7, 0.4)):
        pts = np.stack([kx + kr * shrink * np.cos(th), ky + kr * 1.1 * shrink * np.sin(th)], 1)
        scene.stroke(pts, amp, LINE, target="density")
    a = scene.a
    for _ in range(int(rng.integers(2, 4))):
        y = ky + rng.uniform(0.05, 0.2)
        x = MIDLINE + a.shift + a.med_w + 0.012
        scene.stroke(np.array([(x, y), (x + 0.002, y + 0.015)]), 0.6, LINE, target="density")


def draw_mediastinal_mass(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    tx, ty = scene.carina
    side = pick_sides(tag, rng, "right")[0]
    x = tx + SIGN[side] * (scene.a.med_w + 0.015)
    sl, val = scene.ellipse(x, ty - 0.05, 0.04, 0.055, profile="flat")
    scene.add_occlude(sl, val)


def draw_bone_lesion(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    side = pick_sides(tag, rng)[0]
    xs, ys, hh = scene.ribs[side][int(rng.integers(3, 8))]
    j = int(rng.integers(15, 35))
    sl, val = scene.ellipse(xs[j], ys[j], 0.02, 0.014, profile="sphere")
    scene.bones[sl] += 0.3 * val


def draw_clips(scene: Scene, x: float, y: float, rng: np.random.Generator, n: int, spread: float = 0.03) -> None:
    for _ in range(n):
        px, py = x + rng.uniform(-spread, spread), y + rng.uniform(-spread, spread)
        phi = rng.uniform(0, math.pi)
        L = 0.016
        p = np.array([(px - L * math.cos(phi), py - L * math.sin(phi)), (px + L * math.cos(phi), py + L * math.sin(phi))])
        scene.stroke(p, 1.2, LINE, target="density")


def draw_vertebra_levels(scene: Scene, y0: float, y1: float) -> np.ndarray:
    a = scene.a
    start = a.y_top - 0.02
    k0 = math.ceil((y0 - start) / a.vert_period)
    k1 = math.floor((y1 - start) / a.vert_period)
    return start + np.arange(k0, k1 + 1) * a.vert_period


def draw_compressed_vertebra(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    lo, hi = (0.72, 0.95) if tag.has("lumbar vertebrae") or tag.name == "lumbar vertebrae" else (0.4, 0.7)
    levels = draw_vertebra_levels(scene, lo, hi)
    for y in rng.choice(levels, size=min(len(levels), 2 if tag.has("multiple") else 1), replace=False):
        x = float(scene.spine_x(y + 0.5 * scene.a.vert_period))
        scene.band(x, y + 0.5 * scene.a.vert_period, 2 * scene.spine_hw + 0.012, 0.009, 0.0, 0.5, target="density")
