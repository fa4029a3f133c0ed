"""Nothing lost: a build killed at any moment leaves the previous version usable, and an
interrupted embedding resumes without recomputing finished chunks.

The kill tests run the real writers in a child process that pauses at a chosen point
(after some files of the new version exist, between the two renames of the swap, ...),
SIGKILL it there, and check that the previous version still loads and answers a query.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


ROOT = Path(__file__).resolve().parent.parent


def _run_until_paused_then_kill(script: str, args: list[str], marker: Path, timeout: float = 120) -> None:
    """Run ``script`` in a child; when it writes ``marker`` (it then sleeps), SIGKILL it."""
    child = marker.parent / "child.py"
    child.write_text(textwrap.dedent(script))
    proc = subprocess.Popen([sys.executable, str(child), str(ROOT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    try:
        while not (marker.is_file() and marker.read_text() == "paused"):
            if proc.poll() is not None:
                raise AssertionError(f"child exited ({proc.returncode}) before pausing:\n{proc.stdout.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("child never reached its pause point")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# ----------------------------------------------------------------------------- index builds
INDEX_CHILD = """
    import os, shutil, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from data.dataset import load_dataset
    from index import build as build_module
    from index.build import build_index
    from index.manifest import read_manifest

    index_dir, data_dir, pause_at, marker = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], Path(sys.argv[5])

    def pause():
        marker.write_text("paused")
        time.sleep(600)

    if pause_at == "while_staging":  # graphs and metadata of the new version written, no manifest yet
        real_write_store = build_module.write_store
        def write_store(*args, **kwargs):
            real_write_store(*args, **kwargs)
            pause()
        build_module.write_store = write_store
    elif pause_at == "between_renames":  # live folder renamed away, new one not yet in its place
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if ".previous-" in str(dst):
                pause()
        os.rename = rename
    elif pause_at == "before_cleanup":  # new version live, previous not yet deleted
        real_rmtree = shutil.rmtree
        def rmtree(path, *args, **kwargs):
            if ".previous-" in str(path):
                pause()
            return real_rmtree(path, *args, **kwargs)
        shutil.rmtree = rmtree

    studies = load_dataset(data_dir)
    old = read_manifest(index_dir)
    rng = np.random.default_rng(1)
    vectors = lambda: rng.standard_normal((len(studies), old.embed_dim)).astype(np.float32)
    build_index(index_dir, vectors(), vectors(), studies, old.identity, data_root=data_dir)
    marker.write_text("finished")
"""


def _leftovers(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.parent.glob(f".{index_dir.name}.*-*"))


def _answer(engine) -> list[tuple[str, float]]:
    result = engine.search_by_text("large right pleural effusion", k=5)
    assert len(result.hits) == 5
    return [(h.study_id, round(h.score, 5)) for h in result.hits]


@pytest.mark.parametrize("pause_at", ["while_staging", "between_renames", "before_cleanup"])
def test_index_build_killed_midway_leaves_a_loadable_index(pause_at, small_demo, model, tmp_path):
    from index.build import build_index
    from index.engine import SearchEngine
    from index.manifest import read_manifest

    data, _, index = small_demo
    live = tmp_path / "indexes" / "idx"
    shutil.copytree(index, live)
    before = read_manifest(live).to_dict()
    answer_before = _answer(SearchEngine.load(live, model))

    _run_until_paused_then_kill(INDEX_CHILD, [str(live), str(data), pause_at, str(tmp_path / "marker")],
                                tmp_path / "marker")
    print(f"{pause_at}: on disk after SIGKILL: {sorted(p.name for p in live.parent.iterdir())}")
    if pause_at == "between_renames":
        assert not live.exists(), "the kill landed between the two renames"

    engine = SearchEngine.load(live, model)  # recovers an interrupted swap first
    after = engine.manifest.to_dict()
    if pause_at == "before_cleanup":
        assert after != before, "the new version was complete and published before the kill"
    else:
        assert after == before, "the previous version must still be the live one"
        assert _answer(engine) == answer_before
    assert engine.count == before["count"]
    engine.store.close()

    # The next build cleans up whatever the killed one left and publishes normally.
    studies = __import__("data.dataset", fromlist=["load_dataset"]).load_dataset(data)
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((len(studies), before["embed_dim"])).astype(np.float32)
    build_index(live, vecs, vecs, studies, read_manifest(live).identity, data_root=data)
    assert _leftovers(live) == []
    assert SearchEngine.load(live, model).count == len(studies)


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_CHILD = """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import torch
    from model.checkpoint import load_checkpoint, save_checkpoint

    run_dir, pause_at, marker = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    head, config = load_checkpoint(run_dir)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.5)  # a different "retrained" head
    real_replace = os.replace
    def replace(src, dst):
        if Path(dst).name == pause_at:  # the temp file is complete; kill before it replaces the old one
            marker.write_text("paused")
            time.sleep(600)
        return real_replace(src, dst)
    os.replace = replace
    save_checkpoint(run_dir, head, {k: v for k, v in config.items() if k not in ("head", "head_sha256", "format_version")})
    marker.write_text("finished")
