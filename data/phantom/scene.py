"""The scene: density layers of one phantom, its normal anatomy, and the exposure that makes pixels.

Rules draw findings into a ``Scene`` (fill, occlusion, density, lucency and blurred stroke layers);
``finish`` composes, exposes, positions and adds noise.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from data.phantom.anatomy import Anatomy, LungGeom
from data.phantom.constants import AIR, DENSIFY, LEFT, LINE, MIDLINE, REF_DENSITY, RIB, RIGHT, SIDES, SIGN, VESSEL
from data.phantom.curves import _catmull_rom, _ramp, _resample, _smooth, _upsample


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
