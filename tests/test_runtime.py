"""Inference runtimes for the frozen towers (runtime.inference, model.towers): the same features as
torch for every tower family, exports cached by backbone identity, and torch as the fallback
when a runtime is missing or its export fails."""
from __future__ import annotations

import argparse
import logging
import shutil
import sys

import pytest
import torch
from PIL import Image
from skimage import data as skdata

import runtime.inference as runtime_mod
from model.factory import create_backbone
import runtime.option as runtime_option
from runtime.inference import export_dir
from runtime.option import add_runtime_argument, apply_runtime_argument, resolve_runtime
from tests.test_backbones import write_tiny_clip_folder, write_tiny_biomedclip_folder

RUNTIMES = ["openvino", "onnxruntime"]
MIN_COSINE = 0.9999  # float32 in a runtime: the bar for "the same features"
TEXTS = ["small left pleural effusion", "no acute cardiopulmonary abnormality, lungs are clear, normal heart size",
         "cardiomegaly", "normal heart size"]


def _images() -> list[Image.Image]:
    return [Image.fromarray(skdata.camera()), Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.astronaut())]


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a * b).sum(dim=1).min())


def _assert_same_features(name: str, runtime: str, path: str | None = None) -> None:
    """Torch and ``runtime`` give the same image and text features: a batch (texts of mixed
    length, so padded rows), single items, and an over-long text (truncated)."""
    reference = create_backbone(name, path=path, runtime="torch")
    compiled = create_backbone(name, path=path, runtime=runtime)
    assert compiled.runtime == runtime and compiled.image_runner is not None and compiled.text_runner is not None
    assert compiled.backbone_id == reference.backbone_id  # float32: same identity, caches stay valid
    images = _images()
    assert _min_cosine(reference.encode_images(images), compiled.encode_images(images)) >= MIN_COSINE
    assert _min_cosine(reference.encode_images(images[:1]), compiled.encode_images(images[:1])) >= MIN_COSINE
    texts = TEXTS + ["lungs are clear " * 200]
    for batch in (texts, texts[:1]):
        assert _min_cosine(reference.encode_texts(batch), compiled.encode_texts(batch)) >= MIN_COSINE


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_offline_towers_give_torch_features(runtime):
    """EfficientNet-Lite0 (blocks[4] on a 4x4 grid) and MiniLM (mean pooling), real pretrained weights."""
    _assert_same_features("offline", runtime)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_clip_layout_towers_give_torch_features(runtime, tmp_path):
    """open_clip's own ViT and causal text transformer (CLIP's layout), text trimmed to its tokens."""
    write_tiny_clip_folder(tmp_path / "tiny", seed=1, weights_name="open_clip_model.safetensors")
    _assert_same_features("clip", runtime, path=str(tmp_path / "tiny"))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_biomedclip_layout_towers_give_torch_features(runtime, tmp_path):
    """timm ViT + Hugging Face BERT text tower (BiomedCLIP's PubMedBERT layout)."""
    write_tiny_biomedclip_folder(tmp_path / "biomedclip-like")
    _assert_same_features("biomedclip", runtime, path=str(tmp_path / "biomedclip-like"))


def test_vit_b16_towers_give_torch_features():
    """The issue's tower: open_clip ViT-B/16 (random weights offline) and its CLIP text tower,
    in the runtime ``auto`` picks."""
    runtime = resolve_runtime("auto")
    if runtime == "torch":
        pytest.skip("no inference runtime installed")
    _assert_same_features("openclip-random:ViT-B-16", runtime)


# ----------------------------------------------------------------------------------------
# the export cache: keyed by backbone identity, reused
# ----------------------------------------------------------------------------------------

def test_export_is_cached_by_backbone_identity_and_reused(tmp_path, monkeypatch):
    for name, seed in (("a", 1), ("b", 2)):
        write_tiny_clip_folder(tmp_path / name, seed=seed, weights_name="open_clip_model.safetensors")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    backbones = {d: create_backbone("clip", path=str(tmp_path / d), runtime="onnxruntime") for d in ("a", "copy", "b")}
    folders = {d: export_dir(b.backbone_id, "image") for d, b in backbones.items()}
    assert folders["a"] == folders["copy"] != folders["b"]  # same weights -> one export; new weights -> new one
    assert (folders["a"] / "model.onnx").is_file() and (folders["b"] / "model.onnx").is_file()
    assert export_dir(backbones["a"].backbone_id, "text") != folders["a"]
    assert export_dir(backbones["a"].backbone_id + "+int8", "image") != folders["a"]

    # a cached export is read, not redone: exporting now would fail, yet the runtime attaches
    def no_export(*args, **kwargs):
        raise AssertionError("exported again although cached")

    monkeypatch.setattr(runtime_mod, "export_onnx", no_export)
    again = create_backbone("clip", path=str(tmp_path / "a"), runtime="openvino")
    assert again.runtime == "openvino"
    images = _images()
    assert _min_cosine(backbones["a"].encode_images(images), again.encode_images(images)) >= MIN_COSINE


