"""Past one machine: Ray ingest scaling and hnswlib vs Milvus Lite at 100k. Prints ONE JSON document.

    python -m bench.scale               # ~10 min on 2 cores
    python -m bench.scale --quick       # smaller sizes, for a smoke run

Parts (each figure says what it measured):
* ``ray``: demo phantoms through ``scale.ray_ingest`` with the offline backbone on 1 and 2
  embedding workers, and the single-process path (``model.features.cached_frozen_features``, same
  number of bulk workers) on the same studies: throughput, scaling efficiency, overhead.
* ``slice``: a >= 50k slice of small synthetic images through the same Ray pipeline with a
  tiny stand-in backbone (``TinyBackbone``), so the pipeline's own per-item cost (list,
  read, decode, preprocess, hand-off, Parquet write) is measured at scale; the backbones'
  forward costs and a full-size radiograph's decode are measured separately.
* ``projection_1m``: 1M studies' ingest time from those per-item costs.
* ``hnswlib`` / ``milvus``: 100k x 256 clustered vectors (the head's width): build time,
  query p50/p95 one at a time, recall@10 against exact search, bytes per vector. 1M is
  projected from 100k (not run: a 1M build does not fit the time budget on 2 cores).
* ``plan``: 10M and 100M studies from the measured per-item costs (see docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import emit, log, machine, rss_mb, setup_environment, stopwatch
from model.backbones import Backbone

TINY_SIZE = 32


class TinyBackbone(Backbone):
    """Stand-in frozen backbone for the pipeline-cost slice: the project's preprocessing at
    32 px, image features = 4x4 average pool (48-d), text features = 16 hashed byte counts."""

    name = "bench-tiny"
    shared_space = False

    def __init__(self, device: str = "cpu") -> None:
        from model.transform import IMAGENET_MEAN, IMAGENET_STD, build_transform, preprocess_identity

        super().__init__(build_transform(TINY_SIZE, IMAGENET_MEAN, IMAGENET_STD), device)
        self.backbone_id = "bench-tiny-32px"
        self.preprocess_id = preprocess_identity(TINY_SIZE, IMAGENET_MEAN, IMAGENET_STD)
        self.image_dim, self.text_dim, self.context_length = 48, 16, 512

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(pixels, 4).flatten(1)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.text_dim)
        for i, text in enumerate(texts):
            counts = np.bincount(np.frombuffer(text.encode(), np.uint8) % self.text_dim, minlength=self.text_dim)
            out[i] = torch.from_numpy(counts.astype(np.float32)) + 1.0
        return out

    def text_token_count(self, text: str) -> int:
        return len(text.split())


def _tiny() -> TinyBackbone:
    return TinyBackbone()


# ------------------------------------------------------------------------------- ingest
def _demo_studies(n: int, folder: Path) -> list:
    """``n`` studies over the rendered demo phantoms (ids made unique when repeated)."""
    from data.dataset import load_dataset
    from data.demo import build_demo_dataset

    base = load_dataset(build_demo_dataset(out_dir=folder, limit=min(n, 128), progress=False))
    return [replace(base[i % len(base)], study_id=f"{base[i % len(base)].study_id}-r{i // len(base)}")
            for i in range(n)]


def ray_case(n: int, shard_size: int, tmp: Path) -> dict[str, Any]:
    """Offline backbone: Ray with 1 and 2 workers vs the single-process path at equal workers."""
    from scale import ray_ingest
    from model.factory import create_backbone
    from model.features import cached_frozen_features

    studies = _demo_studies(n, tmp / "demo")
    backbone = create_backbone("offline")
    factory = ray_ingest.backbone_factory_for("offline", device="cpu")
    out: dict[str, Any] = {"n_studies": n, "shard_size": shard_size, "backbone": backbone.backbone_id}
    with stopwatch() as t_init:
        ray_ingest.init_ray(None, workers=2)
    out["ray_start_s"] = round(t_init["s"], 1)
    for workers in (1, 2):
        report = ray_ingest.ingest(studies, tmp / f"shards-w{workers}", backbone, factory, workers=workers,
                                   shard_size=shard_size, progress=False)
        os.environ["CXR_BULK_THREADS"] = str(workers)
        with stopwatch() as t_single:
            cached_frozen_features(backbone, studies, cache_dir=tmp / f"single-w{workers}", progress=False)
        steady = report.steady_studies_per_s()
        out[f"workers_{workers}"] = {
            "ray_s": round(report.seconds, 2), "ray_studies_per_s": round(n / report.seconds, 2),
            "ray_steady_studies_per_s": round(steady, 2),
            "ray_start_up_s": round(report.done_at[0] - shard_size / steady, 1),
            "single_process_s": round(t_single["s"], 2), "single_process_studies_per_s": round(n / t_single["s"], 2),
            "overhead_vs_single_process": round((n / t_single["s"]) / steady, 3),
            "overhead_vs_single_process_end_to_end": round(report.seconds / t_single["s"], 3),
        }
        log(f"ray: {workers} worker(s) {report.seconds:.1f}s, single process {t_single['s']:.1f}s")
    os.environ.pop("CXR_BULK_THREADS", None)
    ray_ingest.shutdown()
    w1, w2 = out["workers_1"], out["workers_2"]
    out["scaling_efficiency"] = round(w2["ray_steady_studies_per_s"] / (2 * w1["ray_steady_studies_per_s"]), 3)
    out["scaling_efficiency_end_to_end"] = round(w2["ray_studies_per_s"] / (2 * w1["ray_studies_per_s"]), 3)
    out["overhead_vs_single_process"] = w2["overhead_vs_single_process"]
    out["note"] = ("steady = studies after the first shard / time from first to last shard (worker start-up, "
                   "one backbone load per worker, excluded; it is ray_start_up_s); overhead = single-process "
                   "throughput / Ray steady throughput at equal workers; both paths share the same 2 cores")
    return out


def _synthetic_images(n: int, folder: Path) -> list:
    """``n`` small (64 px) grayscale PNGs with studies pointing at them."""
    from PIL import Image

    from bench.search import synthetic_studies

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = np.linspace(0, 200, 64, dtype=np.float32)[None, :] + np.linspace(0, 40, 64, dtype=np.float32)[:, None]
    studies = synthetic_studies(n)
    for i, study in enumerate(studies):
        path = folder / f"{study.study_id}.png"
        pixels = np.clip(base + rng.normal(0, 12, (64, 64)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, compress_level=1)
        studies[i] = replace(study, image_paths=(str(path),))
    return studies


def slice_case(n: int, shard_size: int, tmp: Path, workers: int = 2) -> dict[str, Any]:
    """The Ray pipeline's own per-item cost over ``n`` small synthetic images (tiny backbone)."""
    from scale import ray_ingest

    with stopwatch() as t_make:
        studies = _synthetic_images(n, tmp / "slice-images")
    log(f"slice: {n} synthetic images written in {t_make['s']:.0f}s")
    ray_ingest.init_ray(None, workers=workers)
    report = ray_ingest.ingest(studies, tmp / "slice-shards", _tiny(), _tiny, workers=workers, shard_size=shard_size,
                                progress=False)
    ray_ingest.shutdown()
    shards = sum(p.stat().st_size for p in (tmp / "slice-shards").glob("*.parquet"))
    steady = report.steady_studies_per_s()
    return {
        "n_studies": n, "workers": workers, "shard_size": shard_size, "seconds": round(report.seconds, 1),
        "studies_per_s": round(n / report.seconds, 1), "steady_studies_per_s": round(steady, 1),
        "pipeline_core_ms_per_study": round(1e3 * workers / steady, 3),
        "pipeline_core_ms_per_study_end_to_end": round(1e3 * report.seconds * workers / n, 3),
        "bad_images": len(report.bad), "shard_bytes_per_study": round(shards / n, 1),
    }


