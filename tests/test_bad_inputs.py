"""Every bad input gets a clear message, and the next valid query still works.

Service level (the code behind the app's two search buttons) on a small real index: a
40-study offline demo, trained for 3 epochs and indexed once, cached under
``<cache>/tests/``. Then the file cases (checkpoints, indexes, data folders, CSV manifests)
through the engine loaders and the two command lines, train.py and ``python -m index``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

import train  # imported before any test patches model.factory (train binds create_backbone)
from tests.helpers_dicom import make_dicom
from tests.xdist_plan import one_builder
from webapp.presenters import ERROR, OK, WARNING

SMALL_N = 40


# ----------------------------------------------------------------------------- the small index
@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _loads(run: Path, index: Path) -> bool:
    """True when the cached run and index load with the current code and offline backbone."""
    try:
        from index.manifest import read_manifest
        from model.backbones import OFFLINE_BACKBONE_ID
        from model.checkpoint import load_checkpoint

        _, config = load_checkpoint(run, expected_backbone_id=OFFLINE_BACKBONE_ID)
        from trust.familiarity import FamiliarityModel
        from index.manifest import FAMILIARITY

        manifest = read_manifest(index)
        if "calibration" not in FamiliarityModel.load(index / FAMILIARITY).meta:
            return False  # fitted by older code
        return ((manifest.head_checksum, manifest.backbone_id) == (config["head_sha256"], OFFLINE_BACKBONE_ID)
                and FAMILIARITY in manifest.files and "frozen_images.npy" in manifest.files
                and (config.get("calibration") or {}).get("method") == "platt")
    except Exception:
        return False


def ensure_small_demo() -> tuple[Path, Path, Path]:
    """(data_dir, run_dir, index_dir) of a 40-study demo; built once, reused by every test module.

    Cached in ``<cache>/tests/`` like the full demo is in ``<cache>``; rebuilt when the
    phantoms were re-rendered or the cached run no longer loads.
    """
    from data.dataset import load_dataset
    from data.demo import build_demo_dataset
    from data.paths import cache_root

    root = cache_root() / "tests" / f"small-demo-{SMALL_N}"
    data, run, index = root / "data", root / "run", root / "index"
    with one_builder("small-demo"), _env(CXR_CACHE=str(root / "cache")):  # one xdist worker builds, others wait
        build_demo_dataset(out_dir=data, limit=SMALL_N, progress=False, workers=1)
        stale = (run / "config.json").is_file() and (data / "dataset.json").stat().st_mtime > (run / "config.json").stat().st_mtime
        if stale or not _loads(run, index):
            from pipeline.steps import index_run

            train.main(["--data", str(data), "--epochs", "3", "--no-maps", "--bootstrap", "0", "--quiet",
                        "--out", str(run)])
            index_run(run, index, load_dataset(data), progress=False)
    return data, run, index


@pytest.fixture(scope="module")
def service(small_demo, model):
    from index.engine import SearchEngine
    from webapp.service import RunInfo, SearchService

    _, run, index = small_demo
    return SearchService(SearchEngine.load(index, model), RunInfo.load(run), maps=None)


@pytest.fixture
def good_image(small_demo, tmp_path) -> Path:
    """A copy of an indexed phantom (the service deletes what it reads)."""
    source = sorted((small_demo[0] / "images").glob("*.png"))[0]
    return Path(shutil.copy(source, tmp_path / "good.png"))


def assert_still_serves(service, tmp_path: Path, small_demo, kinds: tuple[str, ...] = ("text", "image")) -> None:
    """A valid text query and/or a valid image query succeed."""
    if "text" in kinds:
        _, _, status, records, _ = service.search_text("right pleural effusion", 5, "any", "any", "any")
        assert status.startswith(OK), status
        assert len(records["hits"]) == 5
    if "image" in kinds:
        upload = Path(shutil.copy(sorted((small_demo[0] / "images").glob("*.png"))[1], tmp_path / "next.png"))
        _, gallery, _, _, status, records, _ = service.search_image(str(upload), 5, "any", "any", "any")
        assert status.startswith(OK), status
        assert len(gallery) == 5 and len(records["hits"]) == 5


# ----------------------------------------------------------------------------- upload builders
def _png(img: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", **kw)
    return buffer.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _chest(seed=0) -> Image.Image:
    """A phantom of the small demo: a radiograph the index knows, so the trust checks
    (trust.familiarity) pass it and only the file's oddity is tested (noise would be refused)."""
    from data.paths import cache_root

    images = sorted((cache_root() / "tests" / f"small-demo-{SMALL_N}" / "data" / "images").glob("*.png"))
    return Image.open(images[seed]).convert("L")


