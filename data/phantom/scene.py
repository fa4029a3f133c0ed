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
from data.phantom.constants import AIR, LEFT, LINE, MIDLINE, REF_DENSITY, RIGHT
from data.phantom.curves import ramp, resample, smooth, upsample
from data.phantom.normal import NormalAnatomy


class Scene(NormalAnatomy):
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
            f = upsample(f, n)
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
            val = np.maximum(val, ramp((1.0 - rho) / edge) * 0.25 * (rho < 1.0 + edge))
        elif profile == "ring":
            w = max(1.2 / self.N / min(rx, ry), 0.18)
            val = np.exp(-(((rho - 1.0) / w) ** 2))
        else:
            val = ramp((1.0 - rho) / edge)
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
        px, py, t, cum = resample(pts, 0.4 / self.N, with_param=True)
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
        val = smooth((0.5 * length - np.abs(u)) / (0.25 * length)) * np.exp(-((v / thick) ** 2))
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
        air *= 1.0 - 0.16 * smooth((y - a.y_top - 0.55 * h) / (0.45 * h)) - 0.1 * smooth((a.y_top + 0.12 * h - y) / (0.12 * h))
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
