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
from __future__ import annotations

import hashlib
import io
import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from data.records import Study

PHANTOM_VERSION = 1
DEFAULT_SIZE = 256

RIGHT, LEFT = "R", "L"
SIDES = (RIGHT, LEFT)
SIGN = {RIGHT: -1.0, LEFT: 1.0}  # image-x direction of the patient's side (PA view)
OTHER = {RIGHT: LEFT, LEFT: RIGHT}
MIDLINE = 0.5
AIR = 0.66  # density removed by fully aerated lung
REF_DENSITY = 2.0  # density mapped to white before windowing
DENSIFY = 6  # sub-steps per vessel growth step

# Blur widths of the stroke layers, in pixels at 256 px (scaled with the output size).
FINE, LINE, VESSEL, RIB, SOFT = 0.65, 0.9, 1.15, 2.0, 2.6


# ----------------------------------------------------------------------------- randomness


def stream_rng(seed: int, study_id: str, *stream: object) -> np.random.Generator:
    """An independent, platform-independent generator for one (seed, study, stream) triple."""
    key = "\x1f".join([str(int(seed)), str(study_id), *(str(s) for s in stream)])
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


# ----------------------------------------------------------------------------- tags


_SEVERITY = {"borderline": 0.45, "mild": 0.75, "small": 0.75, "moderate": 1.25, "large": 1.6, "severe": 1.6}


@dataclass(frozen=True)
class Tag:
    """One MeSH major term split into its heading and qualifiers ("Pleural Effusion/left/small")."""

    text: str
    name: str
    quals: frozenset[str]

    def has(self, *words: str) -> bool:
        return any(w in self.quals for w in words)

    @property
    def severity(self) -> float:
        """1.0 when unqualified; below for borderline/mild/small, above for moderate/large/severe."""
        found = [_SEVERITY[q] for q in self.quals if q in _SEVERITY]
        return max(found) if found else 1.0

    @property
    def sides(self) -> tuple[str, ...]:
        """Patient sides named by the tag; () when unspecified. Lingula/retrocardiac imply left."""
        if self.has("bilateral") or (self.has("right") and self.has("left")):
            return SIDES
        if self.has("right") or (self.has("middle lobe") and not self.has("left")):
            return (RIGHT,)
        if self.has("left", "lingula", "retrocardiac"):
            return (LEFT,)
        return ()

    @property
    def zone(self) -> str | None:
        """Lung zone named by the tag, or None."""
        if self.has("retrocardiac"):
            return "retrocardiac"
        if self.has("apex"):
            return "apex"
        if self.has("upper lobe"):
            return "upper"
        if self.has("middle lobe", "lingula"):
            return "middle"
        if self.has("lower lobe", "base", "costophrenic angle", "sulcus"):
            return "lower"
        if self.has("hilum"):
            return "hilum"
        return None


def parse_tag(text: str) -> Tag:
    parts = [p.strip().lower() for p in str(text).split("/") if p.strip()]
    if not parts:
        return Tag(text=text, name="", quals=frozenset())
    return Tag(text=text, name=parts[0], quals=frozenset(parts[1:]))


def _pick_sides(tag: Tag, rng: np.random.Generator, default: str = "random") -> tuple[str, ...]:
    """Sides named by the tag, else ``default``: "random" (one side), "both", "right" or "left"."""
    sides = tag.sides
    if sides:
        return sides
    if default == "both":
        return SIDES
    if default in ("right", "left"):
        return (RIGHT if default == "right" else LEFT,)
    return (SIDES[int(rng.integers(2))],)


# ----------------------------------------------------------------------------- anatomy


@dataclass
class Anatomy:
    """Per-study body habitus, organ geometry and exposure; findings may edit it before drawing."""

    tw: float  # half inner thoracic width (lateral rib margin to midline)
    body_margin: float  # soft tissue lateral to the ribs (body size)
    y_top: float  # lung apex level
    y_cp: dict[str, float]  # costophrenic-angle level per side
    dome_h: dict[str, float]  # diaphragm dome height per side
    apex_off: float
    med_w: float  # upper mediastinum half width
    ctr: float  # cardiothoracic ratio
    heart_ry: float
    heart_dx: float
    heart_right_frac: float
    heart_round: float
    knob_r: float
    knob_dy: float
    aorta_bulge: float
    hilum_scale: float
    pa_bulge: float
    scoliosis: list[tuple[float, float, float]]  # (amplitude, y0, y1) sine bows of the spine
    shift: float  # mediastinal shift along image x
    lucency: dict[str, float]  # multiplier of lung air per side (emphysema > 1)
    vessel_gain: float
    upper_vessel_gain: float
    peripheral_vessel_gain: float
    breast: float
    breast_sides: tuple[str, ...]
    bubble: float
    bowel: list[tuple[float, float, float, float]]  # (x offset, depth below dome, radius, gas)
    rib_drop: float
    rib_rise: float
    rib_phase: float
    clav_dy: float
    vert_period: float
    bone: float
    # exposure and positioning
    k: float
    lo: float
    hi: float
    gamma: float
    noise: float
    blur: float
    rot: float
    dx: float
    dy: float
    zoom: float
    grad: tuple[float, float]

    @property
    def lung_height(self) -> float:
        return 0.5 * (self.y_cp[RIGHT] + self.y_cp[LEFT]) - self.y_top


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a normal adult PA chest. Every draw is unconditional so the stream never shifts."""
    u = rng.uniform
    y_cp = u(0.70, 0.78)
    right_higher = u(0.008, 0.03)
    dome = u(0.055, 0.09)
    asym = u(0.9, 1.1)
    breast_p, breast_amp = u(), u(0.06, 0.13)
    bubble_p, bubble_amp = u(), u(0.15, 0.35)
    return Anatomy(
        tw=u(0.335, 0.395),
        body_margin=u(0.035, 0.11),
        y_top=u(0.085, 0.13),
        y_cp={RIGHT: y_cp - right_higher, LEFT: y_cp},
        dome_h={RIGHT: dome * asym, LEFT: dome / asym},
        apex_off=u(0.12, 0.15),
        med_w=u(0.045, 0.058),
        ctr=u(0.41, 0.49),
        heart_ry=u(0.17, 0.21),
        heart_dx=u(0.0, 0.03),
        heart_right_frac=u(0.31, 0.38),
        heart_round=0.0,
        knob_r=u(0.02, 0.027),
        knob_dy=u(0.12, 0.16),
        aorta_bulge=0.0,
        hilum_scale=u(0.9, 1.1),
        pa_bulge=0.0,
        scoliosis=[(u(-0.006, 0.006), 0.1, 0.9)],
        shift=u(-0.008, 0.008),
        lucency={RIGHT: 1.0, LEFT: 1.0},
        vessel_gain=u(0.85, 1.15),
        upper_vessel_gain=1.0,
        peripheral_vessel_gain=1.0,
        breast=breast_amp if breast_p < 0.4 else 0.0,
        breast_sides=SIDES,
        bubble=bubble_amp if bubble_p < 0.75 else 0.0,
        bowel=[(u(-0.25, 0.32), u(0.1, 0.3), u(0.015, 0.03), u(0.0, 0.16)) for _ in range(4)],
        rib_drop=u(0.09, 0.13),
        rib_rise=u(0.25, 0.4),
        rib_phase=u(-0.01, 0.01),
        clav_dy=u(0.05, 0.085),
        vert_period=u(0.036, 0.042),
        bone=u(0.85, 1.15),
        k=u(1.0, 1.5),
        lo=u(-0.02, 0.06),
        hi=u(0.98, 1.12),
        gamma=u(0.8, 1.25),
        noise=u(0.008, 0.024),
        blur=u(0.45, 0.95),
        rot=u(-4.0, 4.0),
        dx=u(-0.03, 0.03),
        dy=u(-0.03, 0.03),
        zoom=u(0.93, 1.06),
        grad=(u(-0.05, 0.05), u(-0.04, 0.06)),
    )


@dataclass(frozen=True)
class LungGeom:
    """Outline of one lung: lateral and medial borders meeting at a rounded apex, a diaphragm dome."""

    side: str
    x_apex: float
    x_wall: float
    x_medial: float
    y_top: float
    y_cp: float
    dome_h: float

    @property
    def s(self) -> float:
        return SIGN[self.side]

    @property
    def height(self) -> float:
        return self.y_cp - self.y_top

    def xlat(self, y):
        v = np.clip((np.asarray(y, dtype=np.float64) - self.y_top) / (0.62 * self.height), 0.0, 1.0)
        return self.x_apex + (self.x_wall - self.x_apex) * np.sqrt(1.0 - (1.0 - v) ** 2)

    def xmed(self, y):
        v = np.clip((np.asarray(y, dtype=np.float64) - self.y_top) / (0.3 * self.height), 0.0, 1.0)
        return self.x_apex + (self.x_medial - self.x_apex) * np.sqrt(1.0 - (1.0 - v) ** 2)

    def dome(self, x):
        """Diaphragm level under image column x: peak 40% out from the medial edge, lowest laterally."""
        r = (np.asarray(x, dtype=np.float64) - self.x_medial) / (self.x_wall - self.x_medial)
        q = np.where(r > 0.4, (r - 0.4) / 0.6, (r - 0.4) / 0.4)
        q = np.clip(q, -1.0, 1.0)
        return self.y_cp - self.dome_h * (1.0 - np.where(q > 0, q * q, 0.75 * q * q))

    def point(self, t: float, r: float) -> tuple[float, float]:
        """Image point at height fraction t (0 apex, 1 costophrenic angle) and medial->lateral r."""
        y = self.y_top + t * self.height
        xm, xl = float(self.xmed(y)), float(self.xlat(y))
        x = xm + r * (xl - xm)
        y = min(y, float(self.dome(x)) - 0.025)
        return x, y


# ----------------------------------------------------------------------------- small helpers


def _ramp(v):
    """Linear soft edge: 0 below -1, 1 above 1."""
    return np.minimum(np.maximum(0.5 + 0.5 * v, 0.0), 1.0)


def _smooth(v):
    """Smoothstep on [0, 1]."""
    v = np.minimum(np.maximum(v, 0.0), 1.0)
    return v * v * (3.0 - 2.0 * v)


def _catmull_rom(points: Sequence[tuple[float, float]], per_segment: int = 24) -> np.ndarray:
    """A smooth curve through control points (for catheters, leads, clavicles)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        t = np.linspace(0.0, 1.0, per_segment)[:, None]
        return p[0] + t * (p[-1] - p[0])
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    out.append(p[-2][None, :])
    return np.vstack(out)


