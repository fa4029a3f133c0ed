"""The phantom renderer: deterministic, varied, and drawing each finding where the report puts it.

Findings are measured from pixels as the difference between a study rendered with a finding and
the same study rendered as "normal" (same seed and id, hence the same anatomy, exposure and noise).
PA convention: the patient's LEFT is on the IMAGE RIGHT.
"""
from __future__ import annotations

import hashlib
import io
import itertools

import numpy as np
import pytest
from PIL import Image

from data.phantom import SIGN, encode_png, known_findings, parse_tag, render_phantom, render_study
from data.records import Study

IDS = ("CXR-T1", "CXR-T2", "CXR-T3")
IMAGE_LEFT = (0.05, 0.47)  # patient's right
IMAGE_RIGHT = (0.53, 0.95)  # patient's left
LOWER = (0.55, 0.85)
UPPER = (0.08, 0.45)


def _diff(tags, study_id, seed=0, size=256):
    base = render_phantom(["normal"], seed=seed, study_id=study_id, size=size).astype(np.float64)
    return render_phantom(tags, seed=seed, study_id=study_id, size=size).astype(np.float64) - base


def _zone_mean(img, rows, cols):
    n = img.shape[0]
    return float(img[int(rows[0] * n) : int(rows[1] * n), int(cols[0] * n) : int(cols[1] * n)].mean())


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_png_bytes():
    tags = ["Cardiomegaly/mild", "Pleural Effusion/left/small", "Catheters, Indwelling/right"]
    a = encode_png(render_phantom(tags, seed=3, study_id="CXR42"))
    b = encode_png(render_phantom(tags, seed=3, study_id="CXR42"))
    assert a == b


# Pixels of one fixed rendering. Every machine must reproduce them bit for bit; when the renderer
# is changed on purpose, update this hash AND bump PHANTOM_VERSION, then rewrite the golden hashes
# (python -m data.phantom.golden --write; cached demos then re-render).
GOLDEN_TAGS = ["Cardiomegaly/mild", "Pleural Effusion/left/small", "Catheters, Indwelling/right", "Opacity/lung/upper lobe/right"]
GOLDEN_SHA256 = "e50d00fb57cb6b1608b2a2aaba3e77af8b7d735064794c6e289de6c12b8a7f5f"


def test_rendering_matches_the_golden_pixels():
    img = render_phantom(GOLDEN_TAGS, seed=0, study_id="CXR-golden", size=128)
    assert hashlib.sha256(img.tobytes()).hexdigest() == GOLDEN_SHA256, (
        "phantom pixels changed: if intended, update GOLDEN_SHA256, bump PHANTOM_VERSION, rewrite the golden"
    )


def test_other_seed_or_study_gives_another_image():
    a = render_phantom(["normal"], seed=0, study_id="CXR42").astype(int)
    b = render_phantom(["normal"], seed=1, study_id="CXR42").astype(int)
    c = render_phantom(["normal"], seed=0, study_id="CXR43").astype(int)
    assert np.abs(a - b).mean() > 5
    assert np.abs(a - c).mean() > 5


def test_rendering_order_does_not_matter():
    jobs = [(["normal"], "CXR1"), (["Pneumothorax/right"], "CXR2"), (["Scoliosis"], "CXR3")]
    forward = [render_phantom(t, seed=0, study_id=i) for t, i in jobs]
    backward = [render_phantom(t, seed=0, study_id=i) for t, i in reversed(jobs)][::-1]
    for f, b in zip(forward, backward):
        assert np.array_equal(f, b)


def test_output_is_uint8_square_of_requested_size_and_png_mode_L():
    img = render_phantom(["normal"], seed=0, study_id="x", size=128)
    assert img.shape == (128, 128) and img.dtype == np.uint8
    decoded = Image.open(io.BytesIO(encode_png(img)))
    assert decoded.mode == "L" and decoded.size == (128, 128)
    assert np.array_equal(np.asarray(decoded), img)


def test_render_study_uses_tags_and_study_id():
    s = Study(study_id="CXR7", patient_id="CXR7", image_paths=(), findings="", impression="", label=1, tags=("Pneumothorax/left",))
    assert np.array_equal(render_study(s, seed=2), render_phantom(["Pneumothorax/left"], seed=2, study_id="CXR7"))


# ----------------------------------------------------------------------------- normal variation


def test_normal_images_vary_across_studies():
    imgs = [render_phantom(["normal"], seed=0, study_id=f"CXR{i}").astype(np.float64) for i in range(1, 6)]
    for a, b in itertools.combinations(imgs, 2):
        assert np.abs(a - b).mean() > 8.0


