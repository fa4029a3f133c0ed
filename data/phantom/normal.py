"""The normal anatomy of a phantom: body, heart and mediastinum, airways, spine, ribs, shoulders,
breasts, abdomen and vessels, drawn into a ``Scene``'s layers before any finding.

A mixin of ``data.phantom.scene.Scene`` (moved out of it whole, so the pixels are the same: the golden
hashes of ``data.phantom.golden`` check it); it uses the scene's primitives and geometry.
"""
from __future__ import annotations

import math

import numpy as np

from data.phantom.anatomy import LungGeom
from data.phantom.constants import DENSIFY, LEFT, MIDLINE, RIB, RIGHT, SIDES, SIGN, VESSEL
from data.phantom.curves import catmull_rom, ramp, resample, smooth


class NormalAnatomy:
    """``Scene.draw_anatomy`` and its parts."""

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
            self.lung_m[side] = ramp(self.sdf[side] / self.e)
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
        bw = neck + (bw_sh - neck) * smooth((y - y_neck) / 0.13) - (bw_sh - bw_chest) * smooth((y - a.y_top - 0.02) / 0.2)
        bw = bw - 0.03 * smooth((y - 0.82) / 0.18)
        r = np.abs(self.X - MIDLINE) / bw[:, None]
        thick = np.sqrt(np.sqrt(np.maximum(1.0 - r * r, 0.0)))  # elliptic cross-section, flattened
        edge = ramp((1.0 - r) * (bw / self.e)[:, None])
        level = 0.8 + 0.2 * smooth((y - y_neck) / 0.12)
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
        heart = ramp((X - xr) / self.e) * ramp((xl - X) / self.e) * ramp((Y - (cy - ry)) / (4 * self.e))
        heart = heart * ramp((cy + 0.12 - Y) / self.e)
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
        self.add_occlude(sl, ramp((edge - X) / self.e) * (X > mid) * (Y >= ky))
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
        trachea = np.exp(-(((X - tx) / w) ** 4)) * smooth((carina_y - Y) / 0.03)
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
        body = smooth((hw - np.abs(dx)) / 0.006)
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
            self._rib_strokes(xs, ys, 0.085 * smooth(v / 0.15) * smooth((1.0 - v) / 0.05))
            # Anterior ribs: from each lateral end, medially and downwards, fainter.
            sel = slice(1, 9)
            d_lat = np.abs(xs[sel, -1:] - MIDLINE)
            d_end = 0.1 + 0.005 * np.arange(1, 9, dtype=np.float64)[:, None]
            d = d_lat + (d_end - d_lat) * v
            ya = ys[sel, -1:] + 0.28 * (d_lat - d) + 0.5 * (d_lat - d) ** 2
            self._rib_strokes(MIDLINE + s * d, ya, 0.05 * smooth(v / 0.03) * smooth((1.0 - v) / 0.3))

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
            curve = catmull_rom(pts, 16)
            self.clavicle[side] = curve
            cx_, cy_ = resample(curve, 0.6 / self.N)
            v = np.linspace(0.0, 1.0, cx_.size)
            self._rib_strokes(cx_[None, :], cy_[None, :], (0.17 * smooth(v / 0.05) * smooth((1.0 - v) / 0.1))[None, :])
            # Humeral head and glenoid at the top corner.
            hx, hy = MIDLINE + s * (a.tw + a.body_margin * 0.5 + 0.075), y_med - 0.035
            sl, val = self.ellipse(hx, hy, 0.055, 0.06, profile="sphere")
            self.bones[sl] += 0.2 * val
            self.humeral_head[side] = (hx, hy)
            # Scapular lateral border: a faint oblique line over the upper lateral lung.
            spts = [(hx - s * 0.06, hy + 0.04), (MIDLINE + s * (a.tw - 0.03), a.y_top + 0.32 * a.lung_height)]
            self.stroke(catmull_rom(spts, 8), 0.06, RIB, target="bones")

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
            val = smooth((1.0 - rho) / 0.5) * smooth((cy + 0.11 - Y) / 0.02)
            self.density[sl] += a.breast * val

    def _draw_abdomen(self) -> None:
        a = self.a
        if a.bubble > 0:
            g = self.lungs[LEFT]
            x = g.x_medial + 0.45 * (g.x_wall - g.x_medial)
            y = float(g.dome(x)) + 0.045
            sl, X, Y = self.box(x, y, 0.07, 0.05)
            rho = np.sqrt(((X - x) / 0.055) ** 2 + ((Y - y) / 0.03) ** 2)
            val = smooth((1 - rho) / 0.3) * smooth((y + 0.012 - Y) / 0.004)
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
