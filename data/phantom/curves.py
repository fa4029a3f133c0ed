"""Small array helpers: soft edges, smooth curves through points, polyline resampling, resizing."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def ramp(v):
    """Linear soft edge: 0 below -1, 1 above 1."""
    return np.minimum(np.maximum(0.5 + 0.5 * v, 0.0), 1.0)


def smooth(v):
    """Smoothstep on [0, 1]."""
    v = np.minimum(np.maximum(v, 0.0), 1.0)
    return v * v * (3.0 - 2.0 * v)


def catmull_rom(points: Sequence[tuple[float, float]], per_segment: int = 24) -> np.ndarray:
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


def resample(pts: np.ndarray, spacing: float, with_param: bool = False):
    """Points along a polyline at (at most) ``spacing`` apart."""
    pts = np.asarray(pts, dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    m = max(2, int(cum[-1] / spacing) + 2)
    t = np.linspace(0.0, cum[-1], m)
    px, py = np.interp(t, cum, pts[:, 0]), np.interp(t, cum, pts[:, 1])
    return (px, py, t, cum) if with_param else (px, py)


def upsample(f: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize of a square array to n x n by index gathering (no BLAS, exact order)."""
    m = f.shape[0]
    pos = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0.0, m - 1.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), m - 2)
    w = (pos - i0)
    rows = f[i0] * (1.0 - w)[:, None] + f[i0 + 1] * w[:, None]
    return rows[:, i0] * (1.0 - w)[None, :] + rows[:, i0 + 1] * w[None, :]
