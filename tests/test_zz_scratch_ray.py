"""Ray Data ingest (scale.ray_ingest) on a local Ray over a slice of the small demo.

One run is killed mid-way (SIGKILL to its process group) and rerun: only the missing
shards are embedded. The shards' vectors, projected by the head, equal the single-process
path's (``index.build.embed_into_head_space``); an undecodable image is reported and skipped.
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


@pytest.fixture(scope="module")
def ray_local():
    ray_ingest.init_ray(None, workers=2)
    yield
    ray_ingest.shutdown()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_killed_run_resumes_with_only_missing_shards(small_demo, collection, shards, ray_local, model):
    data, studies = collection
    n_shards = -(-len(studies) // SHARD)
    cmd = [sys.executable, "-m", "index", "build", "--run", str(small_demo[1]), "--data", str(data),
           "--out", str(shards.parent / "never-built"), "--engine", "ray", "--workers", "1",
           "--shards", str(shards), "--shard-size", str(SHARD)]
    T0 = time.time(); print("\nT start subprocess")
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    try:
        while len(list(shards.glob("shard-*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print("T killed at", round(time.time()-T0,1))
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet")}
    assert 2 <= len(before) < n_shards, f"the kill came too late or too early: {sorted(before)}"

    report = ray_ingest.ingest(studies, shards, model.backbone, ray_ingest.backbone_factory_for("offline"),
                               workers=2, shard_size=SHARD, progress=False)
    print("T resumed at", round(time.time()-T0,1))
    done_before = sorted(int(name[6:11]) for name in before)
    assert report.skipped == done_before
    assert report.embedded == sorted(set(range(n_shards)) - set(done_before))
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet") if p.name in before} == before
    assert all(shard_path(shards, i).is_file() for i in range(n_shards))

    again = ray_ingest.ingest(studies, shards, model.backbone, ray_ingest.backbone_factory_for("offline"),
                              workers=2, shard_size=SHARD, progress=False)
    assert again.embedded == [] and again.skipped == list(range(n_shards))