def _rgba_with_transparency() -> bytes:
    rgba = _chest().convert("RGBA")
    alpha = np.full((256, 256), 255, np.uint8)
    # a transparent top band; a whole quarter composited black reads as "unlike the index" to the offline
    # tower's 4x4-grid features (a fair warning, but not what this case is about: the transparency note)
    alpha[:16] = 0
    rgba.putalpha(Image.fromarray(alpha))
    return _png(rgba)


def huge_blank_png(width: int, height: int) -> bytes:
    """A valid all-black PNG of any size in a few hundred KB (rows of zeros deflate ~1000:1)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(1)
    rows_per_block = 500
    block = (b"\0" * (width + 1)) * rows_per_block
    parts = [compressor.compress(block) for _ in range(height // rows_per_block)]
    parts.append(compressor.compress((b"\0" * (width + 1)) * (height % rows_per_block)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _dicom_pixels() -> np.ndarray:
    return np.asarray(_chest().resize((128, 128)), np.uint16) * 16


BAD_UPLOADS = {
    # name: (file name, bytes builder, status prefix, phrase the user reads)
    "not_an_image_renamed_png": ("scan.png", lambda: b"%PDF-1.4 this is a report, not an image\n" * 20,
                                 WARNING, "not a readable image (expected PNG, JPEG or DICOM)"),
    "truncated_png": ("cut.png", lambda: _png(_chest())[:4000], WARNING, "PNG file is damaged or truncated"),
    "truncated_jpeg": ("cut.jpg", lambda: _jpeg(_chest())[:3000], WARNING, "JPEG file is damaged or truncated"),
    "empty_file": ("empty.png", lambda: b"", WARNING, "The file is empty."),
    "one_pixel": ("dot.png", lambda: _png(Image.new("L", (1, 1), 128)), WARNING, "only 1×1 pixels"),
    "decompression_bomb_20000px": ("huge.png", lambda: huge_blank_png(20_000, 20_000), WARNING,
                                   "too large to open safely (over 100 MP)"),
    "dicom_undecodable_compression": ("comp.dcm", lambda: make_dicom(_dicom_pixels(), compressed=True), WARNING,
                                      "compressed as 'JPEG 2000 Image Compression (Lossless Only)', which this "
                                      "server cannot decode"),
    "dicom_without_pixel_data": ("sr.dcm", lambda: make_dicom(None), WARNING, "has no image (no pixel data)"),
    "dicom_truncated_pixel_data": ("cut.dcm", lambda: make_dicom(_dicom_pixels())[:-5000], WARNING,
                                   "DICOM pixel data is damaged or truncated"),
}

ODD_BUT_VALID_UPLOADS = {
    # name: (file name, bytes builder, note the user reads next to the results)
    "png_16_bit": ("deep.png", lambda: _png(Image.fromarray(np.asarray(_chest(), np.uint16) * 257)),
                   "rescaled to 8 bits"),
    "rgba_with_transparency": ("alpha.png", _rgba_with_transparency, "Transparency removed"),
    "palette_png": ("palette.png", lambda: _png(_chest().convert("RGB").quantize(64)), None),
    "lateral_dicom_when_only_frontal_indexed": ("lat.dcm", lambda: make_dicom(_dicom_pixels(), view="LL"),
                                                f"{WARNING} This looks like a LL (non-frontal) view, but only frontal "
                                                "views are indexed"),
}


# ----------------------------------------------------------------------------- uploads
@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_gets_a_clear_message_and_the_service_keeps_serving(case, service, small_demo, tmp_path):
    name, build, prefix, phrase = BAD_UPLOADS[case]
    upload = tmp_path / name
    upload.write_bytes(build())
    preview, gallery, reports, probability, status, records, state = service.search_image(
        str(upload), 8, "any", "any", "any")
    print(f"{case}: {status}")
    assert status.startswith(prefix) and phrase in status, status
    assert preview is None and gallery == [] and records["hits"] == [] and state is None
    assert not upload.exists(), "a refused upload must be deleted too"
    assert_still_serves(service, tmp_path, small_demo, ("image",))


@pytest.mark.parametrize("case", sorted(ODD_BUT_VALID_UPLOADS))
def test_odd_but_valid_upload_is_searched_with_a_note(case, service, small_demo, tmp_path):
    name, build, note = ODD_BUT_VALID_UPLOADS[case]
    upload = tmp_path / name
    upload.write_bytes(build())
    preview, gallery, _, probability, status, records, _ = service.search_image(str(upload), 6, "any", "any", "any")
    print(f"{case}: {status!r}")
    assert status.startswith(f"{OK} 6 similar studies"), status
    if note:
        assert note in status
    assert preview.mode == "L" and len(gallery) == 6 and len(records["hits"]) == 6
    assert 0.0 <= records["abnormal_probability"] <= 1.0
    assert_still_serves(service, tmp_path, small_demo, ("image",))


def test_no_upload_asks_for_one(service, small_demo, tmp_path):
    status = service.search_image(None, 8, "any", "any", "any")[4]
    assert status.startswith("Drop a chest X-ray")
    assert_still_serves(service, tmp_path, small_demo)


def test_searching_again_after_the_upload_was_deleted_reuses_the_decoded_image(service, good_image):
    first = service.search_image(str(good_image), 4, "any", "any", "any")
    assert first[4].startswith(OK) and not good_image.exists()
    again = service.search_image(str(good_image), 4, "normal", "any", "any")  # same upload, new filter
    assert again[4].startswith(OK), again[4]
    assert all(h["label"] == "normal" for h in again[5]["hits"])


def test_two_requests_for_the_same_upload_at_once_both_succeed(service, good_image):
    """Gradio names uploads by content, so two users dropping one file share a path: the
    second request must not find it half-deleted by the first."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda _: service.search_image(str(good_image), 3, "any", "any", "any")[4], range(4)))
    assert all(s.startswith(OK) for s in statuses), statuses
    assert not good_image.exists()


