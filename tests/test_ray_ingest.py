"""Ray Data ingest (scale.ray_ingest) on a local Ray over a slice of the small demo.

One run (``python -m index build --engine ray``, a subprocess) is killed mid-way (SIGKILL to its process
group) and resumed by ``python -m index embed`` as documented: only the missing shards are embedded. The
shards' vectors, projected by the head, equal the single-process path's (``index.build.embed_into_head_space``);
an undecodable image is reported and skipped. Ray starts only where there is something to embed: the later
tests read the shards the first one completed (and embed them when run alone).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from data.dataset import load_dataset, save_dataset  # noqa: E402
from scale import ray_ingest  # noqa: E402
from index.shards import read_shards, shard_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARD = 8


@pytest.fixture(scope="module")
def collection(small_demo, tmp_path_factory):
    """The 40 demo studies plus one whose image file is garbage, as a dataset folder."""
    data = tmp_path_factory.mktemp("ray-data")
    studies = load_dataset(small_demo[0])
    broken = data / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    bad = replace(studies[5], study_id="broken-study", image_paths=(str(broken),))
    studies = studies[:20] + [bad] + studies[20:]
    save_dataset(data, studies)
    return data, load_dataset(data)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shards")


@pytest.fixture(scope="module", autouse=True)
def ray_stopped_afterwards():
    """``ray_ingest.ingest`` starts a local Ray when it has shards to embed; it is stopped with the module."""
    yield
    ray_ingest.shutdown()


def _ingest(studies, shards: Path, model):
    """The module's in-process ingest: two embedding workers (an actor pool), when anything is missing."""
    return ray_ingest.ingest(studies, shards, model.backbone, ray_ingest.backbone_factory_for("offline"), workers=2,
                             shard_size=SHARD, progress=False)


def _descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (from /proc): Ray's raylet starts its workers in sessions of their own,
    so a process-group kill alone can leave an embedding worker to write one more shard."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run and everything it started, and wait until none of them can write a shard."""
    tree = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in tree) and time.time() < deadline:
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_killed_run_resumes_with_only_missing_shards(small_demo, collection, shards, model):
    """Killed mid-way, then resumed by ``python -m index embed`` as documented (docs/scaling.md), in-process with
    a user's arguments: the finished shards are kept as they are, the missing ones embedded.
    (Also what tests/test_documented_commands.py's COVERED_ELSEWHERE names for ``python -m index embed``.)"""
    data, studies = collection
    n_shards = -(-len(studies) // SHARD)
    cmd = [sys.executable, "-m", "index", "build", "--run", str(small_demo[1]), "--data", str(data),
           "--out", str(shards.parent / "never-built"), "--engine", "ray", "--workers", "1",
           "--shards", str(shards), "--shard-size", str(SHARD)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    try:
        while not list(shards.glob("shard-*.parquet")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
    finally:
        _kill_tree(proc)
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet")}
    assert 1 <= len(before) < n_shards, f"the kill came too late or too early: {sorted(before)}"

    from tests.test_documented_commands import in_process

    out = in_process("index", "embed", "--backbone", "offline", "--shards", str(shards), "--data", str(data),
                     "--workers", "1", "--shard-size", str(SHARD))
    assert f"embedded {n_shards - len(before)}, already there {len(before)}" in out, out
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet") if p.name in before} == before
    assert all(shard_path(shards, i).is_file() for i in range(n_shards))

    again = _ingest(studies, shards, model)
    assert again.embedded == [] and again.skipped == list(range(n_shards))


def test_ray_vectors_equal_single_process_and_bad_images_are_skipped(collection, shards, model):
    """Reads the shards the test above completed (embeds them when run alone)."""
    from index.build import embed_into_head_space

    data, studies = collection
    _ingest(studies, shards, model)
    features = read_shards(shards)
    assert [b["study_id"] for b in features.bad] == ["broken-study"]
    good = [s for s in studies if s.study_id != "broken-study"]
    assert features.study_ids == [s.study_id for s in good]
    image_ref, report_ref = embed_into_head_space(model, good, progress=False)
    image = _cosines(model.project_image_features(features.image), image_ref)
    report = _cosines(model.project_text_features(features.text, [s.report_text for s in good]), report_ref)
    assert image.min() >= 0.9999 and report.min() >= 0.9999, (image.min(), report.min())


def test_shards_serve_as_the_training_feature_cache(collection, shards, model):
    """What ``train.py --features DIR`` reads equals what ``model.features.cached_frozen_features`` caches."""
    from index.shards import ShardMismatchError, features_for
    from model.features import cached_frozen_features

    data, studies = collection
    _ingest(studies, shards, model)
    good = [s for s in studies if s.study_id != "broken-study"][::-1]  # any order, any subset
    image, text = features_for(shards, model.backbone, good)
    image_ref, text_ref = cached_frozen_features(model.backbone, good, cache_dir=shards.parent / "train-cache", progress=False)
    assert _cosines(image, image_ref).min() >= 0.9999 and _cosines(text, text_ref).min() >= 0.9999
    with pytest.raises(ShardMismatchError, match="no features"):
        features_for(shards, model.backbone, studies)  # the broken study has none


def test_ray_built_index_answers_like_the_cached_build(small_demo, collection, shards, model, tmp_path):
    """The one builder from Ray's shards: the same artifacts as from the feature cache, the same answers."""
    from index.engine import SearchEngine
    from index.manifest import read_manifest
    from pipeline.steps import index_run

    data, studies = collection
    _ingest(studies, shards, model)
    good = [s for s in studies if s.study_id != "broken-study"]
    index_run(small_demo[1], tmp_path / "ray", studies, data_root=data, encoder=model, progress=False, shards=shards)
    index_run(small_demo[1], tmp_path / "cache", good, data_root=data, encoder=model, progress=False)
    ray, cached = read_manifest(tmp_path / "ray"), read_manifest(tmp_path / "cache")
    assert set(ray.files) == set(cached.files) and ray.count == cached.count == len(good)
    for threshold in (2000, 0):  # the engine's exact search, then the graph's
        engines = [SearchEngine.load(tmp_path / name, model, exact_threshold=threshold) for name in ("ray", "cache")]
        for phrase in ("cardiomegaly", "small left pleural effusion"):
            for filters in (None, {"label": "abnormal"}, {"finding": "pleural effusion"}):
                a, b = (e.search_by_text(phrase, 10, filters) for e in engines)
                recall = len(set(a.study_ids) & set(b.study_ids)) / max(len(b.study_ids), 1)
                assert recall >= 0.98 and a.familiarity.verdict == b.familiarity.verdict, (phrase, filters)
        for engine in engines:
            engine.close()