def forward_costs(tmp: Path) -> dict[str, Any]:
    """Per-study single-core cost of the real backbones and of decoding a full-size radiograph."""
    from PIL import Image

    from data.images import load_radiograph
    from model.factory import create_backbone
    from runtime.threads import torch_threads

    out: dict[str, Any] = {}
    big = tmp / "full-size.jpg"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (2544, 3056), dtype=np.uint8)).save(big, quality=90)
    texts = ["Findings: The heart is mildly enlarged. Small left pleural effusion. No pneumothorax. "
             "Impression: Cardiomegaly with small left effusion."] * 8
    with torch_threads(1):
        for name in ("offline", "openclip-random:ViT-B-16"):
            backbone = create_backbone(name)
            pixels = torch.stack([backbone.preprocess(load_radiograph(big).image)] * 4)
            backbone.encode_image_batch(pixels[:1])
            with stopwatch() as t_img:
                backbone.encode_image_batch(pixels)
            with stopwatch() as t_txt:
                backbone.encode_texts(texts)
            with stopwatch() as t_dec:
                for _ in range(3):
                    backbone.preprocess(load_radiograph(big).image)
            out[name] = {"image_forward_ms": round(t_img["s"] * 1e3 / 4, 1),
                         "text_forward_ms": round(t_txt["s"] * 1e3 / 8, 1),
                         "decode_preprocess_3k_jpeg_ms": round(t_dec["s"] * 1e3 / 3, 1)}
            del backbone
    return out