def test_vanished_upload_never_seen_asks_to_upload_again(service, small_demo, tmp_path):
    status = service.search_image(str(tmp_path / "gone.png"), 4, "any", "any", "any")[4]
    assert status.startswith(WARNING) and "no longer on the server" in status and "upload it again" in status
    assert_still_serves(service, tmp_path, small_demo)


def test_decompression_bomb_is_refused_without_decoding_its_pixels(tmp_path):
    """Peak memory of a fresh interpreter while refusing a 20,000×20,000 PNG (400 MB decoded)."""
    import subprocess
    import sys

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(huge_blank_png(20_000, 20_000))
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[2])\n"
        "from data.images import load_radiograph, ImageLoadError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_radiograph(sys.argv[1]); print('decoded')\n"
        "except ImageLoadError as exc:\n    print('refused', exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", code, str(bomb), root], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    verdict, grown_mb = out.stdout.strip().splitlines()
    print(f"{verdict}; peak memory grew by {grown_mb} MB")
    assert verdict.startswith("refused") and int(grown_mb) < 50


# ----------------------------------------------------------------------------- text
LONG_QUERY = ("large right pleural effusion with adjacent compressive atelectasis " * 200)[:10_000]
TEXT_CASES = {
    # name: (query, status prefix, phrase the user reads)
    "empty": ("", WARNING, "Please type a findings phrase"),
    "whitespace_only": ("  \n\t \u3000 ", WARNING, "Please type a findings phrase"),
    "ten_thousand_characters": (LONG_QUERY, OK, "it was truncated to the text model's context of"),
    # The English text model cannot read these: searched, with the familiarity warning (issue 14)
    "cyrillic": ("правосторонний плевральный выпот", WARNING, "trained on English reports"),
    "chinese": ("右侧胸腔积液", WARNING, "trained on English reports"),
    "control_characters": ("pleural\x00 effusion\x1b[31m\u202e\u200b right", OK,
                           "Control and invisible formatting characters were removed"),
    "html_and_script_tags": ("<script>alert('x')</script><img src=x onerror=alert(1)> &quot;pleural effusion",
                             OK, "radiographs from"),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_text_query_edge_case_gets_a_clear_answer_and_the_service_keeps_serving(case, service, small_demo, tmp_path):
    query, prefix, phrase = TEXT_CASES[case]
    gallery, reports, status, records, state = service.search_text(query, 5, "any", "any", "any")
    print(f"{case}: {status!r}")
    assert status.startswith(prefix) and phrase in status, status
    if prefix == OK or case in ("cyrillic", "chinese"):
        assert len(gallery) == 5 and len(records["hits"]) == 5
        json.dumps(records)  # what the API returns is plain JSON
        if prefix == WARNING:
            assert records["familiarity"]["verdict"] == "unlike_index" and "radiology finding" in status
    else:
        assert gallery == [] and records["hits"] == [] and state is None
    assert "<" not in status and ">" not in status, "no markup in the status line"
    assert_still_serves(service, tmp_path, small_demo, ("text",))


def test_long_query_note_names_the_context_length(service):
    status = service.search_text(LONG_QUERY, 3, "any", "any", "any")[2]
    assert f"context of {service.context_length} tokens" in status and service.context_length > 0


def test_markup_in_a_query_is_shown_as_text_never_as_html(service):
    query = "<script>alert('x')</script><img src=x onerror=alert(1)> pleural effusion"
    _, reports, status, records, state = service.search_text(query, 5, "any", "any", "any")
    assert status.startswith(OK)
    for tag in ("<script", "<img", "onerror=alert(1)>"):
        assert tag not in reports, tag
    assert "<script" not in state["label"] and "&lt;script&gt;" in state["label"]  # plot hover text


def test_highlighting_never_splits_an_html_entity():
    from types import SimpleNamespace

    from webapp.presenters import highlight, report_cards

    assert highlight('say "quot" & <b>', ["quot", "b"]) == 'say &quot;<mark>quot</mark>&quot; &amp; &lt;<mark>b</mark>&gt;'
    hit = SimpleNamespace(rank=1, study_id="<i>x</i>", label_name="normal", score=0.5, view="PA", tags=("<b>",),
                          findings="<script>alert(1)</script>", impression="ok")
    html_out = report_cards([hit], lambda h: ["script"])
    assert "<script" not in html_out and "<i>" not in html_out and "&lt;<mark>script</mark>&gt;" in html_out


@pytest.mark.parametrize("k, label, phrase", [
    ("lots", "any", "number of results must be a whole number"),
    (8, "sick", "Unknown label filter"),
])
def test_bad_parameters_from_an_api_client_get_a_message(k, label, phrase, service, small_demo, tmp_path):
    status = service.search_text("cardiomegaly", k, label, "any", "any")[2]
    assert status.startswith(WARNING) and phrase in status, status
    assert_still_serves(service, tmp_path, small_demo)


def test_out_of_range_k_is_clamped_with_a_note(service):
    _, _, status, records, _ = service.search_text("cardiomegaly", 10_000, "any", "any", "any")
    assert status.startswith(OK) and "set to 100" in status
    assert len(records["hits"]) == SMALL_N  # the whole small gallery


def test_unexpected_error_gets_a_reference_and_no_traceback(service, small_demo, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure inside the engine")

    monkeypatch.setattr(service.engine, "search_by_text", broken)
    status = service.search_text("cardiomegaly", 5, "any", "any", "any")[2]
    assert status.startswith(ERROR) and "ref " in status
    assert "simulated failure" not in status and "Traceback" not in status
    ref = status.split("ref ")[1][:8]
    assert ref in caplog.text and "simulated failure" in caplog.text  # the detail is in the server log
    monkeypatch.undo()
    assert_still_serves(service, tmp_path, small_demo)


# ----------------------------------------------------------------------------- files
def _cli_index(argv: list[str]) -> int:
    from index.__main__ import main

    return main(argv)


def _single_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def reuse_backbone(model, monkeypatch):
    """The CLIs create the run's backbone by name; hand them the already loaded one (speed)."""
    monkeypatch.setattr("model.factory.create_backbone", lambda name, path=None, **kw: model.backbone)


def _copy_run(run: Path, dest: Path, **config_changes) -> Path:
    shutil.copytree(run, dest)
    if config_changes:
        config = json.loads((dest / "config.json").read_text())
        config.update(config_changes)
        (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_checkpoint_from_another_backbone_is_refused(small_demo, model, service, tmp_path, capsys, reuse_backbone):
    from model.checkpoint import CheckpointError
    from model.retrieval_model import RetrievalModel

    data, run, _ = small_demo
    other = _copy_run(run, tmp_path / "other-run", backbone_id="open_clip:ViT-B-16:sha256-0123456789ab")
    with pytest.raises(CheckpointError, match="was trained on backbone 'open_clip:ViT-B-16"):
        RetrievalModel.from_run(other, backbone=model.backbone)
    assert _cli_index(["build", "--run", str(other), "--out", str(tmp_path / "idx"), "--data", str(data)]) == 2
    line = _single_error_line(capsys)
    assert "was trained on backbone 'open_clip:ViT-B-16" in line and "retrain" in line
    assert not (tmp_path / "idx").exists()
    assert_still_serves(service, tmp_path, small_demo)


def test_index_from_another_backbone_is_refused(small_demo, model, service, tmp_path, capsys, reuse_backbone):
    from index.engine import SearchEngine
    from index.manifest import IndexMismatchError

    data, run, index = small_demo
    other = tmp_path / "other-index"
    shutil.copytree(index, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["backbone_id"] = "open_clip:ViT-B-16:sha256-0123456789ab"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="was built for backbone 'open_clip:ViT-B-16"):
        SearchEngine.load(other, model)
    assert _cli_index(["add", "--index", str(other), "--run", str(run), "--data", str(data)]) == 2
    assert "was built for backbone 'open_clip:ViT-B-16" in _single_error_line(capsys)
    assert_still_serves(service, tmp_path, small_demo)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_head_weights_are_refused(damage, small_demo, model, service, tmp_path, capsys, reuse_backbone):
    from model.checkpoint import CheckpointError
    from model.retrieval_model import RetrievalModel

    data, run, _ = small_demo
    bad = _copy_run(run, tmp_path / "bad-run")
    weights = (bad / "head.safetensors").read_bytes()
    (bad / "head.safetensors").write_bytes(weights[: len(weights) // 2] if damage == "truncated" else b"\x00" * 64)
    with pytest.raises(CheckpointError, match="head.safetensors is corrupt or truncated"):
        RetrievalModel.from_run(bad, backbone=model.backbone)
    assert _cli_index(["build", "--run", str(bad), "--out", str(tmp_path / "idx"), "--data", str(data)]) == 2
    assert "head.safetensors is corrupt or truncated" in _single_error_line(capsys)
    assert_still_serves(service, tmp_path, small_demo)


@pytest.mark.parametrize("name", ["images.hnsw", "meta.sqlite", "manifest.json"])
def test_damaged_index_file_is_refused_before_hnswlib_reads_it(name, small_demo, model, service, tmp_path, capsys):
    from index.engine import SearchEngine
    from index.manifest import IndexCorruptError

    bad = tmp_path / "bad-index"
    shutil.copytree(small_demo[2], bad)
    payload = (bad / name).read_bytes()
    (bad / name).write_bytes(payload[: len(payload) // 3])
    with pytest.raises(IndexCorruptError, match="truncated|not valid JSON"):
        SearchEngine.load(bad, model)
    assert _cli_index(["info", "--index", str(bad)]) == 2
    line = _single_error_line(capsys)
    assert ("truncated" in line or "not valid JSON" in line) and "rebuild" in line.lower()
    assert_still_serves(service, tmp_path, small_demo)


def test_missing_data_folder(small_demo, service, tmp_path, capsys, reuse_backbone):
    missing = tmp_path / "no-such-folder"
    assert train.cli(["--data", str(missing), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert f"no dataset at {missing}" in _single_error_line(capsys)
    assert _cli_index(["build", "--run", str(small_demo[1]), "--out", str(tmp_path / "idx"), "--data", str(missing)]) == 2
    assert f"no dataset at {missing}" in _single_error_line(capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "idx").exists()
    assert_still_serves(service, tmp_path, small_demo)


def test_backbone_that_cannot_be_loaded_offline(small_demo, service, tmp_path, capsys):
    assert train.cli(["--data", str(small_demo[0]), "--backbone", "biomedclip", "--out", str(tmp_path / "run"),
                      "--quiet", "--cache-dir", str(tmp_path / "hub")]) == 2
    line = _single_error_line(capsys)
    assert "biomedclip" in line and "--backbone-path" in line
    assert_still_serves(service, tmp_path, small_demo)


def _write_manifest(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_manifest_with_missing_columns(small_demo, service, tmp_path, capsys, reuse_backbone):
    csv = _write_manifest(tmp_path / "m.csv", "image_path,findings", ["a.png,normal heart"])
    assert train.cli(["--manifest", str(csv), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    line = _single_error_line(capsys)
    assert "lacks required column(s) report, label" in line and "found image_path, findings" in line
    assert _cli_index(["build", "--run", str(small_demo[1]), "--out", str(tmp_path / "idx"), "--manifest", str(csv)]) == 2
    assert "lacks required column(s) report, label" in _single_error_line(capsys)
    assert_still_serves(service, tmp_path, small_demo)


def test_manifest_with_missing_images_reports_the_rows_skips_them_and_builds(
        small_demo, model, service, tmp_path, capsys, caplog, reuse_backbone):
    from index.engine import SearchEngine

    data = small_demo[0]
    images = sorted((data / "images").glob("*.png"))[:6]
    rows = [f"{p},Heart size normal. Lungs clear.,normal" for p in images[:3]]
    rows.insert(1, "missing/one.png,Small left pleural effusion.,abnormal")  # row 3
    rows += [f"{p},Large right pleural effusion.,abnormal" for p in images[3:]]
    rows.append("missing/two.png,Cardiomegaly.,1")  # row 9
    rows.append(f"{images[0]},,normal")  # row 10: no report
    csv = _write_manifest(tmp_path / "m.csv", "image_path,report,label", rows)
    out = tmp_path / "idx"
    assert _cli_index(["build", "--run", str(small_demo[1]), "--out", str(out), "--manifest", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "6 studies (3 rows skipped, listed above)" in printed
    for expected in ("row 3: image not found: missing/one.png", "row 9: image not found: missing/two.png",
                     "row 10: empty report"):
        assert expected in caplog.text, caplog.text
    engine = SearchEngine.load(out, model)
    result = engine.search_by_text("pleural effusion", k=6)
    assert len(result.hits) == 6
    assert_still_serves(service, tmp_path, small_demo)