"""


def _kill_checkpoint_save(small_demo, tmp_path: Path, pause_at: str):
    """Copy the small demo's run, SIGKILL a child re-saving it when it is about to rename
    ``pause_at`` into place; returns (run, head before, config before)."""
    from model.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(small_demo[1], run)
    head_before, config_before = load_checkpoint(run)
    _run_until_paused_then_kill(CHECKPOINT_CHILD, [str(run), pause_at, str(tmp_path / "marker")], tmp_path / "marker")
    return run, head_before, config_before


def test_checkpoint_save_killed_before_the_rename_keeps_the_previous_head(small_demo, tmp_path):
    from model.checkpoint import load_checkpoint

    # Killed with the new weights complete in their temp file, before config.json (the commit point).
    run, head_before, config_before = _kill_checkpoint_save(small_demo, tmp_path, "head.safetensors.pending")
    head_after, config_after = load_checkpoint(run)
    assert config_after == config_before
    for name, tensor in head_before.state_dict().items():
        assert torch.equal(tensor, head_after.state_dict()[name]), name
    # A killed atomic write leaves at most its temp file, never a half-written head.safetensors.
    assert all(p.name.startswith(".head.safetensors.") for p in run.iterdir() if p.suffix == ".tmp")


def test_checkpoint_save_killed_after_its_commit_point_loads_the_new_head(small_demo, tmp_path):
    from model.checkpoint import load_checkpoint

    # Killed after config.json named the new weights, before they were renamed into place.
    run, head_before, config_before = _kill_checkpoint_save(small_demo, tmp_path, "head.safetensors")
    head_after, config_after = load_checkpoint(run)
    assert config_after["head_sha256"] != config_before["head_sha256"]
    name, tensor = next(iter(head_before.state_dict().items()))
    assert torch.allclose(head_after.state_dict()[name], tensor + 0.5)


def test_checkpoint_save_killed_between_weights_and_config_keeps_a_loadable_run(small_demo, tmp_path):
    from model.checkpoint import load_checkpoint

    # Killed with the new weights complete (head.safetensors.pending) and the new config.json in its temp
    # file, before the config's rename (the commit point): the run is the previous one, whole.
    run, head_before, config_before = _kill_checkpoint_save(small_demo, tmp_path, "config.json")
    head_after, config_after = load_checkpoint(run)
    assert config_after == config_before
    for name, tensor in head_before.state_dict().items():
        assert torch.equal(tensor, head_after.state_dict()[name]), name


# ----------------------------------------------------------------------------- embedding cache
class SpyBackbone:
    """A deterministic stand-in for a frozen backbone that counts its forward passes."""

    name = "spy"
    backbone_id = "spy-backbone-v1"
    preprocess_id = "gray16"
    image_dim, text_dim = 16, 8

    def __init__(self, fail_on_image_call: int | None = None):
        self.image_calls = 0
        self.text_calls = 0
        self.fail_on_image_call = fail_on_image_call

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("L").resize((4, 4)), np.float32) / 255.0)

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        if self.fail_on_image_call is not None and self.image_calls == self.fail_on_image_call:
            raise KeyboardInterrupt("simulated interruption (Ctrl-C / OOM kill) mid-chunk")
        return pixels.reshape(len(pixels), -1)

    def encode_texts(self, texts) -> torch.Tensor:
        self.text_calls += 1
        return torch.tensor([[float(len(t) % (i + 3)) for i in range(self.text_dim)] for t in texts])


@pytest.fixture
def studies(small_demo):
    from data.dataset import load_dataset

    return load_dataset(small_demo[0])[:30]


def test_interrupted_embedding_resumes_without_recomputing_finished_chunks(studies, tmp_path, monkeypatch):
    import model.features as features

    monkeypatch.setattr(features, "CHUNK", 8)  # 30 studies -> chunks of 8, 8, 8, 6; batches of 4 -> 2 calls each
    cache = tmp_path / "features"
    reference = features.cached_frozen_features(SpyBackbone(), studies, cache_dir=tmp_path / "reference", batch_size=4,
                                       progress=False)

    interrupted = SpyBackbone(fail_on_image_call=6)  # the second batch of the third chunk
    with pytest.raises(KeyboardInterrupt):
        features.cached_frozen_features(interrupted, studies, cache_dir=cache, batch_size=4, progress=False)
    assert sorted(p.name for p in cache.glob("chunk*.npz")) == ["chunk00000.npz", "chunk00001.npz"]

    resumed = SpyBackbone()
    image, text = features.cached_frozen_features(resumed, studies, cache_dir=cache, batch_size=4, progress=False)
    print(f"resume: {resumed.image_calls} image batches (of 8), {resumed.text_calls} text calls (of 4)")
    assert resumed.image_calls == 4 and resumed.text_calls == 2  # only chunks 2 and 3
    np.testing.assert_array_equal(image, reference[0])
    np.testing.assert_array_equal(text, reference[1])

    again = SpyBackbone()
    features.cached_frozen_features(again, studies, cache_dir=cache, batch_size=4, progress=False)
    assert again.image_calls == 0 and again.text_calls == 0  # everything cached


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong_length"])
def test_damaged_cache_chunk_is_recomputed_alone(damage, studies, tmp_path, monkeypatch):
    import model.features as features

    monkeypatch.setattr(features, "CHUNK", 8)
    cache = tmp_path / "features"
    reference = features.cached_frozen_features(SpyBackbone(), studies, cache_dir=cache, batch_size=4, progress=False)
    chunk = cache / "chunk00001.npz"
    payload = chunk.read_bytes()
    if damage == "truncated":
        chunk.write_bytes(payload[: len(payload) // 2])
    elif damage == "garbage":
        chunk.write_bytes(b"\x93NUMPY" + b"\0" * 100)
    else:
        np.savez(chunk, image=np.zeros((3, 16), np.float32), text=np.zeros((3, 8), np.float32))
    spy = SpyBackbone()
    image, text = features.cached_frozen_features(spy, studies, cache_dir=cache, batch_size=4, progress=False)
    assert spy.image_calls == 2 and spy.text_calls == 1
    np.testing.assert_array_equal(image, reference[0])
    np.testing.assert_array_equal(text, reference[1])


def test_embedding_killed_by_sigkill_resumes(studies, tmp_path, monkeypatch):
    """The real interruption: a child embedding with a slow spy backbone is SIGKILLed after
    its second chunk was written; a resume in this process computes only the rest."""
    from data.dataset import save_dataset

    data = tmp_path / "data"
    save_dataset(data, studies)
    cache = tmp_path / "features"
    child = """
        import sys, time
        from pathlib import Path
        sys.path.insert(0, sys.argv[1])
        import numpy as np
        import torch
        import model.features as features
        from data.dataset import load_dataset

        class SpyBackbone:  # same features as the test module's spy
            name, backbone_id, preprocess_id = "spy", "spy-backbone-v1", "gray16"
            def preprocess(self, image):
                return torch.from_numpy(np.asarray(image.convert("L").resize((4, 4)), np.float32) / 255.0)
            def encode_image_batch(self, pixels):
                return pixels.reshape(len(pixels), -1)
            def encode_texts(self, texts):
                return torch.tensor([[float(len(t) % (i + 3)) for i in range(8)] for t in texts])

        data, cache, marker = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
        features.CHUNK = 8
        real_write = features._write_chunk
        def write_chunk(path, *arrays):
            real_write(path, *arrays)
            if path.name == "chunk00001.npz":
                marker.write_text("paused")
                time.sleep(600)
        features._write_chunk = write_chunk
        features.cached_frozen_features(SpyBackbone(), load_dataset(data), cache_dir=cache, batch_size=4, progress=False)
    """
    _run_until_paused_then_kill(child, [str(data), str(cache), str(tmp_path / "marker")], tmp_path / "marker")
    assert sorted(p.name for p in cache.glob("chunk*.npz")) == ["chunk00000.npz", "chunk00001.npz"]

    import model.features as features

    monkeypatch.setattr(features, "CHUNK", 8)
    spy = SpyBackbone()
    image, text = features.cached_frozen_features(spy, studies, cache_dir=cache, batch_size=4, progress=False)
    assert spy.image_calls == 4 and spy.text_calls == 2
    reference = features.cached_frozen_features(SpyBackbone(), studies, cache_dir=tmp_path / "reference", batch_size=4,
                                       progress=False)
    np.testing.assert_array_equal(image, reference[0])
    np.testing.assert_array_equal(text, reference[1])
