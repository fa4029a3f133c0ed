"""Per-study anatomy (habitus, organ geometry, exposure) and the outline of one lung."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.phantom.constants import LEFT, RIGHT, SIDES, SIGN


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