def test_normal_looks_like_a_chest_film():
    img = render_phantom(["normal"], seed=0, study_id="CXR1").astype(np.float64)
    lungs = (_zone_mean(img, (0.3, 0.5), (0.15, 0.35)) + _zone_mean(img, (0.3, 0.5), (0.65, 0.85))) / 2
    mediastinum = _zone_mean(img, (0.3, 0.5), (0.47, 0.53))
    abdomen = _zone_mean(img, (0.9, 0.98), (0.3, 0.7))
    assert lungs + 60 < mediastinum  # air dark, soft tissue bright
    assert lungs + 60 < abdomen


# ----------------------------------------------------------------------------- findings by side and zone


@pytest.mark.parametrize("side, hit, miss", [("left", IMAGE_RIGHT, IMAGE_LEFT), ("right", IMAGE_LEFT, IMAGE_RIGHT)])
def test_pleural_effusion_brightens_only_that_lower_zone(side, hit, miss):
    for sid in IDS:
        d = _diff([f"Pleural Effusion/{side}/small"], sid)
        assert _zone_mean(d, LOWER, hit) > 4.0
        assert abs(_zone_mean(d, LOWER, miss)) < 0.5
        assert abs(_zone_mean(d, UPPER, miss)) < 0.5


def test_larger_effusion_is_brighter_and_higher():
    d_small = _diff(["Pleural Effusion/right/small"], "CXR-T1")
    d_large = _diff(["Pleural Effusion/right/large"], "CXR-T1")
    assert _zone_mean(d_large, LOWER, IMAGE_LEFT) > _zone_mean(d_small, LOWER, IMAGE_LEFT) + 5
    assert _zone_mean(d_large, (0.4, 0.55), IMAGE_LEFT) > _zone_mean(d_small, (0.4, 0.55), IMAGE_LEFT) + 3


def _heart_width(img: np.ndarray) -> int:
    """Widest run of bright (non-lung) pixels through the centre column, scanning down the heart
    rows until a border jumps (a hemidiaphragm reached: below it everything is bright)."""
    n = img.shape[0]
    band = img[int(0.4 * n) : int(0.8 * n), int(0.15 * n) : int(0.85 * n)].astype(np.float64)
    lung, soft = np.percentile(band, 10), np.percentile(band, 90)
    bright = band > (lung + soft) / 2
    centre = bright.shape[1] // 2
    best, prev = 0, None
    for row in bright:
        if not row[centre]:
            continue
        left = centre - int(np.argmin(row[centre::-1])) if not row[: centre + 1].all() else 0
        right = centre + int(np.argmin(row[centre:])) if not row[centre:].all() else row.size
        if prev is not None and (abs(left - prev[0]) > 6 or abs(right - prev[1]) > 6):
            break
        prev = (left, right)
        best = max(best, right - left)
    return best


@pytest.mark.parametrize("sid", IDS)
def test_cardiomegaly_widens_the_heart_by_severity(sid):
    widths = [_heart_width(render_phantom([tag], seed=0, study_id=sid)) for tag in ("normal", "Cardiomegaly/mild", "Cardiomegaly/severe")]
    assert widths[0] + 8 < widths[1] < widths[2] - 8
    # normal cardiothoracic ratio ~0.41-0.49 of the ~0.67-0.79 thorax: about a third of the film
    assert 0.25 * 256 < widths[0] < 0.45 * 256


@pytest.mark.parametrize("side, hit, miss", [("right", IMAGE_LEFT, IMAGE_RIGHT), ("left", IMAGE_RIGHT, IMAGE_LEFT)])
def test_pneumothorax_darkens_that_apex_and_lateral_zone(side, hit, miss):
    for sid in IDS:
        d = _diff([f"Pneumothorax/{side}"], sid)
        assert _zone_mean(d, UPPER, hit) < -1.0
        assert abs(_zone_mean(d, UPPER, miss)) < 0.3
        # the lucent rim: many pixels much darker than before
        assert (d < -20).sum() > 150


def test_right_upper_lobe_opacity_brightens_right_upper_zone_only():
    for sid in IDS:
        d = _diff(["Opacity/lung/upper lobe/right"], sid)
        assert _zone_mean(d, UPPER, IMAGE_LEFT) > 2.5
        assert abs(_zone_mean(d, UPPER, IMAGE_RIGHT)) < 0.3
        assert abs(_zone_mean(d, LOWER, IMAGE_RIGHT)) < 0.3


def test_left_basal_atelectasis_and_airspace_disease_hit_the_left_base():
    for tag, rows in (("Pulmonary Atelectasis/base/left", LOWER), ("Airspace Disease/lung/base/left", LOWER), ("Opacity/lung/lingula", (0.45, 0.75))):
        d = _diff([tag], "CXR-T2")
        assert _zone_mean(d, rows, IMAGE_RIGHT) > 1.0, tag
        assert abs(_zone_mean(d, rows, IMAGE_LEFT)) < 0.3, tag