def project_1m(slice_: dict[str, Any], costs: dict[str, Any], scaling: float) -> dict[str, Any]:
    """1M studies on this machine (2 cores) and per core, from the measured per-item costs."""
    out = {}
    for name, c in costs.items():
        per_study = slice_["pipeline_core_ms_per_study"] + c["decode_preprocess_3k_jpeg_ms"] + \
            c["image_forward_ms"] + c["text_forward_ms"]
        core_hours = 1e6 * per_study / 3.6e6
        out[name] = {"core_ms_per_study": round(per_study, 1), "core_hours": round(core_hours, 1),
                     "hours_on_this_machine_2_workers": round(core_hours / (2 * max(scaling, 1e-3)), 1)}
    out["method"] = ("per study = Ray pipeline cost measured on the synthetic slice + decode/preprocess of a "
                     "3056x2544 JPEG + image and report forward, each measured on one core")
    return out


# ------------------------------------------------------------------------------- search
def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def search_case(n: int, dim: int, n_queries: int, tmp: Path) -> dict[str, Any]:
    """hnswlib (the default backend) and Milvus Lite on the same clustered vectors."""
    from bench.search import clustered_gallery, per_query_ms, recall_at_k, synthetic_studies
    from index.ann import HnswIndex, exact_top_k
    from index.build import build_index
    from index.filters import Filters
    from index.manifest import read_manifest
    from index.milvus_store import MilvusVectorStore
    from index.vector_store import artifacts_dir

    x, queries = clustered_gallery(n, n_queries, dim, n_clusters=max(10, n // 100))
    truth = exact_top_k(x, queries, 10).ids
    out: dict[str, Any] = {"n": n, "dim": dim, "queries": n_queries}
    rss0 = rss_mb() or 0.0
    with stopwatch() as t_build:
        graph = HnswIndex.create(x)
    rss1 = rss_mb() or 0.0
    graph.save(tmp / "g.hnsw")
    p50, p95 = per_query_ms(lambda q: graph.search(q[None], 10), queries)
    out["hnswlib"] = {
        "recall_at_10": round(recall_at_k(graph.search(queries, 10).ids, truth), 4),
        "p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "build_s": round(t_build["s"], 1),
        "bytes_per_vector_file": round((tmp / "g.hnsw").stat().st_size / n, 1),
        "bytes_per_vector_rss": round((rss1 - rss0) * 2**20 / n, 1),
    }
    del graph
    log(f"search {n}: hnswlib {out['hnswlib']}")
    spec = f"milvus://{tmp}/m.db#bench"
    rss0 = rss_mb() or 0.0  # Milvus Lite runs inside this process
    with stopwatch() as t_build:  # the one builder: two collections + the index's folder (index.vector_store)
        build_index(spec, x, x, synthetic_studies(n), {"backbone_id": "bench", "head_checksum": "-", "embed_dim": dim})
    store = MilvusVectorStore.open(spec, read_manifest(artifacts_dir(spec)))
    store.client.release_collection("bench_reports")  # serve one collection, as one graph above
    rss1 = rss_mb() or 0.0
    p50, p95 = per_query_ms(lambda q: store.search("images", q[None], 10, Filters(), None), queries)
    out["milvus"] = {
        "recall_at_10": round(recall_at_k(store.search("images", queries, 10, Filters(), None).ids, truth), 4),
        "p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "build_s_two_collections": round(t_build["s"], 1),
        "index": store.search_params, "index_state": store.client.describe_index("bench_images", "vector"),
        "bytes_per_vector_rss_in_process": round((rss1 - rss0) * 2**20 / n, 1),
        "bytes_per_vector_disk_two_collections_with_metadata": round(_dir_bytes(tmp / "m.db") / n, 1)
        if (tmp / "m.db").exists() else None,
    }
    store.close()
    log(f"search {n}: milvus {out['milvus']}")
    return out


# ------------------------------------------------------------------------------- plan
NODE_RAM_GB = 256  # a serving node's RAM budget for vectors (an assumption of the plan, stated)
HEADROOM = 0.6  # share of that RAM given to the index (rest: OS, metadata, page cache)


def plan(costs: dict[str, Any], slice_: dict[str, Any], search: dict[str, Any]) -> dict[str, Any]:
    """10M and 100M studies: ingest core-hours and serving shards, from the measured figures."""
    bytes_per_vector = search["hnswlib"]["bytes_per_vector_file"]
    p50 = search["hnswlib"]["p50_ms"]
    out: dict[str, Any] = {"assumptions": {"node_ram_gb": NODE_RAM_GB, "index_share_of_ram": HEADROOM,
                                           "vectors_per_study": 2, "replicas_for_availability": 2}}
    for n in (10_000_000, 100_000_000):
        row: dict[str, Any] = {}
        for name, c in costs.items():
            per_study = slice_["pipeline_core_ms_per_study"] + c["decode_preprocess_3k_jpeg_ms"] + \
                c["image_forward_ms"] + c["text_forward_ms"]
            cpu_only = c["decode_preprocess_3k_jpeg_ms"] + slice_["pipeline_core_ms_per_study"]
            row[f"ingest_{name}"] = {
                "core_hours_all_cpu": round(n * per_study / 3.6e6),
                "hours_on_100_cores": round(n * per_study / 3.6e6 / 100, 1),
                "cpu_core_hours_around_a_gpu_forward": round(n * cpu_only / 3.6e6),
            }
        index_gb = n * 2 * bytes_per_vector / 1e9
        shards = max(1, math.ceil(index_gb / (NODE_RAM_GB * HEADROOM)))
        row["serving"] = {"index_gb_two_graphs": round(index_gb, 1), "shards": shards,
                          "nodes_with_2_replicas": 2 * shards,
                          "gb_per_node": round(index_gb / shards, 1),
                          "query_ms_per_shard_at_100k_measured": p50}
        out[f"{n // 1_000_000}M"] = row
    return out


PARTS = ("ray", "slice", "costs", "search")
PARTIAL = "scale.partial.json"


def run(quick: bool = False, only: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Each part's figures are saved as soon as it finishes (``bench/out/scale.partial.json``);
    ``only`` reruns some parts and takes the others from that file."""
    from bench.common import OUT_DIR

    setup_environment()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    started = time.perf_counter()
    partial_path = OUT_DIR / ("quick-" + PARTIAL if quick else PARTIAL)
    rerun_some = set(only) != set(PARTS) and partial_path.is_file()  # a first --only run has nothing to reuse
    parts: dict[str, Any] = json.loads(partial_path.read_text()) if rerun_some else {}
    sizes = {"ray_n": 64 if quick else 192, "slice_n": 2000 if quick else 50_000,
             "search_n": 20_000 if quick else 100_000}
    jobs = {
        "ray": lambda: ray_case(sizes["ray_n"], 8 if quick else 16, tmp),
        "slice": lambda: slice_case(sizes["slice_n"], 500, tmp),
        "costs": lambda: forward_costs(tmp),
        "search": lambda: search_case(sizes["search_n"], 256, 200, tmp),
    }
    try:
        for part in PARTS:
            if part in only:
                with stopwatch() as t_part:
                    parts[part] = jobs[part]()
                parts[part]["part_seconds"] = round(t_part["s"], 1)
                OUT_DIR.mkdir(parents=True, exist_ok=True)
                partial_path.write_text(json.dumps(parts, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    missing = [p for p in PARTS if p not in parts]
    if missing:  # --only on a checkout with no earlier full run: the parts run, without the combined figures
        log(f"scale: no figures yet for {', '.join(missing)} (run them once): printing the parts run only")
        return {"machine": machine(), "parts": parts, "missing_parts": missing,
                "seconds": round(time.perf_counter() - started, 1)}
    ray, slice_, costs, search = (parts[p] for p in PARTS)
    costs = {k: v for k, v in costs.items() if isinstance(v, dict)}
    report = {
        "machine": machine(),
        "ray": ray,
        "slice": slice_,
        "per_study_costs_1_core": costs,
        "projection_1m": project_1m(slice_, costs, ray["scaling_efficiency"]),
        "hnswlib": {**search["hnswlib"], "n": search["n"], "dim": search["dim"]},
        "milvus": {**search["milvus"], "n": search["n"], "dim": search["dim"]},
        "search_1m": "projected, not run: memory and build time scale linearly from the 100k figures "
                     "(hnswlib build O(n log n)); p50 grows ~log n",
        "plan": plan(costs, slice_, search),
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_per_part": {p: parts[p].get("part_seconds") for p in PARTS},
    }
    # the dotted keys the issue names, for scripts
    report["ray.scaling_efficiency"] = ray["scaling_efficiency"]
    report["ray.overhead_vs_single_process"] = ray["overhead_vs_single_process"]
    report["milvus.recall_at_10"] = search["milvus"]["recall_at_10"]
    report["hnswlib.recall_at_10"] = search["hnswlib"]["recall_at_10"]
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run, figures not for the README)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS),
                        help="rerun these parts; the others come from the last run's saved figures")
    args = parser.parse_args(argv)
    report = run(quick=args.quick, only=tuple(args.only))
    emit(report, save_as="scale.json")
    return report


if __name__ == "__main__":
    main()
