"""Findings that change the anatomy before drawing (heart size, inflation, diaphragm, spine, shift,
mediastinum, exposure), with the draw halves of those that also draw something."""
from __future__ import annotations

import numpy as np

from data.phantom.anatomy import Anatomy
from data.phantom.constants import FINE, OTHER, RIGHT, SIDES, SIGN
from data.phantom.curves import catmull_rom
from data.phantom.rules.registry import anatomy_rule, draw_rule
from data.phantom.rules.shapes import draw_clips, draw_compressed_vertebra, draw_effusion, draw_patch, draw_reticular
from data.phantom.scene import Scene
from data.phantom.tags import Tag, pick_sides


_CTR = {"borderline": 0.545, "mild": 0.58, "moderate": 0.63, "large": 0.67, "severe": 0.67}


def _cardiomegaly(a: Anatomy, tag: Tag, rng: np.random.Generator, default: float = 0.61) -> None:
    levels = [_CTR[q] for q in tag.quals if q in _CTR]
    ctr = (max(levels) if levels else default) + rng.uniform(-0.008, 0.008)
    a.ctr = max(a.ctr, ctr)


@anatomy_rule("cardiomegaly", "heart atria", "heart ventricles")
def _rule_cardiomegaly(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    _cardiomegaly(a, tag, rng)


@anatomy_rule("cardiac shadow", "heart")
def _rule_cardiac_shadow(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("enlarged", "prominent") or not tag.quals:
        _cardiomegaly(a, tag, rng)


@anatomy_rule("pericardial effusion")
def _rule_pericardial(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.ctr = max(a.ctr, 0.64 + rng.uniform(-0.01, 0.01))
    a.heart_right_frac = 0.45
    a.heart_ry *= 1.15
    a.heart_round = 1.0


@anatomy_rule("heart failure")
def _rule_heart_failure(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.ctr = max(a.ctr, 0.6)
    a.hilum_scale *= 1.3
    a.upper_vessel_gain *= 1.5


@anatomy_rule("hypovolemia")
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


@anatomy_rule("lung")
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
        for side in pick_sides(tag, rng, "both"):
            a.lucency[side] = max(a.lucency[side], 1.2)


@anatomy_rule("emphysema", "pulmonary emphysema", "pulmonary disease, chronic obstructive", "bullous emphysema", "cystic fibrosis")
def _rule_emphysema(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    _hyperinflate(a, tag.severity, 0.16 * tag.severity)
    a.peripheral_vessel_gain = 0.45


@anatomy_rule("lung, hyperlucent")
def _rule_hyperlucent(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    for side in pick_sides(tag, rng, "both"):
        a.lucency[side] = max(a.lucency[side], 1.22)
    a.peripheral_vessel_gain = min(a.peripheral_vessel_gain, 0.6)


@anatomy_rule("diaphragm")
def _rule_diaphragm(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("elevated"):
        for side in pick_sides(tag, rng, "right"):
            a.y_cp[side] -= 0.075 * tag.severity
            a.dome_h[side] *= 1.2
    if tag.has("flattened"):
        for side in pick_sides(tag, rng, "both"):
            a.dome_h[side] *= 0.3
            a.y_cp[side] = min(0.9, a.y_cp[side] + 0.03)


@anatomy_rule("diaphragmatic eventration")
def _rule_eventration(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    for side in pick_sides(tag, rng, "right"):
        a.y_cp[side] -= 0.04 * tag.severity
        a.dome_h[side] *= 1.9


@anatomy_rule("volume loss")
def _rule_volume_loss(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    for side in pick_sides(tag, rng):
        a.y_cp[side] -= 0.05
        a.shift += 0.015 * SIGN[side]


@anatomy_rule("scoliosis")
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


@anatomy_rule("kyphosis")
def _rule_kyphosis(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.vert_period *= 0.85
    a.clav_dy -= 0.03 * tag.severity
    a.rib_rise *= 0.5
    a.rib_drop *= 1.4


@anatomy_rule("shift", "trachea")
def _rule_shift(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    side = pick_sides(tag, rng)[0]
    a.shift += 0.035 * SIGN[side] * min(tag.severity, 1.2)


@anatomy_rule("pneumonectomy")
def _rule_pneumonectomy(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    side = pick_sides(tag, rng)[0]
    a.shift += 0.06 * SIGN[side]
    a.y_cp[side] -= 0.08


@anatomy_rule("mediastinum", "adipose tissue")
def _rule_mediastinum(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("prominent", "enlarged", "widened") or tag.name == "adipose tissue" or not tag.quals:
        a.med_w *= 1.5
        a.knob_r *= 1.15


@anatomy_rule("aorta", "aorta, thoracic", "aortic aneurysm")
def _rule_aorta(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    big = tag.name == "aortic aneurysm"
    if big or tag.has("tortuous", "prominent", "enlarged", "dilatation", "ectatic") or not tag.quals:
        sev = 1.8 if big else tag.severity
        a.knob_r *= 1.0 + 0.35 * sev
        a.aorta_bulge = max(a.aorta_bulge, 0.022 * sev)


@anatomy_rule("pulmonary artery", "hypertension, pulmonary")
def _rule_pulmonary_artery(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.hilum_scale = max(a.hilum_scale, 1.6)
    a.pa_bulge = 0.015


@anatomy_rule("lymph nodes", "sarcoidosis")
def _rule_nodes(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.hilum_scale = max(a.hilum_scale, 1.7)


@anatomy_rule("pulmonary congestion")
def _rule_congestion(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.hilum_scale = max(a.hilum_scale, 1.35 + 0.2 * (tag.severity - 1))
    a.upper_vessel_gain *= 1.8


@anatomy_rule("pulmonary edema")
def _rule_edema_anat(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.hilum_scale = max(a.hilum_scale, 1.3)
    a.upper_vessel_gain *= 1.4


@anatomy_rule("mastectomy")
def _rule_mastectomy(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    side = pick_sides(tag, rng)[0]
    a.breast = max(a.breast, 0.12)
    a.breast_sides = (OTHER[side],)


@anatomy_rule("bone diseases, metabolic", "osteoporosis")
def _rule_osteopenia(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.bone *= 0.55


@anatomy_rule("funnel chest", "pectus carinatum")
def _rule_pectus(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.heart_dx += 0.03
    a.rib_drop *= 1.5


@anatomy_rule("technical quality of image unsatisfactory")
def _rule_poor_quality(a: Anatomy, tag: Tag, rng: np.random.Generator) -> None:
    a.noise = max(a.noise * 2.2, 0.04)
    a.blur *= 1.8
    a.hi += 0.12
    a.lo -= 0.08
    a.rot *= 1.8
    a.zoom *= rng.uniform(1.06, 1.14)


# --- draw halves ------------------------------------------------------------------------------


@draw_rule("lung")
def _rule_lung_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    if tag.has("azygos lobe"):
        g = scene.lungs[RIGHT]
        tx, ty = scene.carina
        pts = [(g.x_apex + 0.02, g.y_top + 0.01), (g.x_medial - 0.03, ty - 0.08), (g.x_medial - 0.005, ty - 0.02)]
        scene.stroke(catmull_rom(pts, 12), 0.25, FINE, target="fill")
        sl, val = scene.ellipse(g.x_medial - 0.01, ty - 0.015, 0.012, 0.008, profile="sphere")
        scene.add_fill(sl, val)
    if tag.has("interstitial") or (tag.has("prominent") and tag.has("markings")):
        draw_reticular(scene, pick_sides(tag, rng, "both"), tag.zone, 0.4)
    if tag.has("obscured", "blunted"):
        for side in pick_sides(tag, rng, "both"):
            draw_effusion(scene, side, 0.13, rng)


@draw_rule("pneumonectomy")
def _rule_pneumonectomy_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    side = pick_sides(tag, rng)[0]
    scene.add_fill(slice(None), 0.95 * scene.lung_m[side])
    hx, hy = scene.hilum(side)
    draw_clips(scene, hx, hy, rng, 3, 0.015)


@draw_rule("volume loss")
def _rule_volume_loss_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    for side in pick_sides(tag, rng):
        draw_patch(scene, side, tag.zone or "upper", rng, 0.5, 0.06)


@draw_rule("kyphosis")
def _rule_kyphosis_draw(scene: Scene, tag: Tag, rng: np.random.Generator) -> None:
    draw_compressed_vertebra(scene, Tag(text="", name="thoracic vertebrae", quals=frozenset({"multiple"})), rng)