def test_bilateral_findings_hit_both_sides():
    d = _diff(["Pulmonary Atelectasis/base/bilateral"], "CXR-T3")
    assert _zone_mean(d, LOWER, IMAGE_LEFT) > 1.0 and _zone_mean(d, LOWER, IMAGE_RIGHT) > 1.0


def test_scoliosis_shifts_the_spine_towards_the_convex_side():
    """Convex to the patient's right = spine bowed to the IMAGE LEFT (and vice versa)."""
    n = 256
    rows, cols = slice(int(0.3 * n), int(0.55 * n)), slice(int(0.4 * n), int(0.6 * n))
    x = np.arange(cols.start, cols.stop)[None, :]
    for side, sign in (("right", -1), ("left", 1)):
        d = _diff([f"Scoliosis/thoracic vertebrae/{side}/moderate"], "CXR-T1")[rows, cols]
        gained, lost = np.clip(d, 0, None), np.clip(-d, 0, None)
        shift = (gained * x).sum() / gained.sum() - (lost * x).sum() / lost.sum()
        assert sign * shift > 4.0, (side, shift)


def test_devices_are_bright_and_on_the_named_side():
    d = _diff(["Implanted Medical Device/left"], "CXR-T1")
    assert (d[: 128, 128:] > 60).sum() > 100  # pacemaker box, upper image right
    assert (d[: 100, :110] > 60).sum() == 0
    d = _diff(["Catheters, Indwelling/right"], "CXR-T2")
    assert (d > 40).sum() > 60  # a bright thin line
    assert (d[:, :128] > 40).sum() > (d[:, 128:] > 40).sum()


def test_calcified_granuloma_is_a_small_very_bright_dot():
    d = _diff(["Calcified Granuloma/lung/upper lobe/left"], "CXR-T1")
    hot = d > 40
    assert 4 <= hot.sum() <= 120
    ys, xs = np.nonzero(hot)
    assert xs.min() > 128 and ys.max() < 140  # patient's left upper zone


def test_hyperinflation_lowers_the_diaphragm():
    base = render_phantom(["normal"], seed=0, study_id="CXR-T3").astype(np.float64)
    hyper = render_phantom(["Lung/hyperdistention"], seed=0, study_id="CXR-T3").astype(np.float64)
    band = (0.6, 0.8)
    assert _zone_mean(hyper, band, IMAGE_LEFT) < _zone_mean(base, band, IMAGE_LEFT) - 5


def test_edema_adds_bilateral_perihilar_haze():
    d = _diff(["Pulmonary Edema"], "CXR-T1")
    mid = (0.3, 0.6)
    assert _zone_mean(d, mid, (0.2, 0.45)) > 2 and _zone_mean(d, mid, (0.55, 0.8)) > 2


# ----------------------------------------------------------------------------- tags


def test_parse_tag_sides_and_zones():
    assert parse_tag("Pleural Effusion/left/small").sides == ("L",)
    assert parse_tag("Opacity/lung/base/bilateral").sides == ("R", "L")
    assert parse_tag("Calcified Granuloma/lung/lingula").sides == ("L",)
    assert parse_tag("Opacity/lung/middle lobe/right").zone == "middle"
    assert parse_tag("Pulmonary Atelectasis/base/left").zone == "lower"
    assert parse_tag("Cardiomegaly/mild").severity < 1.0 < parse_tag("Cardiomegaly/severe").severity
    assert SIGN["R"] < 0 < SIGN["L"]  # the patient's right is on the image left


def test_every_iu_tag_renders_and_frequent_abnormal_tags_show():
    """All 1,700+ distinct IU tags render without error; the frequent ones change the image."""
    from collections import Counter

    from data.iu_xray import load_iu_reports

    counts = Counter(t for s in load_iu_reports() for t in s.tags)
    tags = sorted(counts)
    for i in range(0, len(tags), 12):
        img = render_phantom(tags[i : i + 12], seed=0, study_id=f"all{i}", size=48)
        assert img.shape == (48, 48)
    ignorable = {"normal", "no indexing"}
    frequent = [t for t, c in counts.most_common() if c >= 8 and t.lower() not in ignorable]
    base = render_phantom(["normal"], seed=0, study_id="freq", size=96).astype(np.int64)
    invisible = [t for t in frequent if np.abs(render_phantom([t], seed=0, study_id="freq", size=96).astype(np.int64) - base).max() < 8]
    assert not invisible
    assert {"pleural effusion", "cardiomegaly", "pneumothorax", "opacity", "nodule"} <= known_findings()