def _resample(pts: np.ndarray, spacing: float, with_param: bool = False):
    """Points along a polyline at (at most) ``spacing`` apart."""
    pts = np.asarray(pts, dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    m = max(2, int(cum[-1] / spacing) + 2)
    t = np.linspace(0.0, cum[-1], m)
    px, py = np.interp(t, cum, pts[:, 0]), np.interp(t, cum, pts[:, 1])
    return (px, py, t, cum) if with_param else (px, py)


def _upsample(f: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize of a square array to n x n by index gathering (no BLAS, exact order)."""
    m = f.shape[0]
    pos = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0.0, m - 1.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), m - 2)
    w = (pos - i0)
    rows = f[i0] * (1.0 - w)[:, None] + f[i0 + 1] * w[:, None]
    return rows[:, i0] * (1.0 - w)[None, :] + rows[:, i0 + 1] * w[None, :]


# ----------------------------------------------------------------------------- the scene


class Scene:
    """Density layers of one phantom on an N x N grid in normalised patient coordinates."""

    def __init__(self, anat: Anatomy, size: int, noise_rng: np.random.Generator, vessel_rng: np.random.Generator):
        self.a = anat
        self.N = n = int(size)
        self.scale = n / 256.0
        self.x = (np.arange(n, dtype=np.float64) + 0.5) / n
        self.y = (np.arange(n, dtype=np.float64) + 0.5) / n
        self.X = self.x[None, :]
        self.Y = self.y[:, None]
        self.e = 1.3 / n  # soft edge half-width
        z = lambda: np.zeros((n, n), dtype=np.float64)  # noqa: E731
        self.body = z()
        self.density = z()  # added attenuation: bones, devices, nodules, fluid
        self.bones = z()
        self.fill = z()  # fraction of lung air replaced (fluid, consolidation, collapse)
        self.occlude = z()  # lung hidden by mediastinal structures (heart, aortic knob)
        self.lucent = z()  # extra air (pneumothorax, bullae, bowel gas)
        self.vessel_mask = np.ones((n, n), dtype=np.float64)
        self.layers: dict[tuple[str, float], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.vessel_rng = vessel_rng
        # Study-wide noise fields, drawn first and in a fixed order so they never depend on tags.
        self.quantum = noise_rng.standard_normal((n, n))
        self.cloud_fine = self._field(noise_rng, 1.2, factor=2)
        self.cloud = self._field(noise_rng, 4.0, factor=4)
        self.texture = 0.007 * self.cloud_fine + 0.015 * self.cloud  # parenchymal mottle
        self.lungs: dict[str, LungGeom] = {}
        self.sdf: dict[str, np.ndarray] = {}
        self.lung_m: dict[str, np.ndarray] = {}
        self.ribs: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
        self.clavicle: dict[str, np.ndarray] = {}
        self.humeral_head: dict[str, tuple[float, float]] = {}

    # --- primitives -----------------------------------------------------------------------

    def _field(self, rng: np.random.Generator, sigma256: float, factor: int) -> np.ndarray:
        """Smooth unit-variance noise, drawn at 1/factor resolution and upsampled (fast)."""
        n = self.N
        m = -(-n // factor)
        f = ndimage.gaussian_filter(rng.standard_normal((m, m)), sigma256 * self.scale / factor, mode="wrap")
        if factor > 1:
            f = _upsample(f, n)
        return (f - f.mean()) / (f.std() + 1e-12)

    def box(self, cx: float, cy: float, rx: float, ry: float | None = None):
        """Row/column slices covering a rectangle, with the matching coordinate vectors."""
        ry = rx if ry is None else ry
        n = self.N
        i0, i1 = max(0, int((cy - ry) * n) - 1), min(n, int((cy + ry) * n) + 2)
        j0, j1 = max(0, int((cx - rx) * n) - 1), min(n, int((cx + rx) * n) + 2)
        i1, j1 = max(i0, i1), max(j0, j1)
        return (slice(i0, i1), slice(j0, j1)), self.x[j0:j1][None, :], self.y[i0:i1][:, None]

    def add_fill(self, sl, f) -> None:
        self.fill[sl] = 1.0 - (1.0 - self.fill[sl]) * (1.0 - np.clip(f, 0.0, 1.0))

    def add_occlude(self, sl, f) -> None:
        self.occlude[sl] = 1.0 - (1.0 - self.occlude[sl]) * (1.0 - np.clip(f, 0.0, 1.0))

    def ellipse(self, cx, cy, rx, ry, angle=0.0, profile="sphere", wobble=None):
        """(slices, values) of a soft ellipse: "sphere" (thickness), "flat" (uniform) or "ring"."""
        r = max(rx, ry) * 1.35 + 2.0 / self.N
        sl, X, Y = self.box(cx, cy, r, r)
        c, s = math.cos(angle), math.sin(angle)
        u = ((X - cx) * c + (Y - cy) * s) / rx
        v = (-(X - cx) * s + (Y - cy) * c) / ry
        rho = np.sqrt(u * u + v * v)
        if wobble is not None:
            theta = np.arctan2(v, u)
            rho = rho / (1.0 + sum(a * np.cos(k * theta + ph) for k, a, ph in wobble))
        edge = self.e / min(rx, ry)
        if profile == "sphere":
            val = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
            val = np.maximum(val, _ramp((1.0 - rho) / edge) * 0.25 * (rho < 1.0 + edge))
        elif profile == "ring":
            w = max(1.2 / self.N / min(rx, ry), 0.18)
            val = np.exp(-(((rho - 1.0) / w) ** 2))
        else:
            val = _ramp((1.0 - rho) / edge)
        return sl, val

    def add_density(self, sl, val, amp: float) -> None:
        self.density[sl] += amp * val

    def splat(self, target: str, sigma256: float, px, py, w) -> None:
        """Queue point masses for a layer; they are splatted bilinearly and blurred at composition."""
        self.layers.setdefault((target, sigma256), []).append(
            (np.ravel(np.asarray(px, dtype=np.float64)), np.ravel(np.asarray(py, dtype=np.float64)), np.ravel(np.asarray(w, dtype=np.float64)))
        )

    def curves(self, target: str, sigma256: float, px: np.ndarray, py: np.ndarray, amp) -> None:
        """Densely sampled curves (rows of px/py, spacing below a pixel) with peak brightness ``amp``."""
        seg = np.hypot(np.diff(px, axis=-1), np.diff(py, axis=-1)) * self.N
        ds = np.zeros_like(px)
        ds[..., :-1] += 0.5 * seg
        ds[..., 1:] += 0.5 * seg
        amp = np.broadcast_to(np.asarray(amp, dtype=np.float64), px.shape)
        self.splat(target, sigma256, px, py, amp * ds * math.sqrt(2 * math.pi) * sigma256 * self.scale)

    def stroke(self, pts, amp, sigma256: float = LINE, target: str = "density") -> None:
        """A polyline of peak ``amp`` blurred to width ``sigma256``.

        ``amp``: a scalar, one value per point, or values spread evenly along the curve."""
        pts = np.asarray(pts, dtype=np.float64)
        if len(pts) < 2:
            return
        px, py, t, cum = _resample(pts, 0.4 / self.N, with_param=True)
        amp = np.asarray(amp, dtype=np.float64)
        if amp.ndim == 0:
            a = np.full_like(t, float(amp))
        elif amp.size == len(pts):
            a = np.interp(t, cum, amp)
        else:  # amplitudes evenly spaced along the curve
            a = np.interp(t, np.linspace(0.0, cum[-1], amp.size), amp)
        self.curves(target, sigma256, px, py, a)

    def band(self, cx, cy, length, thick, angle, amp, target="fill"):
        """A soft rotated bar (plate atelectasis, scars, pleural lines)."""
        r = 0.5 * length + 3 * thick
        sl, X, Y = self.box(cx, cy, r, r)
        c, s = math.cos(angle), math.sin(angle)
        u = (X - cx) * c + (Y - cy) * s
        v = -(X - cx) * s + (Y - cy) * c
        val = _smooth((0.5 * length - np.abs(u)) / (0.25 * length)) * np.exp(-((v / thick) ** 2))
        if target == "fill":
            self.add_fill(sl, amp * val)
        elif target == "lucent":
            self.lucent[sl] += amp * val
        else:
            self.density[sl] += amp * val

    # --- geometry -------------------------------------------------------------------------

    def spine_x(self, y):
        y = np.asarray(y, dtype=np.float64)
        off = np.zeros_like(y)
        for amp, y0, y1 in self.a.scoliosis:
            v = np.clip((y - y0) / (y1 - y0), 0.0, 1.0)
            off = off + amp * np.sin(np.pi * v)
        return MIDLINE + off

    def lung_sdf(self, g: LungGeom) -> np.ndarray:
        """Approximate signed distance to the lung outline (positive inside)."""
        xl = g.xlat(self.y)[:, None]
        xm = g.xmed(self.y)[:, None]
        d = np.minimum((self.X - xm) * g.s, (xl - self.X) * g.s)
        d = np.minimum(d, g.dome(self.x)[None, :] - self.Y)
        return np.minimum(d, self.Y - g.y_top)

    def heart_geometry(self) -> tuple[float, float, float, float, float]:
        """(cx, cy, rx_right, rx_left, ry): the silhouette spans cx-rx_right..cx+rx_left at row cy."""
        a = self.a
        width = a.ctr * 2.0 * a.tw
        rr = width * a.heart_right_frac
        rl = width - rr
        cx = MIDLINE + a.shift + a.heart_dx
        cy = a.y_cp[LEFT] - a.dome_h[LEFT] - 0.02
        return cx, cy, rr, rl, a.heart_ry

    def hilum(self, side: str) -> tuple[float, float]:
        a = self.a
        g = self.lungs[side]
        return MIDLINE + a.shift + g.s * (a.med_w + 0.04), a.y_top + 0.36 * a.lung_height

    def zone_point(self, side: str, zone: str | None, rng: np.random.Generator, jitter: float = 1.0) -> tuple[float, float]:
        """A point in the named lung zone of a side (random within the zone)."""
        g = self.lungs[side]
        t, r = {
            "apex": (0.07, 0.5),
            "upper": (0.24, 0.55),
            "hilum": (0.4, 0.18),
            "middle": (0.64, 0.4),
            "lower": (0.8, 0.55),
            "retrocardiac": (0.8, 0.12),
            None: (0.55, 0.55),
        }[zone]
        t += jitter * rng.uniform(-0.05, 0.05)
        r += jitter * rng.uniform(-0.12, 0.12)
        if zone is None:
            t += jitter * rng.uniform(-0.15, 0.15)
        return g.point(float(np.clip(t, 0.03, 0.95)), float(np.clip(r, 0.0, 0.95)))

    # --- normal anatomy -------------------------------------------------------------------

    def draw_anatomy(self) -> None:
        a = self.a
        self._draw_body()
        for side in SIDES:
            s = SIGN[side]
            g = LungGeom(
                side=side,
                x_apex=MIDLINE + a.shift * 0.5 + s * a.apex_off,
                x_wall=MIDLINE + s * a.tw,
                x_medial=MIDLINE + a.shift + s * a.med_w,
                y_top=a.y_top,
                y_cp=a.y_cp[side],
                dome_h=a.dome_h[side],
            )
            self.lungs[side] = g
            self.sdf[side] = self.lung_sdf(g)
            self.lung_m[side] = _ramp(self.sdf[side] / self.e)
        self._draw_heart_and_mediastinum()
        self._draw_airways()
        self._draw_spine()
        self._draw_ribs()
        self._draw_shoulders()
        self._draw_breasts()
        self._draw_abdomen()
        for side in SIDES:
            self._draw_vessels(side)

    def _draw_body(self) -> None:
        a = self.a
        y = self.y
        bw_chest = a.tw + 0.025 + a.body_margin
        bw_sh = bw_chest + 0.06
        neck = 0.075 + 0.3 * a.body_margin
        y_neck = a.y_top - 0.16
        bw = neck + (bw_sh - neck) * _smooth((y - y_neck) / 0.13) - (bw_sh - bw_chest) * _smooth((y - a.y_top - 0.02) / 0.2)
        bw = bw - 0.03 * _smooth((y - 0.82) / 0.18)
        r = np.abs(self.X - MIDLINE) / bw[:, None]
        thick = np.sqrt(np.sqrt(np.maximum(1.0 - r * r, 0.0)))  # elliptic cross-section, flattened
        edge = _ramp((1.0 - r) * (bw / self.e)[:, None])
        level = 0.8 + 0.2 * _smooth((y - y_neck) / 0.12)
        self.body = thick * edge * level[:, None]

    def heart_borders(self, y):
        """Image x of the right (image-left) and left (image-right) heart borders at rows y.

        The silhouette hangs from the mediastinum: the left border sweeps slowly out past the
        pulmonary trunk to the apex, the right (atrial) border bulges sooner; both are widest at
        row cy, where the width is exactly ``ctr * thoracic width``, then curve in under the dome.
        """
        a = self.a
        cx, cy, rr, rl, ry = self.heart_geometry()
        y = np.asarray(y, dtype=np.float64)
        mid = MIDLINE + a.shift
        v = np.clip((y - (cy - ry)) / ry, 0.0, 1.0)
        below = np.clip((y - cy) / 0.12, 0.0, 1.0)
        shrink = np.sqrt(1.0 - below**2)
        sr = np.sin(0.5 * np.pi * v) ** (0.7 - 0.4 * a.heart_round)
        sl = np.sin(0.5 * np.pi * v) ** (1.3 - 0.7 * a.heart_round)
        x_right = (mid - a.med_w) + ((cx - rr) - (mid - a.med_w)) * sr
        x_left = (mid + a.med_w) + ((cx + rl) - (mid + a.med_w)) * sl
        centre = 0.5 * (x_right + x_left)
        half = 0.5 * (x_left - x_right) * shrink
        return centre - half, centre + half

    def _draw_heart_and_mediastinum(self) -> None:
        a = self.a
        cx, cy, rr, rl, ry = self.heart_geometry()
        sl, X, Y = self.box(cx + 0.5 * (rl - rr), cy, max(rr, rl) + 0.05, ry + 0.14)
        xr, xl = self.heart_borders(Y)
        heart = _ramp((X - xr) / self.e) * _ramp((xl - X) / self.e) * _ramp((Y - (cy - ry)) / (4 * self.e))
        heart = heart * _ramp((cy + 0.12 - Y) / self.e)
        self.add_occlude(sl, 0.88 * heart)
        self.density[sl] += 0.05 * heart
        # Aortic knob on the patient's left (image right) and the descending aorta below it.
        kx = MIDLINE + a.shift + a.med_w + 0.35 * a.knob_r
        ky = a.y_top + a.knob_dy
        sl, val = self.ellipse(kx, ky, a.knob_r, a.knob_r * 1.25, profile="flat")
        self.add_occlude(sl, val)
        self.knob = (kx, ky, a.knob_r)
        # Descending aorta: its left wall is a line beside the spine, bowing out when tortuous.
        mid = MIDLINE + a.shift
        sl, X, Y = self.box(mid + a.med_w + 0.05, 0.5 * (ky + cy), 0.06, 0.5 * (cy - ky))
        v = np.clip((Y - ky) / (cy - ky), 0.0, 1.0)
        edge = mid + a.med_w + 0.018 + a.aorta_bulge * np.sin(np.pi * v)
        self.add_occlude(sl, _ramp((edge - X) / self.e) * (X > mid) * (Y >= ky))
        if a.pa_bulge > 0:
            sl, val = self.ellipse(cx + rl * 0.55, cy - ry * 0.85, 0.02 + a.pa_bulge, 0.03, profile="flat")
            self.add_occlude(sl, val)
        # Hila: pulmonary arteries and nodes.
        for side in SIDES:
            hx, hy = self.hilum(side)
            hs = a.hilum_scale
            wob = [(3, 0.08 * max(0.0, hs - 1.0) * 3, 0.5), (5, 0.05 * max(0.0, hs - 1.0) * 3, 1.0)]
            sl, val = self.ellipse(hx, hy, 0.022 * hs, 0.05 * hs, angle=SIGN[side] * 0.25, profile="sphere", wobble=wob)
            self.density[sl] += 0.04 * val * min(hs, 1.8)
            self.add_fill(sl, 0.3 * val * min(hs, 1.6))

    def _draw_airways(self) -> None:
        a = self.a
        carina_y = a.y_top + 0.2 * a.lung_height + 0.03
        tx = MIDLINE + a.shift * 0.6
        sl, X, Y = self.box(tx, carina_y / 2, 0.04, carina_y / 2 + 0.01)
        w = 0.013
        trachea = np.exp(-(((X - tx) / w) ** 4)) * _smooth((carina_y - Y) / 0.03)
        self.lucent[sl] += 0.16 * trachea
        self.carina = (tx, carina_y)

    def _draw_spine(self) -> None:
        a = self.a
        y = self.y
        sx = self.spine_x(y)[:, None]
        hw = 0.03
        sl, X, Y = self.box(MIDLINE, 0.5, float(np.abs(sx - MIDLINE).max()) + 0.05, 0.5)
        sxb = sx[sl[0]]
        dx = X - sxb
        phase = (Y - a.y_top + 0.02) / a.vert_period
        frac = phase - np.floor(phase)
        disc = np.exp(-((np.minimum(frac, 1.0 - frac) / 0.1) ** 2))
        body = _smooth((hw - np.abs(dx)) / 0.006)
        cortex = np.exp(-(((np.abs(dx) - hw + 0.003) / 0.004) ** 2))
        vert = body * (0.55 - 0.4 * disc) + 0.35 * cortex * (1 - disc)
        ped = np.exp(-(((np.abs(dx) - 0.019) / 0.0065) ** 2 + ((frac - 0.42) / 0.17) ** 2))
        spin = np.exp(-((dx / 0.005) ** 2 + ((frac - 0.78) / 0.16) ** 2))
        self.bones[sl] += 0.15 * vert + 0.15 * ped + 0.07 * spin
        self.spine_hw = hw

    def rib_curves(self, side: str, m: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior ribs of one side, (11, m) arrays of image x and y from spine to lateral wall,
        plus each rib's half thickness. They rise from the spine, then arc down laterally."""
        a = self.a
        s = SIGN[side]
        i = np.arange(11, dtype=np.float64)[:, None]
        sp = (a.y_cp[side] - a.y_top + 0.07) / 10.2
        y0 = a.y_top - 0.035 + a.rib_phase + i * sp
        x0 = self.spine_x(y0)
        d0, d1 = 0.03, a.tw + 0.018
        span = d1 - d0
        v = np.linspace(0.0, 1.0, m)[None, :]
        rise = a.rib_rise * (1.0 - 0.04 * i)
        b = (a.rib_drop * (1 + 0.06 * i) + rise * span) / span**2
        yc = y0 - rise * span * v + b * (span * v) ** 2
        # Medial ends follow the spine (scoliosis), lateral ends stay on the chest wall.
        return x0 * (1.0 - v) + MIDLINE * v + s * (d0 + span * v), yc, (0.0105 + 0.0004 * i)[:, 0]

    def _draw_ribs(self) -> None:
        a = self.a
        for side in SIDES:
            s = SIGN[side]
            xs, ys, hh = self.rib_curves(side)
            self.ribs[side] = [(xs[i], ys[i], hh[i]) for i in range(len(hh))]
            v = np.linspace(0.0, 1.0, xs.shape[1])[None, :]
            self._rib_strokes(xs, ys, 0.085 * _smooth(v / 0.15) * _smooth((1.0 - v) / 0.05))
            # Anterior ribs: from each lateral end, medially and downwards, fainter.
            sel = slice(1, 9)
            d_lat = np.abs(xs[sel, -1:] - MIDLINE)
            d_end = 0.1 + 0.005 * np.arange(1, 9, dtype=np.float64)[:, None]
            d = d_lat + (d_end - d_lat) * v
            ya = ys[sel, -1:] + 0.28 * (d_lat - d) + 0.5 * (d_lat - d) ** 2
            self._rib_strokes(MIDLINE + s * d, ya, 0.05 * _smooth(v / 0.03) * _smooth((1.0 - v) / 0.3))

    def _rib_strokes(self, xs: np.ndarray, ys: np.ndarray, amp: np.ndarray) -> None:
        """Ribs as soft bands (rows of xs/ys are ribs)."""
        self.curves("bones", RIB, xs, ys, amp)

    def _draw_shoulders(self) -> None:
        a = self.a
        for side in SIDES:
            s = SIGN[side]
            y_med = a.y_top + a.clav_dy
            pts = [
                (MIDLINE + s * 0.045, y_med + 0.005),
                (MIDLINE + s * 0.13, y_med - 0.012),
                (MIDLINE + s * 0.22, y_med - 0.03),
                (MIDLINE + s * (a.tw + 0.01), y_med - 0.045),
            ]
            curve = _catmull_rom(pts, 16)
            self.clavicle[side] = curve
            cx_, cy_ = _resample(curve, 0.6 / self.N)
            v = np.linspace(0.0, 1.0, cx_.size)
            self._rib_strokes(cx_[None, :], cy_[None, :], (0.17 * _smooth(v / 0.05) * _smooth((1.0 - v) / 0.1))[None, :])
            # Humeral head and glenoid at the top corner.
            hx, hy = MIDLINE + s * (a.tw + a.body_margin * 0.5 + 0.075), y_med - 0.035
            sl, val = self.ellipse(hx, hy, 0.055, 0.06, profile="sphere")
            self.bones[sl] += 0.2 * val
            self.humeral_head[side] = (hx, hy)
            # Scapular lateral border: a faint oblique line over the upper lateral lung.
            spts = [(hx - s * 0.06, hy + 0.04), (MIDLINE + s * (a.tw - 0.03), a.y_top + 0.32 * a.lung_height)]
            self.stroke(_catmull_rom(spts, 8), 0.06, RIB, target="bones")

    def _draw_breasts(self) -> None:
        a = self.a
        if a.breast <= 0:
            return
        for side in a.breast_sides:
            s = SIGN[side]
            g = self.lungs[side]
            cx, cy = MIDLINE + s * (a.tw * 0.62), a.y_cp[side] - 0.1
            sl, X, Y = self.box(cx, cy, 0.2, 0.16)
            rho = np.sqrt(((X - cx) / 0.17) ** 2 + ((Y - cy) / 0.12) ** 2)
            val = _smooth((1.0 - rho) / 0.5) * _smooth((cy + 0.11 - Y) / 0.02)
            self.density[sl] += a.breast * val

    def _draw_abdomen(self) -> None:
        a = self.a
        if a.bubble > 0:
            g = self.lungs[LEFT]
            x = g.x_medial + 0.45 * (g.x_wall - g.x_medial)
            y = float(g.dome(x)) + 0.045
            sl, X, Y = self.box(x, y, 0.07, 0.05)
            rho = np.sqrt(((X - x) / 0.055) ** 2 + ((Y - y) / 0.03) ** 2)
            val = _smooth((1 - rho) / 0.3) * _smooth((y + 0.012 - Y) / 0.004)
            self.lucent[sl] += a.bubble * val
        # Bowel gas below the domes (colon): soft lucent blobs.
        base = max(a.y_cp[RIGHT], a.y_cp[LEFT])
        for dx, depth, r, gas in a.bowel:
            if gas > 0.05:
                sl, val = self.ellipse(MIDLINE + dx, base + depth - 0.06, r * 1.8, r, profile="sphere", wobble=[(3, 0.1, dx * 40)])
                self.lucent[sl] += gas * val

    def _draw_vessels(self, side: str) -> None:
        """A random branching pulmonary vessel tree from the hilum, tapering to the periphery.

        Grown one generation at a time with every branch of a generation vectorised (fast)."""
        a = self.a
        rng = self.vessel_rng
        s = SIGN[side]
        hx, hy = self.hilum(side)
        steps = 16
        n_main = 10
        phi = np.linspace(-1.3, 1.6, n_main) + rng.uniform(-0.12, 0.12, n_main)
        x0 = np.full(n_main, hx) + s * rng.uniform(-0.005, 0.015, n_main)
        y0 = np.full(n_main, hy) + rng.uniform(-0.03, 0.03, n_main)
        length = rng.uniform(0.16, 0.3, n_main)
        w0 = rng.uniform(0.8, 1.0, n_main)
        t = np.arange(1, steps + 1) / steps
        xs, ys, ws, ds = [], [], [], []
        for n_children in (2, 1, 0):
            b = len(phi)
            ph = phi[:, None] + np.cumsum(rng.normal(0.0, 0.07, (b, steps)), axis=1)
            step = (length / steps)[:, None]
            px = x0[:, None] + np.cumsum(s * np.cos(ph) * step, axis=1)
            py = y0[:, None] + np.cumsum(np.sin(ph) * step, axis=1)
            w = w0[:, None] * (1.0 - 0.8 * t[None, :])
            # Densify to sub-pixel spacing so the blurred splats form continuous lines.
            fx = np.concatenate([x0[:, None], px], axis=1)
            fy = np.concatenate([y0[:, None], py], axis=1)
            fw = np.concatenate([w0[:, None], w], axis=1)
            f = np.linspace(0.0, 1.0, DENSIFY, endpoint=False)[None, None, :]
            xs.append((fx[:, :-1, None] + f * np.diff(fx, axis=1)[:, :, None]).ravel())
            ys.append((fy[:, :-1, None] + f * np.diff(fy, axis=1)[:, :, None]).ravel())
            ws.append((fw[:, :-1, None] + f * np.diff(fw, axis=1)[:, :, None]).ravel())
            ds.append(np.repeat(length / (steps * DENSIFY), steps * DENSIFY))
            if n_children == 0:
                break
            parent = np.repeat(np.arange(b), n_children)
            j = rng.integers(steps // 4, (3 * steps) // 4, parent.size)
            turn = np.where(rng.uniform(size=parent.size) < 0.5, -1.0, 1.0) * rng.uniform(0.3, 0.75, parent.size)
            phi = ph[parent, j] + turn
            x0, y0 = px[parent, j], py[parent, j]
            length = (1.0 - t[j]) * length[parent] * rng.uniform(0.5, 0.9, parent.size)
            w0 = w[parent, j] * 0.75
        px, py, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
        gain = a.vessel_gain * np.where(py < hy, a.upper_vessel_gain, 1.0)
        periph = np.clip(np.hypot(px - hx, py - hy) / 0.25, 0, 1)
        gain = gain * (1.0 - (1.0 - a.peripheral_vessel_gain) * periph)
        seg = np.concatenate(ds) * self.N  # arc length per point, in pixels
        # One blur width for all vessels; calibre shows as brightness (keeps one filter pass).
        amp = 0.11 * (0.3 + 0.7 * w) * gain
        self.splat("vessel", VESSEL, px, py, amp * seg * math.sqrt(2 * math.pi) * VESSEL * self.scale)

    # --- composition ----------------------------------------------------------------------

    def _blurred(self, target: str):
        """Sum of the blurred stroke layers of one target (0.0 when there are none)."""
        n = self.N
        out = 0.0
        for (tgt, sig), parts in sorted(self.layers.items(), key=lambda kv: kv[0]):
            if tgt != target or not parts:
                continue
            col = np.concatenate([p[0] for p in parts]) * n - 0.5
            row = np.concatenate([p[1] for p in parts]) * n - 0.5
            w = np.concatenate([p[2] for p in parts])
            j0 = np.floor(col)
            i0 = np.floor(row)
            fx, fy = col - j0, row - i0
            j0 = j0.astype(np.int64)
            i0 = i0.astype(np.int64)
            ok = (i0 >= 0) & (i0 < n - 1) & (j0 >= 0) & (j0 < n - 1)  # drops only border-touching points
            i0, j0, fx, fy, w = i0[ok], j0[ok], fx[ok], fy[ok], w[ok]
            base = i0 * n + j0
            wy0, wy1 = w * (1.0 - fy), w * fy
            idx = np.concatenate([base, base + 1, base + n, base + n + 1])
            wts = np.concatenate([wy0 * (1.0 - fx), wy0 * fx, wy1 * (1.0 - fx), wy1 * fx])
            lay = np.bincount(idx, weights=wts, minlength=n * n).reshape(n, n)
            out = out + ndimage.gaussian_filter(lay, sig * self.scale, truncate=3.0)
        return out

    def finish(self) -> np.ndarray:
        """Compose density, expose, position, add noise; returns uint8 (N, N)."""
        a = self.a
        fill_strokes = self._blurred("fill")
        if not np.isscalar(fill_strokes):
            self.add_fill(slice(None), np.minimum(fill_strokes, 1.0))
        lung = self.lung_m[RIGHT] + self.lung_m[LEFT]  # disjoint (the mediastinum separates them)
        if a.lucency[RIGHT] == a.lucency[LEFT]:
            air = lung * (AIR * a.lucency[RIGHT])
        else:
            air = self.lung_m[RIGHT] * (AIR * a.lucency[RIGHT]) + self.lung_m[LEFT] * (AIR * a.lucency[LEFT])
        h = a.lung_height
        # Bases look denser (posterior recesses, soft tissue); apices are overlapped by the shoulders.
        y = self.Y
        air *= 1.0 - 0.16 * _smooth((y - a.y_top - 0.55 * h) / (0.45 * h)) - 0.1 * _smooth((a.y_top + 0.12 * h - y) / (0.12 * h))
        detail = self._blurred("vessel") * self.vessel_mask
        detail += self.texture
        detail *= lung
        detail -= air  # aerated lung: markings minus air
        detail *= 1.0 - self.occlude
        detail *= 1.0 - self.fill
        bones = self.bones + self._blurred("bones")
        bones *= np.minimum(self.body * (4.0 * a.bone), a.bone)
        d = self.body + self.density
        d += bones
        d += detail
        d -= self.lucent
        d += self._blurred("density") - self._blurred("lucent")
        d = ndimage.gaussian_filter(d, a.blur * self.scale, truncate=3.0)
        d = self._position(d)
        k = a.k
        np.maximum(d, 0.0, out=d)
        d *= -k
        img = np.exp(d, out=d)
        # exposure: 1 - exp(-k d), normalised so REF_DENSITY is white; then heel-effect gradient,
        # window and gamma (contrast), and quantum noise stronger in the darker (lung) areas.
        gy, gx = a.grad
        gain = (1.0 + gx * (self.X - 0.5) + gy * (self.Y - 0.5)) / (1.0 - math.exp(-k * REF_DENSITY))
        img = (1.0 - img) * gain
        img -= a.lo
        img *= 1.0 / (a.hi - a.lo)
        np.clip(img, 0.0, 1.0, out=img)
        img **= a.gamma
        img += a.noise * self.quantum * (1.2 - 0.5 * img)
        np.clip(img, 0.0, 1.0, out=img)
        img *= 255.0
        return np.rint(img, out=img).astype(np.uint8)

    def _position(self, d: np.ndarray) -> np.ndarray:
        """Per-study rotation, shift and zoom (patient positioning) by bilinear inverse mapping.

        PIL's C affine transform on a float image (2x faster than scipy's); edges are extended by
        padding first, so zooming out or shifting never pulls in black borders."""
        a = self.a
        n = self.N
        pad = max(8, n // 8)
        big = np.pad(d, pad, mode="edge").astype(np.float32)
        th = math.radians(a.rot)
        c, s = math.cos(th) / a.zoom, math.sin(th) / a.zoom
        m = (n - 1) / 2.0
        # input (row, col) = R/zoom @ (i - m, j - m) + m - shift * n; PIL maps output pixel
        # centres (x = j + 0.5, y = i + 0.5) to input x/y, both offset by the padding.
        x0 = -c * (m + 0.5) - s * (m + 0.5) + m - a.dx * n + 0.5 + pad
        y0 = s * (m + 0.5) - c * (m + 0.5) + m - a.dy * n + 0.5 + pad
        out = Image.fromarray(big, mode="F").transform(
            (n, n), Image.Transform.AFFINE, (c, s, x0, -s, c, y0), resample=Image.Resampling.BILINEAR
        )
        return np.asarray(out, dtype=np.float64)


# ----------------------------------------------------------------------------- finding rules

AnatomyRule = Callable[[Anatomy, Tag, np.random.Generator], None]
DrawRule = Callable[[Scene, Tag, np.random.Generator], None]
_ANATOMY_RULES: dict[str, AnatomyRule] = {}
_DRAW_RULES: dict[str, DrawRule] = {}


def _anatomy_rule(*names: str):
    def deco(fn: AnatomyRule) -> AnatomyRule:
        for n in names:
            _ANATOMY_RULES[n] = fn
        return fn

    return deco


def _draw_rule(*names: str):
    def deco(fn: DrawRule) -> DrawRule:
        for n in names:
            _DRAW_RULES[n] = fn
        return fn

    return deco


def known_findings() -> set[str]:
    """Lower-case tag headings the renderer draws (the rest are ignored)."""
    return set(_ANATOMY_RULES) | set(_DRAW_RULES)


# --- anatomy-changing findings ----------------------------------------------------------------

_CTR = {"borderline": 0.545, "mild": 0.58, "moderate": 0.63, "large": 0.67, "severe": 0.67}


def _cardiomegaly(a: Anatomy, tag: Tag, rng: np.random.Generator, default: float = 0.61) -> None:
    levels = [_CTR[q] for q in tag.quals if q in _CTR]
    ctr = (max(levels) if levels else default) + rng.uniform(-0.008, 0.008)
    a.ctr = max(a.ctr, ctr)


@_anatomy_rule("cardiomegaly", "heart atria", "heart ventricles")
def _rule_cardiomegaly(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    _cardiomegaly(a, tag, rng)


@_anatomy_rule("cardiac shadow", "heart")
def _rule_cardiac_shadow(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("enlarged", "prominent") or not tag.quals:
        _cardiomegaly(a, tag, rng)


@_anatomy_rule("pericardial effusion")
def _rule_pericardial(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.ctr = max(a.ctr, 0.64 + rng.uniform(-0.01, 0.01))
    a.heart_right_frac = 0.45
    a.heart_ry *= 1.15
    a.heart_round = 1.0


@_anatomy_rule("heart failure")
def _rule_heart_failure(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.ctr = max(a.ctr, 0.6)
    a.hilum_scale *= 1.3
    a.upper_vessel_gain *= 1.5


@_anatomy_rule("hypovolemia")
def _rule_hypovolemia(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.ctr = min(a.ctr, 0.37)


def _hyperinflate(a: Anatomy, sev: float, lucent: float) -> None:
    for side in SIDES:
        a.y_cp[side] = min(0.9, a.y_cp[side] + 0.06 * sev)
        a.dome_h[side] *= 0.4
        a.lucency[side] = max(a.lucency[side], 1.0 + lucent)
    a.tw *= 1.03
    a.ctr *= 0.88
    a.heart_ry *= 1.05


def _hypoinflate(a: Anatomy, sev: float) -> None:
    for side in SIDES:
        a.y_cp[side] = max(0.56, a.y_cp[side] - 0.07 * sev)
        a.dome_h[side] *= 1.15
    a.ctr = min(0.72, a.ctr * 1.08)
    a.vessel_gain *= 1.25
    a.heart_ry *= 0.92


@_anatomy_rule("lung")
def _rule_lung(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("hyperdistention"):
        _hyperinflate(a, tag.severity, 0.05)
    if tag.has("hypoinflation"):
        _hypoinflate(a, tag.severity)
    if tag.has("hilum", "lymph nodes") and tag.has("enlarged", "prominent"):
        a.hilum_scale = max(a.hilum_scale, 1.6)
    if tag.has("prominent", "blood vessels") and not tag.has("hilum"):
        a.vessel_gain *= 1.5
    if tag.has("hyperlucent"):
        for side in _pick_sides(tag, rng, "both"):
            a.lucency[side] = max(a.lucency[side], 1.2)


@_anatomy_rule("emphysema", "pulmonary emphysema", "pulmonary disease, chronic obstructive", "bullous emphysema", "cystic fibrosis")
def _rule_emphysema(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    _hyperinflate(a, tag.severity, 0.16 * tag.severity)
    a.peripheral_vessel_gain = 0.45


@_anatomy_rule("lung, hyperlucent")
def _rule_hyperlucent(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    for side in _pick_sides(tag, rng, "both"):
        a.lucency[side] = max(a.lucency[side], 1.22)
    a.peripheral_vessel_gain = min(a.peripheral_vessel_gain, 0.6)


@_anatomy_rule("diaphragm")
def _rule_diaphragm(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("elevated"):
        for side in _pick_sides(tag, rng, "right"):
            a.y_cp[side] -= 0.075 * tag.severity
            a.dome_h[side] *= 1.2
    if tag.has("flattened"):
        for side in _pick_sides(tag, rng, "both"):
            a.dome_h[side] *= 0.3
            a.y_cp[side] = min(0.9, a.y_cp[side] + 0.03)


@_anatomy_rule("diaphragmatic eventration")
def _rule_eventration(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    for side in _pick_sides(tag, rng, "right"):
        a.y_cp[side] -= 0.04 * tag.severity
        a.dome_h[side] *= 1.9


@_anatomy_rule("volume loss")
def _rule_volume_loss(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    for side in _pick_sides(tag, rng):
        a.y_cp[side] -= 0.05
        a.shift += 0.015 * SIGN[side]


@_anatomy_rule("scoliosis")
def _rule_scoliosis(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    sev = {0.45: 0.7, 0.75: 0.75, 1.0: 1.0, 1.25: 1.25, 1.6: 1.6}.get(tag.severity, 1.0)
    amp = 0.045 * sev
    # Convex to the named side: the patient's right is the image left.
    sides = tag.sides
    direction = SIGN[sides[0]] if len(sides) == 1 else float(rng.choice([-1.0, 1.0]))
    if tag.has("lumbar vertebrae") and not tag.has("thoracic vertebrae"):
        a.scoliosis = [(direction * amp * 1.1, 0.5, 1.1), (-direction * amp * 0.5, 0.05, 0.55)]
    else:
        a.scoliosis = [(direction * amp, 0.12, 0.78), (-direction * amp * 0.6, 0.72, 1.2)]


@_anatomy_rule("kyphosis")
def _rule_kyphosis(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.vert_period *= 0.85
    a.clav_dy -= 0.03 * tag.severity
    a.rib_rise *= 0.5
    a.rib_drop *= 1.4


@_anatomy_rule("shift", "trachea")
def _rule_shift(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    side = _pick_sides(tag, rng)[0]
    a.shift += 0.035 * SIGN[side] * min(tag.severity, 1.2)


@_anatomy_rule("pneumonectomy")
def _rule_pneumonectomy(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    side = _pick_sides(tag, rng)[0]
    a.shift += 0.06 * SIGN[side]
    a.y_cp[side] -= 0.08


@_anatomy_rule("mediastinum", "adipose tissue")
def _rule_mediastinum(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("prominent", "enlarged", "widened") or tag.name == "adipose tissue" or not tag.quals:
        a.med_w *= 1.5
        a.knob_r *= 1.15


@_anatomy_rule("aorta", "aorta, thoracic", "aortic aneurysm")
def _rule_aorta(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    big = tag.name == "aortic aneurysm"
    if big or tag.has("tortuous", "prominent", "enlarged", "dilatation", "ectatic") or not tag.quals:
        sev = 1.8 if big else tag.severity
        a.knob_r *= 1.0 + 0.35 * sev
        a.aorta_bulge = max(a.aorta_bulge, 0.022 * sev)


@_anatomy_rule("pulmonary artery", "hypertension, pulmonary")
def _rule_pulmonary_artery(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.hilum_scale = max(a.hilum_scale, 1.6)
    a.pa_bulge = 0.015


@_anatomy_rule("lymph nodes", "sarcoidosis")
def _rule_nodes(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.hilum_scale = max(a.hilum_scale, 1.7)


@_anatomy_rule("pulmonary congestion")
def _rule_congestion(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.hilum_scale = max(a.hilum_scale, 1.35 + 0.2 * (tag.severity - 1))
    a.upper_vessel_gain *= 1.8


@_anatomy_rule("pulmonary edema")
def _rule_edema_anat(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.hilum_scale = max(a.hilum_scale, 1.3)
    a.upper_vessel_gain *= 1.4


@_anatomy_rule("mastectomy")
def _rule_mastectomy(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    side = _pick_sides(tag, rng)[0]
    a.breast = max(a.breast, 0.12)
    a.breast_sides = (OTHER[side],)


@_anatomy_rule("bone diseases, metabolic", "osteoporosis")
def _rule_osteopenia(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.bone *= 0.55


@_anatomy_rule("funnel chest", "pectus carinatum")
def _rule_pectus(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.heart_dx += 0.03
    a.rib_drop *= 1.5


@_anatomy_rule("technical quality of image unsatisfactory")
def _rule_poor_quality(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.noise = max(a.noise * 2.2, 0.04)
    a.blur *= 1.8
    a.hi += 0.12
    a.lo -= 0.08
    a.rot *= 1.8
    a.zoom *= rng.uniform(1.06, 1.14)


# --- drawn findings ---------------------------------------------------------------------------


def _effusion(scene: Scene, side: str, frac: float, rng: np.random.Generator) -> None:
    """Homogeneous basal fluid with a meniscus (higher laterally) that blunts the CP angle."""
    g = scene.lungs[side]
    h = g.height
    level = g.y_cp - frac * h
    men = (0.09 + 0.12 * min(frac, 0.5)) * h
    sl, X, Y = scene.box(0.5 * (g.x_medial + g.x_wall), g.y_cp - 0.5 * frac * h, 0.5 * abs(g.x_wall - g.x_medial) + 0.03, 0.5 * frac * h + men + 0.03)
    r = np.clip((X - g.x_medial) / (g.x_wall - g.x_medial), 0.0, 1.0)
    surface = level + men * (1.0 - r) ** 1.6
    f = _smooth((Y - surface) / (0.035 * h + 0.02 * frac * h))
    scene.add_fill(sl, f)
    scene.density[sl] += 0.05 * f * scene.lung_m[side][sl]


@_draw_rule("pleural effusion", "hemothorax")
def _rule_effusion(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    sev = tag.severity
    frac = {0.45: 0.17, 0.75: 0.2, 1.0: 0.25, 1.25: 0.33, 1.6: 0.5}.get(sev, 0.25)
    for side in _pick_sides(tag, rng, "both"):
        _effusion(scene, side, frac + rng.uniform(-0.02, 0.02), rng)


@_draw_rule("costophrenic angle", "pleura", "sulcus")
def _rule_blunting(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("blunted", "obscured") or tag.name == "costophrenic angle":
        for side in _pick_sides(tag, rng, "both"):
            _effusion(scene, side, 0.15 if tag.has("mild") else 0.17, rng)
    else:
        _pleural_thickening(scene, tag, rng)


def _patch(
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


def _reticular(scene: Scene, sides: Iterable[str], zone: str | None, strength: float) -> None:
    """Interstitial (reticular) pattern: a net of fine lines, weighted to the named zone."""
    net = np.exp(-(((0.35 * scene.cloud_fine + scene.cloud) / 0.3) ** 2))
    for side in sides:
        g = scene.lungs[side]
        if zone in ("lower", "middle", "retrocardiac"):
            w = _smooth((scene.Y - (g.y_top + 0.45 * g.height)) / (0.3 * g.height))
        elif zone in ("upper", "apex"):
            w = _smooth(((g.y_top + 0.55 * g.height) - scene.Y) / (0.3 * g.height))
        else:
            w = np.ones_like(scene.Y)
        scene.add_fill(slice(None), strength * net * w * scene.lung_m[side])


def _streaks(scene: Scene, side: str, zone: str | None, rng: np.random.Generator, n: int, strength: float, length: float = 0.09) -> None:
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


@_draw_rule("opacity", "density", "airspace disease", "infiltrate", "pneumonia", "consolidation", "bronchopneumonia", "pulmonary alveoli", "bronchitis", "bronchiolitis")
def _rule_opacity(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("mediastinum", "paratracheal") and not tag.has("lung"):
        _mediastinal_mass(scene, tag, rng)
        return
    if tag.has("ribs", "clavicle", "sternum") and not tag.has("lung"):
        _bone_lesion(scene, tag, rng)
        return
    dense = tag.name in ("pneumonia", "consolidation")
    strength = {0.45: 0.55, 0.75: 0.68}.get(tag.severity, 0.88 if dense else 0.8)
    sides = _pick_sides(tag, rng, "both" if tag.has("diffuse", "interstitial") else "random")
    zone = tag.zone
    multi = tag.has("multiple", "scattered", "multilobar")
    for side in sides:
        if tag.has("interstitial", "reticular", "diffuse"):
            _reticular(scene, [side], zone, 0.45 * strength)
            if tag.has("diffuse"):
                _patch(scene, side, zone, rng, 0.35 * strength, 0.1)
        elif tag.has("streaky"):
            _streaks(scene, side, zone, rng, int(rng.integers(3, 5)), 0.7 * strength)
            _patch(scene, side, zone, rng, 0.35 * strength, 0.06)
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
                _patch(scene, side, zone, rng, strength, radius)
                if zone is None or tag.has("multilobar"):
                    _patch(scene, side, "lower" if zone is None else "upper", rng, strength * 0.8, radius * 0.8)
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


@_draw_rule("pulmonary atelectasis")
def _rule_atelectasis(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    """Plate-like (band) atelectasis in the named zone, basal by default, with a little haze."""
    zone = tag.zone or "lower"
    strength = 0.7 if tag.severity < 1.0 else 0.85
    for side in _pick_sides(tag, rng, "random"):
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
                scene.stroke(_catmull_rom(pts, 6), amp * np.array([0.3, 0.8, 1, 1, 1, 0.8, 0.3]), SOFT, target="fill")
            _patch(scene, side, None, rng, 0.3, 0.05, at=(x, y + 0.01))
        if tag.has("patchy", "focal") or zone in ("middle", "retrocardiac") or tag.has("lower lobe"):
            _patch(scene, side, zone, rng, 0.55, 0.06)


@_draw_rule("cicatrix", "pulmonary fibrosis", "fibrosis", "lung diseases, interstitial", "tuberculosis")
def _rule_scarring(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name in ("pulmonary fibrosis", "fibrosis", "lung diseases, interstitial"):
        sides = _pick_sides(tag, rng, "both")
        _reticular(scene, sides, tag.zone or "lower", 0.55)
        for side in sides:
            _streaks(scene, side, tag.zone or "lower", rng, 3, 0.5)
        return
    zone = tag.zone or ("upper" if tag.name == "tuberculosis" else None)
    for side in _pick_sides(tag, rng, "right" if tag.name == "tuberculosis" else "random"):
        if zone == "apex" or tag.has("pleura"):
            _apical_cap(scene, side, 0.022)
        _streaks(scene, side, zone, rng, int(rng.integers(4, 6)), 0.75, length=0.11)
        _patch(scene, side, zone, rng, 0.4, 0.055)
        if tag.name == "tuberculosis":
            _cavity(scene, side, zone, rng, 0.03)
            _granulomas(scene, [side], zone, rng, 3)


def _apical_cap(scene: Scene, side: str, thick: float) -> None:
    g = scene.lungs[side]
    sdf = scene.sdf[side]
    cap = (sdf > -0.004) * _smooth((thick - sdf) / (0.5 * thick)) * _smooth((g.y_top + 0.13 * g.height - scene.Y) / 0.03)
    scene.add_fill(slice(None), 0.95 * cap)


def _pleural_thickening(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    for side in _pick_sides(tag, rng, "both"):
        g = scene.lungs[side]
        if tag.has("apex") or not tag.has("base", "lower lobe"):
            _apical_cap(scene, side, 0.03)
        if not tag.has("apex"):
            sdf = scene.sdf[side]
            lateral = (scene.X - g.xmed(scene.Y)) * g.s > 0.6 * abs(g.x_wall - g.x_medial)
            rim = (sdf > -0.004) * _smooth((0.014 - sdf) / 0.007) * lateral * _smooth((scene.Y - g.y_top - 0.15) / 0.05)
            scene.add_fill(slice(None), 0.9 * rim)


@_draw_rule("thickening")
def _rule_thickening(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("bronchi", "interstitial", "bronchovascular"):
        _reticular(scene, _pick_sides(tag, rng, "both"), tag.zone, 0.35)
    else:
        _pleural_thickening(scene, tag, rng)


@_draw_rule("markings")
def _rule_markings(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    sides = _pick_sides(tag, rng, "both")
    strength = 0.45 * min(tag.severity, 1.3)
    if tag.has("interstitial", "reticular", "irregular"):
        _reticular(scene, sides, tag.zone, strength)
    else:  # bronchovascular crowding: thicker streaks radiating from the hila
        for side in sides:
            hx, hy = scene.hilum(side)
            for _ in range(6):
                phi = rng.uniform(-1.2, 1.4)
                L = rng.uniform(0.1, 0.18)
                s = SIGN[side]
                pts = [(hx, hy), (hx + s * math.cos(phi) * L * 0.5, hy + math.sin(phi) * L * 0.5 + rng.uniform(-0.01, 0.01)), (hx + s * math.cos(phi) * L, hy + math.sin(phi) * L)]
                scene.stroke(_catmull_rom(pts, 8), [0.35, 0.25, 0.05], SOFT, target="fill")
        _reticular(scene, sides, tag.zone, 0.15)


@_draw_rule("pulmonary edema", "heart failure")
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
            _reticular(scene, [side], "lower", 0.3 * strength)
            for k in range(7):
                y = g.y_cp - 0.03 - k * 0.016 + rng.uniform(-0.004, 0.004)
                x0 = float(g.xlat(y))
                scene.stroke(np.array([(x0 - g.s * 0.002, y), (x0 - g.s * 0.03, y + rng.uniform(-0.003, 0.003))]), 0.7, FINE, target="fill")
    if tag.name == "heart failure":
        for side in SIDES:
            _effusion(scene, side, 0.13, rng)


@_draw_rule("pulmonary congestion")
def _rule_congestion(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
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
    m_c = _ramp(sdf_c / scene.e)
    region = m_full * (1.0 - m_c)
    scene.lucent += 0.16 * region
    scene.vessel_mask *= 1.0 - region
    near_wall = _smooth(scene.sdf[side] / (3.0 * scene.e))
    line = np.exp(-((sdf_c / (1.1 / scene.N)) ** 2)) * near_wall
    scene.density += 0.16 * line
    scene.add_fill(slice(None), 0.05 * m_c * m_full)  # the collapsed lung is slightly denser
    if fluid:
        level = g.y_cp - 0.25 * g.height
        scene.add_fill(slice(None), m_full * _ramp((scene.Y - level) / scene.e))


@_draw_rule("pneumothorax", "hydropneumothorax", "hemopneumothorax")
def _rule_pneumothorax(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    size = {0.45: 0.03, 0.75: 0.035, 1.0: 0.05, 1.25: 0.065, 1.6: 0.1}.get(tag.severity, 0.05)
    for side in _pick_sides(tag, rng, "random"):
        _pneumothorax(scene, side, size + rng.uniform(-0.005, 0.005), tag.name != "pneumothorax")


def _nodule(scene: Scene, x: float, y: float, r: float, fill: float, dens: float) -> None:
    sl, val = scene.ellipse(x, y, r, r * 0.95, profile="sphere")
    scene.add_fill(sl, fill * val)
    scene.density[sl] += dens * val


def _granulomas(scene: Scene, sides: Sequence[str], zone: str | None, rng: np.random.Generator, n: int, big: bool = False) -> None:
    for i in range(n):
        side = sides[i % len(sides)]
        x, y = scene.zone_point(side, zone, rng, jitter=1.6 if zone is None else 1.0)
        r = rng.uniform(0.011, 0.015) * (1.4 if big else 1.0)
        _nodule(scene, x, y, r, 0.9, 0.9)


@_draw_rule("calcified granuloma", "granuloma", "granulomatous disease")
def _rule_granuloma(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    multi = tag.has("multiple", "scattered") or tag.name == "granulomatous disease"
    n = int(rng.integers(3, 7)) if multi else 1
    if tag.name == "granulomatous disease":
        sides = _pick_sides(tag, rng, "both")
        _granulomas(scene, sides, tag.zone, rng, n)
        if rng.uniform() < 0.6:
            _hilar_calcification(scene, [sides[0]], rng)
        return
    if tag.has("hilum") and not tag.has("lung"):
        _hilar_calcification(scene, _pick_sides(tag, rng), rng)
        return
    _granulomas(scene, _pick_sides(tag, rng, "both" if multi else "random"), tag.zone, rng, n, big=tag.has("large"))


def _hilar_calcification(scene: Scene, sides: Sequence[str], rng: np.random.Generator) -> None:
    for side in sides:
        hx, hy = scene.hilum(side)
        for _ in range(int(rng.integers(2, 4))):
            x = hx + rng.uniform(-0.02, 0.03) * SIGN[side]
            y = hy + rng.uniform(-0.03, 0.03)
            _nodule(scene, x, y, rng.uniform(0.01, 0.014), 0.6, 0.85)


def _aortic_calcification(scene: Scene, rng: np.random.Generator) -> None:
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


@_draw_rule("calcinosis")
def _rule_calcinosis(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("aorta", "aorta, thoracic", "blood vessels"):
        _aortic_calcification(scene, rng)
    elif tag.has("mediastinum", "paratracheal", "trachea, carina") or (tag.has("lymph nodes") and not tag.has("hilum", "lung")):
        tx, ty = scene.carina
        side = _pick_sides(tag, rng, "right")[0]
        for _ in range(int(rng.integers(2, 4))):
            if tag.has("trachea, carina"):
                x, y = tx + rng.uniform(-0.02, 0.02), ty + rng.uniform(0.01, 0.04)
            else:
                x, y = tx + SIGN[side] * rng.uniform(0.025, 0.045), ty - rng.uniform(0.02, 0.07)
            _nodule(scene, x, y, rng.uniform(0.008, 0.012), 0.5, 0.75)
    elif tag.has("hilum"):
        _hilar_calcification(scene, _pick_sides(tag, rng), rng)
    elif tag.has("mitral valve"):
        cx, cy, rr, rl, ry = scene.heart_geometry()
        sl, val = scene.ellipse(cx + 0.03, cy - 0.01, 0.025, 0.018, angle=0.5, profile="ring")
        scene.density[sl] += 0.45 * val
    elif tag.has("abdomen"):
        g = scene.lungs[RIGHT]
        for _ in range(3):
            _nodule(scene, g.x_medial - 0.1 + rng.uniform(-0.05, 0.05), g.y_cp + rng.uniform(0.04, 0.12), 0.009, 0.0, 0.6)
    elif tag.has("pleura"):
        for side in _pick_sides(tag, rng, "both"):
            g = scene.lungs[side]
            for _ in range(2):
                y = g.y_top + rng.uniform(0.4, 0.8) * g.height
                x = float(g.xlat(y)) - g.s * 0.008
                scene.band(x, y, 0.05, 0.006, math.pi / 2 + rng.uniform(-0.2, 0.2), 0.5, target="density")
    else:
        multi = tag.has("multiple", "scattered")
        sides = _pick_sides(tag, rng, "both" if multi else "random")
        _granulomas(scene, sides, tag.zone, rng, int(rng.integers(2, 5)) if multi else 1, big=tag.has("large"))


@_draw_rule("nodule", "nipple shadow")
def _rule_nodule(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "nipple shadow":
        for side in SIDES:
            g = scene.lungs[side]
            x, y = g.point(0.78, 0.62)
            _nodule(scene, x, y, 0.013, 0.55, 0.03)
        return
    multi = tag.has("multiple", "scattered", "diffuse")
    sides = _pick_sides(tag, rng, "both" if multi else "random")
    n = int(rng.integers(3, 7)) if multi else 1
    small = tag.has("small")
    for i in range(n):
        side = sides[i % len(sides)]
        x, y = scene.zone_point(side, tag.zone, rng, jitter=1.5 if multi else 1.0)
        r = rng.uniform(0.015, 0.02) if small else rng.uniform(0.019, 0.026)
        _nodule(scene, x, y, r, 1.0, 0.12)


@_draw_rule("mass", "expansile bone lesions")
def _rule_mass(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "expansile bone lesions" or (tag.has("ribs") and not tag.has("lung")):
        _bone_lesion(scene, tag, rng)
        return
    if tag.has("mediastinum", "paratracheal") and not tag.has("lung"):
        _mediastinal_mass(scene, tag, rng)
        return
    for side in _pick_sides(tag, rng, "random"):
        x, y = scene.zone_point(side, tag.zone or "upper", rng)
        r = rng.uniform(0.045, 0.06) * (1.25 if tag.has("large") else 1.0)
        wob = [(3, 0.08, rng.uniform(0, 6.28)), (5, 0.05, rng.uniform(0, 6.28))]
        sl, val = scene.ellipse(x, y, r, r * rng.uniform(0.85, 1.05), angle=rng.uniform(0, 3), profile="sphere", wobble=wob)
        scene.add_fill(sl, np.clip(val * 2.5, 0, 1))
        scene.density[sl] += 0.05 * val


def _mediastinal_mass(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    tx, ty = scene.carina
    side = _pick_sides(tag, rng, "right")[0]
    x = tx + SIGN[side] * (scene.a.med_w + 0.015)
    sl, val = scene.ellipse(x, ty - 0.05, 0.04, 0.055, profile="flat")
    scene.add_occlude(sl, val)


def _bone_lesion(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    side = _pick_sides(tag, rng)[0]
    xs, ys, hh = scene.ribs[side][int(rng.integers(3, 8))]
    j = int(rng.integers(15, 35))
    sl, val = scene.ellipse(xs[j], ys[j], 0.02, 0.014, profile="sphere")
    scene.bones[sl] += 0.3 * val


def _cavity(scene: Scene, side: str, zone: str | None, rng: np.random.Generator, r: float) -> None:
    x, y = scene.zone_point(side, zone, rng)
    sl, val = scene.ellipse(x, y, r * 1.5, r * 1.4, profile="sphere")
    scene.add_fill(sl, np.clip(val * 2.0, 0, 1))
    sl, val = scene.ellipse(x, y - r * 0.1, r, r * 0.9, profile="flat")
    scene.lucent[sl] += 0.3 * val


@_draw_rule("cavitation", "cysts", "lucency", "blister", "bullous emphysema", "bronchiectasis", "cystic fibrosis")
def _rule_lucency(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "cavitation":
        for side in _pick_sides(tag, rng, "right"):
            _cavity(scene, side, tag.zone or "upper", rng, 0.028)
        return
    if tag.name in ("bronchiectasis", "cystic fibrosis"):
        zone = tag.zone or ("upper" if tag.name == "cystic fibrosis" else "lower")
        for side in _pick_sides(tag, rng, "both"):
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
    for side in _pick_sides(tag, rng, "both" if bullae else "random"):
        for _ in range(int(rng.integers(2, 4)) if multi else 1):
            x, y = scene.zone_point(side, zone, rng)
            r = rng.uniform(0.03, 0.05) if bullae or tag.has("large") else rng.uniform(0.02, 0.03)
            sl, val = scene.ellipse(x, y, r, r * 0.9, profile="flat")
            scene.lucent[sl] += 0.12 * val
            scene.vessel_mask[sl] *= 1.0 - val
            sl, val = scene.ellipse(x, y, r, r * 0.9, profile="ring")
            scene.add_fill(sl, 0.4 * val)


# --- devices ----------------------------------------------------------------------------------


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


@_draw_rule("catheters, indwelling")
def _rule_catheter(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("abdomen"):
        _tube_ng(scene, rng)
        return
    for side in _pick_sides(tag, rng, "right"):
        pts = _catmull_rom(_catheter_path(scene, side, rng), 16)
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
        scene.stroke(_catmull_rom(lead, 16) + np.array([0.004 * k, 0.0]), 0.7, LINE, target="density")


@_draw_rule("implanted medical device", "medical device", "pacemaker, artificial", "defibrillators, implantable")
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
        side = _pick_sides(tag, rng, "right")[0]
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
        route = _catheter_path(scene, _pick_sides(tag, rng, "right")[0], rng)
        hx, hy = scene.hilum(LEFT if rng.uniform() < 0.5 else RIGHT)
        pts = route + [(cx + rl * 0.2, cy - ry * 0.05), (cx + rl * 0.25, cy - ry * 0.6), (hx, hy)]
        scene.stroke(_catmull_rom(pts, 16), 0.75, LINE, target="density")
        return
    if tag.name == "medical device" and not tag.sides:
        _ecg_leads(scene, rng)
        return
    _pacemaker(scene, _pick_sides(tag, rng, "left")[0], rng)


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
        scene.stroke(_catmull_rom(wire, 12), 0.35, FINE, target="density")


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


def _clips(scene: Scene, x: float, y: float, rng: np.random.Generator, n: int, spread: float = 0.03) -> None:
    for _ in range(n):
        px, py = x + rng.uniform(-spread, spread), y + rng.uniform(-spread, spread)
        phi = rng.uniform(0, math.pi)
        L = 0.016
        p = np.array([(px - L * math.cos(phi), py - L * math.sin(phi)), (px + L * math.cos(phi), py + L * math.sin(phi))])
        scene.stroke(p, 1.2, LINE, target="density")


@_draw_rule("surgical instruments", "sutures", "stents", "foreign bodies", "contrast media", "tube, inserted", "spinal fusion", "breast implants")
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
            _chest_tube(scene, _pick_sides(tag, rng)[0], rng)
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
            s = SIGN[_pick_sides(tag, rng)[0]]
            x, y, phi, L = MIDLINE + s * 0.18, a.y_top + a.clav_dy + 0.01, 0.1, 0.05
        for off in (-0.004, 0.004):
            dx, dy = -math.sin(phi) * off, math.cos(phi) * off
            p = np.array([(x + dx - L * math.cos(phi) / 2, y + dy - L * math.sin(phi) / 2), (x + dx + L * math.cos(phi) / 2, y + dy + L * math.sin(phi) / 2)])
            scene.stroke(p, 0.9, FINE, target="density")
        return
    if name == "foreign bodies":
        side = _pick_sides(tag, rng)[0]
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
        side = _pick_sides(tag, rng, "right")[0]
        g = scene.lungs[side]
        _clips(scene, g.x_medial + 0.35 * (g.x_wall - g.x_medial), g.y_cp + 0.07, rng, int(rng.integers(3, 6)))
        return
    if tag.has("neck", "cervical vertebrae"):
        _clips(scene, MIDLINE + rng.uniform(-0.05, 0.05), 0.04, rng, 4)
        return
    side = _pick_sides(tag, rng)[0]
    zone = tag.zone or ("upper" if name == "sutures" else "hilum")
    x, y = scene.zone_point(side, zone, rng)
    if name == "sutures":  # staple line
        phi = rng.uniform(-0.5, 0.5)
        for k in range(-4, 5):
            px, py = x + k * 0.012 * math.cos(phi), y + k * 0.012 * math.sin(phi)
            scene.stroke(np.array([(px, py - 0.006), (px, py + 0.006)]), 1.0, FINE, target="density")
    else:
        _clips(scene, x, y, rng, int(rng.integers(3, 6)), 0.035)


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
    scene.stroke(_catmull_rom(pts, 16), 0.6, LINE, target="density")


def _chest_tube(scene: Scene, side: str, rng: np.random.Generator) -> None:
    g = scene.lungs[side]
    s = g.s
    pts = [(g.x_wall + s * 0.1, g.y_cp - 0.1), (g.x_wall - s * 0.01, g.y_cp - 0.15), (g.x_apex + s * 0.02, g.y_top + 0.07)]
    curve = _catmull_rom(pts, 20)
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


# --- bones ------------------------------------------------------------------------------------


def _vertebra_levels(scene: Scene, y0: float, y1: float) -> np.ndarray:
    a = scene.a
    start = a.y_top - 0.02
    k0 = math.ceil((y0 - start) / a.vert_period)
    k1 = math.floor((y1 - start) / a.vert_period)
    return start + np.arange(k0, k1 + 1) * a.vert_period


@_draw_rule("thoracic vertebrae", "spine", "lumbar vertebrae", "cervical vertebrae", "osteophyte", "spondylosis", "arthritis", "hyperostosis, diffuse idiopathic skeletal", "sclerosis")
def _rule_spine_degeneration(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    """Marginal osteophytes (bright spurs at vertebral corners) and endplate sclerosis."""
    if tag.name in ("arthritis", "sclerosis") and tag.has("humerus", "shoulder", "clavicle"):
        _shoulder(scene, tag, rng)
        return
    if tag.name in ("thoracic vertebrae", "lumbar vertebrae") and tag.has("fracture", "deformity", "wedge"):
        _compressed_vertebra(scene, tag, rng)
        return
    if tag.has("lumbar vertebrae") or tag.name == "lumbar vertebrae":
        y0, y1 = 0.72, 0.98
    elif tag.has("cervical vertebrae") or tag.name == "cervical vertebrae":
        y0, y1 = 0.0, scene.a.y_top + 0.02
    else:
        y0, y1 = scene.a.y_top + 0.15, 0.74
    levels = _vertebra_levels(scene, y0, y1)
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


def _compressed_vertebra(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    lo, hi = (0.72, 0.95) if tag.has("lumbar vertebrae") or tag.name == "lumbar vertebrae" else (0.4, 0.7)
    levels = _vertebra_levels(scene, lo, hi)
    for y in rng.choice(levels, size=min(len(levels), 2 if tag.has("multiple") else 1), replace=False):
        x = float(scene.spine_x(y + 0.5 * scene.a.vert_period))
        scene.band(x, y + 0.5 * scene.a.vert_period, 2 * scene.spine_hw + 0.012, 0.009, 0.0, 0.5, target="density")


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


@_draw_rule("fractures, bone", "deformity", "ribs", "bone and bones", "dislocations", "shoulder", "humerus", "clavicle")
def _rule_bones(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    name = tag.name
    if name in ("shoulder", "dislocations", "humerus") or tag.has("humerus", "shoulder"):
        _shoulder(scene, tag, rng)
        return
    if tag.has("thoracic vertebrae", "lumbar vertebrae", "spine") or (name == "deformity" and not tag.has("ribs", "clavicle", "thorax", "lung", "breast", "sternum", "trachea", "mediastinum", "hilum")):
        _compressed_vertebra(scene, tag, rng)
        return
    if tag.has("clavicle") or name == "clavicle":
        side = _pick_sides(tag, rng)[0]
        curve = scene.clavicle[side]
        j = int(rng.integers(20, 40))
        x, y = curve[j]
        scene.band(x, y, 0.04, 0.0035, math.pi / 2 + 0.3, 0.35, target="lucent")
        sl, val = scene.ellipse(x + SIGN[side] * 0.01, y + 0.008, 0.02, 0.01, profile="sphere")
        scene.bones[sl] += 0.2 * val
        return
    if name == "deformity" and tag.has("lung", "hilum", "mediastinum", "trachea"):
        side = _pick_sides(tag, rng)[0]
        _streaks(scene, side, "hilum", rng, 3, 0.6)
        return
    if name == "deformity" and tag.has("breast"):
        side = _pick_sides(tag, rng)[0]
        g = scene.lungs[side]
        x, y = g.point(0.8, 0.6)
        sl, val = scene.ellipse(x, y, 0.08, 0.05, profile="sphere")
        scene.density[sl] += 0.15 * val
        return
    sides = _pick_sides(tag, rng, "both" if tag.has("bilateral") else "random")
    healed = tag.has("healed", "chronic") or name == "deformity"
    n = int(rng.integers(2, 4)) if tag.has("multiple") else 1
    for side in sides:
        for _ in range(n):
            _rib_fracture(scene, side, rng, healed)


def _shoulder(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    for side in _pick_sides(tag, rng, "both" if tag.has("degenerative") else "random"):
        hx, hy = scene.humeral_head[side]
        if tag.name == "dislocations":
            sl, val = scene.ellipse(hx - SIGN[side] * 0.03, hy + 0.06, 0.06, 0.065, profile="sphere")
            scene.bones[sl] += 0.3 * val
        else:
            sl, val = scene.ellipse(hx, hy, 0.06, 0.065, profile="ring")
            scene.bones[sl] += 0.35 * val
            sl, val = scene.ellipse(hx + SIGN[side] * 0.02, hy + 0.055, 0.012, 0.008, profile="sphere")
            scene.bones[sl] += 0.4 * val


# --- mediastinum, abdomen, soft tissue ---------------------------------------------------------


@_draw_rule("aorta", "aorta, thoracic", "atherosclerosis", "aortic aneurysm")
def _rule_aortic_wall(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "atherosclerosis" or tag.has("calcified", "atherosclerosis", "calcinosis"):
        _aortic_calcification(scene, rng)
        if tag.name == "atherosclerosis" and not tag.has("aorta", "aorta, thoracic"):
            cx, cy, rr, rl, ry = scene.heart_geometry()
            scene.stroke(np.array([(cx + rl * 0.2, cy - ry * 0.45), (cx + rl * 0.45, cy - ry * 0.2)]), 0.4, FINE, target="density")


@_draw_rule("hernia, hiatal")
def _rule_hiatal_hernia(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    """A retrocardiac soft-tissue mass holding an air-fluid level."""
    cx, cy, rr, rl, ry = scene.heart_geometry()
    r = 0.045 * min(max(tag.severity, 0.8), 1.4)
    x, y = MIDLINE + scene.a.shift + 0.015, cy + 0.0
    sl, val = scene.ellipse(x, y, r * 1.2, r, profile="flat")
    scene.density[sl] += 0.08 * val
    sl, X, Y = scene.box(x, y, r * 1.2, r)
    rho = np.sqrt(((X - x) / (r * 1.05)) ** 2 + ((Y - y) / (r * 0.88)) ** 2)
    air = _ramp((1.0 - rho) / 0.08) * _ramp((y + 0.15 * r - Y) / scene.e)
    scene.lucent[sl] += 0.38 * air


@_draw_rule("hernia, diaphragmatic", "colonic interposition", "pneumoperitoneum", "cholelithiasis")
def _rule_abdomen(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.name == "pneumoperitoneum":
        for side in (RIGHT,) if not tag.sides else tag.sides:
            g = scene.lungs[side]
            sl, X, Y = scene.box(0.5 * (g.x_medial + g.x_wall), g.y_cp, abs(g.x_wall - g.x_medial) / 2 + 0.02, 0.12)
            top = g.dome(X) + 0.008
            crescent = _ramp((Y - top) / scene.e) * _smooth((top + 0.03 - Y) / 0.012)
            r = (X - g.x_medial) / (g.x_wall - g.x_medial)
            scene.lucent[sl] += 0.45 * crescent * _smooth(r / 0.15) * _smooth((1 - r) / 0.1)
        return
    if tag.name == "cholelithiasis":
        g = scene.lungs[RIGHT]
        for _ in range(4):
            _nodule(scene, g.x_medial - 0.08 + rng.uniform(-0.02, 0.02), g.y_cp + 0.1 + rng.uniform(-0.02, 0.02), 0.008, 0.0, 0.5)
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


@_draw_rule("subcutaneous emphysema", "mediastinal emphysema")
def _rule_gas_streaks(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    a = scene.a
    if tag.name == "mediastinal emphysema":
        for s in (-1, 1):
            ys = np.linspace(a.y_top, a.y_top + 0.4, 10)
            scene.stroke(np.stack([MIDLINE + s * (a.med_w + 0.004) + 0.0 * ys, ys], 1), 0.3, LINE, target="lucent")
        return
    for side in _pick_sides(tag, rng, "both"):
        s = SIGN[side]
        for _ in range(6):
            x = MIDLINE + s * (a.tw + 0.03 + rng.uniform(0, a.body_margin * 0.6))
            y = rng.uniform(a.y_top, a.y_top + 0.5)
            pts = [(x, y), (x + s * rng.uniform(-0.01, 0.01), y + rng.uniform(0.04, 0.08))]
            scene.stroke(np.array(pts), 0.35, LINE, target="lucent")


@_draw_rule("epicardial fat")
def _rule_epicardial_fat(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    cx, cy, rr, rl, ry = scene.heart_geometry()
    for side in _pick_sides(tag, rng, "left"):
        x = cx + (rl + 0.015 if side == LEFT else -rr - 0.015)
        sl, val = scene.ellipse(x, cy + 0.02, 0.035, 0.035, profile="sphere")
        scene.add_occlude(sl, 0.7 * val)


@_draw_rule("lung")
def _rule_lung_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("azygos lobe"):
        g = scene.lungs[RIGHT]
        tx, ty = scene.carina
        pts = [(g.x_apex + 0.02, g.y_top + 0.01), (g.x_medial - 0.03, ty - 0.08), (g.x_medial - 0.005, ty - 0.02)]
        scene.stroke(_catmull_rom(pts, 12), 0.25, FINE, target="fill")
        sl, val = scene.ellipse(g.x_medial - 0.01, ty - 0.015, 0.012, 0.008, profile="sphere")
        scene.add_fill(sl, val)
    if tag.has("interstitial") or (tag.has("prominent") and tag.has("markings")):
        _reticular(scene, _pick_sides(tag, rng, "both"), tag.zone, 0.4)
    if tag.has("obscured", "blunted"):
        for side in _pick_sides(tag, rng, "both"):
            _effusion(scene, side, 0.13, rng)


@_draw_rule("pneumonectomy")
def _rule_pneumonectomy_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    side = _pick_sides(tag, rng)[0]
    scene.add_fill(slice(None), 0.95 * scene.lung_m[side])
    hx, hy = scene.hilum(side)
    _clips(scene, hx, hy, rng, 3, 0.015)


@_draw_rule("volume loss")
def _rule_volume_loss_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    for side in _pick_sides(tag, rng):
        _patch(scene, side, tag.zone or "upper", rng, 0.5, 0.06)


@_draw_rule("kyphosis")
def _rule_kyphosis_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    _compressed_vertebra(scene, Tag(text="", name="thoracic vertebrae", quals=frozenset({"multiple"})), rng)


# ----------------------------------------------------------------------------- public API


def render_phantom(tags: Sequence[str], seed: int = 0, study_id: str = "", size: int = DEFAULT_SIZE) -> np.ndarray:
    """The uint8 (size, size) PA phantom for a study's tags, deterministic in (seed, study_id, tags).

    Normal anatomy, exposure and noise depend only on (seed, study_id); each tag draws from its
    own stream, so ``render_phantom(["Pleural Effusion/left"], s, i)`` differs from
    ``render_phantom(["normal"], s, i)`` only where the effusion is.
    """
    parsed = [parse_tag(t) for t in tags]
    anat = sample_anatomy(stream_rng(seed, study_id, "anatomy"))
    seen: Counter[str] = Counter()
    keyed = []
    for tag in parsed:
        keyed.append((tag, seen[tag.text]))
        seen[tag.text] += 1
    for tag, k in keyed:
        rule = _ANATOMY_RULES.get(tag.name)
        if rule is not None:
            rule(anat, tag, stream_rng(seed, study_id, "tag-anatomy", tag.text, k))
    scene = Scene(anat, size, stream_rng(seed, study_id, "noise"), stream_rng(seed, study_id, "vessels"))
    scene.draw_anatomy()
    for tag, k in keyed:
        rule = _DRAW_RULES.get(tag.name)
        if rule is not None:
            rule(scene, tag, stream_rng(seed, study_id, "tag-draw", tag.text, k))
    return scene.finish()


def render_study(study: Study, seed: int = 0, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The phantom of one IU study (its MeSH major tags drive the findings)."""
    return render_phantom(study.tags, seed=seed, study_id=study.study_id, size=size)


def encode_png(image: np.ndarray) -> bytes:
    """8-bit grayscale PNG with fixed encoder settings and no metadata (byte-stable).

    zlib level 1: noise-heavy films barely compress better at 6, which costs twice the time."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", compress_level=1, optimize=False)
    return buf.getvalue()


def render_study_png(study: Study, seed: int = 0, size: int = DEFAULT_SIZE) -> bytes:
    return encode_png(render_study(study, seed=seed, size=size))