# ----------------------------------------------------------------------------------------
# fallback to torch
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", RUNTIMES)
def test_missing_runtime_falls_back_to_torch_with_a_log_line(runtime, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, runtime, None)  # "import openvino" now raises ImportError
    write_tiny_clip_folder(tmp_path / "tiny", seed=1, weights_name="open_clip_model.safetensors")
    reference = create_backbone("clip", path=str(tmp_path / "tiny"), runtime="torch")
    with caplog.at_level(logging.WARNING, logger="runtime.inference"):
        backbone = create_backbone("clip", path=str(tmp_path / "tiny"), runtime=runtime)
    assert backbone.runtime == "torch" and backbone.image_runner is None and backbone.text_runner is None
    assert any(f"runtime {runtime} unavailable" in r.getMessage() and "using torch" in r.getMessage()
               for r in caplog.records)
    assert torch.equal(reference.encode_texts(TEXTS), backbone.encode_texts(TEXTS))


def test_failed_export_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(runtime_mod, "export_onnx", broken_export)
    write_tiny_clip_folder(tmp_path / "tiny", seed=7, weights_name="open_clip_model.safetensors")  # not cached yet
    with caplog.at_level(logging.WARNING, logger="runtime.inference"):
        backbone = create_backbone("clip", path=str(tmp_path / "tiny"), runtime="openvino")
    assert backbone.runtime == "torch"
    assert any("unsupported operator" in r.getMessage() for r in caplog.records)
    assert backbone.encode_images(_images()[:1]).shape == (1, 32)


def test_auto_picks_the_fastest_installed_runtime(monkeypatch):
    assert resolve_runtime("torch") == "torch"
    assert resolve_runtime("auto") == "openvino"  # both pinned in requirements.txt
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert resolve_runtime("auto") == "onnxruntime"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert resolve_runtime("auto") == "torch"
    with pytest.raises(ValueError, match="unknown runtime"):
        resolve_runtime("tensorrt")


def test_runtime_option_sets_the_process_default(monkeypatch):
    monkeypatch.setattr(runtime_option, "_default_runtime", "torch")
    monkeypatch.delenv("CXR_RUNTIME", raising=False)
    parser = argparse.ArgumentParser()
    add_runtime_argument(parser)
    assert parser.parse_args([]).runtime == "auto"
    monkeypatch.setenv("CXR_RUNTIME", "torch")
    parser = argparse.ArgumentParser()
    add_runtime_argument(parser)
    assert parser.parse_args([]).runtime == "torch"
    assert apply_runtime_argument(parser.parse_args(["--runtime", "onnxruntime"])) == "onnxruntime"
    assert runtime_option.default_runtime() == "onnxruntime"
    with pytest.raises(SystemExit):
        parser.parse_args(["--runtime", "tensorrt"])


def test_bulk_ingest_runs_in_the_runtime_with_torch_features(tmp_path):
    """model.features.cached_frozen_features (decode -> preprocess -> images and reports on the bulk
    workers, one thread each) through the runtime: its runners do the work, features as torch's."""
    from data.dataset import load_dataset
    from data.demo import build_demo_dataset
    from model.features import cached_frozen_features

    studies = load_dataset(build_demo_dataset(out_dir=tmp_path / "demo", limit=6, workers=1, progress=False))
    reference = create_backbone("offline", runtime="torch")
    compiled = create_backbone("offline", runtime="openvino")
    calls = {"image": 0, "text": 0}
    image_runner, text_runner = compiled.image_runner, compiled.text_runner

    def count(kind, runner):
        def run(x):
            calls[kind] += 1
            return runner(x)
        return run

    compiled.image_runner, compiled.text_runner = count("image", image_runner), count("text", text_runner)
    expected = cached_frozen_features(reference, studies, cache_dir=tmp_path / "torch", batch_size=4, progress=False)
    got = cached_frozen_features(compiled, studies, cache_dir=tmp_path / "openvino", batch_size=4, progress=False)
    assert calls["image"] == 2 and calls["text"] >= 1  # 6 images in batches of 4; the reports
    for a, b in zip(expected, got):
        assert a.shape == b.shape and float((a * b).sum(axis=1).min()) >= MIN_COSINE


def test_runtime_compare_profile_command():
    """``python -m bench.runtime_compare --profile`` as documented (docs/performance.md): OpenVINO's per-node
    counters for ViT-B/16 (the export test_vit_b16_towers_give_torch_features cached), matrix products first."""
    import json
    import subprocess

    from pathlib import Path

    if not runtime_option.runtime_installed("openvino"):
        pytest.skip("OpenVINO is not installed")
    done = subprocess.run([sys.executable, "-m", "bench.runtime_compare", "--profile"], capture_output=True, text=True,
                          timeout=900, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    profile = json.loads(done.stdout)["openvino_profile"]
    shares = {op: v["share"] for op, v in profile["by_op_type_ms"].items()}
    top = max(shares, key=shares.get)
    assert top.startswith("FullyConnected") and shares[top] >= 0.5, shares  # GEMM-bound, as the floor assumes
    assert profile["forward_wall_ms_median"] > 0 and profile["threads"] == 2
