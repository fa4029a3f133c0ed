"""Embedding throughput: the bare backbone vs the project's full ingest path. Prints ONE JSON document.

    python -m bench.embed                 # 96 demo phantoms, batch 32, offline backbone (~1-2 min on 2 cores)
    python -m bench.embed --n 256 --backbone openclip-random:ViT-B-16

* bare: ``encode_image_batch`` on tensors preprocessed beforehand, and ``encode_texts`` on the
  report strings in the chunks ``cached_frozen_features`` uses;
* full: ``model.features.cached_frozen_features`` into a fresh cache folder: decode PNG -> preprocess ->
  embed images and reports -> write the cache chunks.

Same images, same batch size, same parallelism (``runtime.threads.map_bulk``: one worker per
core, one torch thread each; bare runs cached_frozen_features' own jobs on pre-made tensors), measured
alternately (bare, full, bare, full) so drift in machine load hits both; the medians give the
overhead ratio (target: full <= 1.5x bare). Side-by-side extras: bare image throughput with 1
thread, all cores as intra-op threads (before) and one worker per core (now), and the offline
image tower in NCHW (before) vs channels_last (now). Then the same ingest with the towers in
torch, OpenVINO and ONNX Runtime (``bench.runtime_compare.ingest_runtimes``, alternating; key
``runtimes``; target: the runtime ``auto`` picks >= 1.3x torch's images/s).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, log, machine, scratch_dir, setup_environment, stopwatch, target


def run(n: int = 96, batch_size: int = 32, backbone_name: str = "offline", reps: int = 2,
        runtimes: bool = True) -> dict[str, Any]:
    setup_environment()
    import torch

    from data.dataset import load_dataset
    from data.demo import build_demo_dataset
    from data.images import load_radiograph
    from model.factory import create_backbone
    from model.features import CHUNK, cached_frozen_features
    from runtime.threads import bulk_thread_count, map_bulk, torch_threads

    tmp = scratch_dir("bench-embed-")
    with stopwatch() as t_render:
        folder = build_demo_dataset(out_dir=tmp / "demo", limit=n, progress=False)
    studies = load_dataset(folder)
    log(f"embed: {len(studies)} phantoms rendered in {t_render['s']:.1f}s (not part of any timing)")
    with stopwatch() as t_load:
        backbone = create_backbone(backbone_name, runtime="torch")
    batches = [
        torch.stack([backbone.preprocess(load_radiograph(s.image_path).image) for s in studies[i : i + batch_size]])
        for i in range(0, len(studies), batch_size)
    ]
    report_chunks = [[s.report_text for s in studies[i : i + CHUNK]] for i in range(0, len(studies), CHUNK)]

    texts = [s.report_text for s in studies]

    def bare_images() -> float:  # image batches alone, spread over the bulk workers
        with stopwatch() as t:
            map_bulk(backbone.encode_image_batch, batches)
        return t["s"]

    def bare_texts() -> float:  # the reports alone, one job per chunk (as cached_frozen_features runs them)
        with stopwatch() as t:
            map_bulk(backbone.encode_texts, report_chunks)
        return t["s"]

    def bare_both() -> float:  # exactly cached_frozen_features' jobs, but on pre-made tensors and no I/O
        def job(item):
            return backbone.encode_texts(item) if isinstance(item, list) else backbone.encode_image_batch(item)

        with stopwatch() as t:
            for c, chunk_texts in enumerate(report_chunks):
                per_chunk = CHUNK // batch_size
                map_bulk(job, [chunk_texts] + batches[c * per_chunk : (c + 1) * per_chunk])
        return t["s"]

    def full(rep: int) -> float:
        cache = tmp / f"features-{rep}"  # fresh every time: the cache must not short-circuit
        with stopwatch() as t:
            cached_frozen_features(backbone, studies, cache_dir=cache, batch_size=batch_size, progress=False)
        return t["s"]

    def full_before(rep: int) -> float:
        with stopwatch() as t:
            _legacy_embed_studies(backbone, studies, tmp / f"legacy-{rep}", batch_size)
        return t["s"]

    workers = bulk_thread_count()
    backbone.encode_image_batch(batches[0][:2])  # warm-up (first-call allocations)
    backbone.encode_texts(texts[:2])
    img_s, txt_s, both_s, full_s, before_s = [], [], [], [], []
    for rep in range(reps):
        img_s.append(bare_images())
        txt_s.append(bare_texts())
        both_s.append(bare_both())
        full_s.append(full(rep))
        if backbone_name == "offline" and rep == 0:  # once: it is the slow one
            before_s.append(full_before(rep))
        log(f"embed rep {rep + 1}/{reps}: bare images {img_s[-1]:.1f}s, reports {txt_s[-1]:.1f}s, "
            f"both {both_s[-1]:.1f}s; full pipeline {full_s[-1]:.1f}s"
            + (f" (code before: {before_s[-1]:.1f}s)" if before_s else ""))
    bare = float(np.median(both_s))
    full_median = float(np.median(full_s))
    ratio = full_median / bare
    out: dict[str, Any] = {
        "backbone": backbone.backbone_id,
        "n_studies": len(studies),
        "batch_size": batch_size,
        "bulk_workers": workers,
        "reps": reps,
        "model_load_s": round(t_load["s"], 1),
        "demo_render_s_excluded": round(t_render["s"], 1),
        "bare": {
            "images_per_s": round(len(studies) / float(np.median(img_s)), 2),
            "reports_per_s": round(len(studies) / float(np.median(txt_s)), 2),
            "images_and_reports_s": round(bare, 2),
            "studies_per_s": round(len(studies) / bare, 2),
        },
        "full_pipeline": {
            "seconds": round(full_median, 2),
            "studies_per_s": round(len(studies) / full_median, 2),
            "all_runs_s": [round(x, 2) for x in full_s],
        },
        "overhead_ratio": target(round(ratio, 3), 1.5, "max", "x"),
    }
    if before_s:
        b = float(np.median(before_s))
        out["full_pipeline_before_after"] = {
            "before_s": round(b, 2), "after_s": round(full_median, 2), "speedup": round(b / full_median, 2),
            "before_is": "the ingest code before this change, replayed: one batch at a time on all cores as "
                         "intra-op threads, NCHW image tower, reports in batches of 64 in file order",
        }
    out["thread_policy"] = _thread_comparison(backbone, batches, workers, torch_threads, map_bulk)
    if backbone_name == "offline":
        out["channels_last"] = _layout_comparison(backbone, batches)
        if runtimes:
            from bench.runtime_compare import ingest_runtimes

            out["runtimes"] = ingest_runtimes(studies, batch_size, reps=reps)
    return out


def _legacy_embed_studies(backbone, studies, folder: Path, batch_size: int) -> None:
    """The offline ingest path as it was before this optimisation (same outputs, same files)."""
    import io

    import torch
    import torch.nn.functional as F

    from data.atomic_io import atomic_write_bytes
    from data.images import load_radiograph
    from model.backbones import stage_feature_map
    from model.features import CHUNK
    from runtime.threads import available_cores, torch_threads

    model = backbone.image_model
    folder.mkdir(parents=True, exist_ok=True)
    with torch_threads(available_cores()):
        model.to(memory_format=torch.contiguous_format)
        try:
            for c in range(0, len(studies), CHUNK):
                chunk = studies[c : c + CHUNK]
                images = []
                for i in range(0, len(chunk), batch_size):
                    pixels = torch.stack([backbone.preprocess(load_radiograph(s.image_path).image) for s in chunk[i : i + batch_size]])
                    with torch.inference_mode():
                        fmap = stage_feature_map(model, pixels)
                        images.append(F.normalize(backbone.pool_feature_map(fmap), dim=-1).clone())
                texts = [s.report_text for s in chunk]
                reports = []
                for i in range(0, len(texts), 64):
                    with torch.inference_mode():
                        reports.append(F.normalize(backbone.text_features(texts[i : i + 64]).float(), dim=-1).clone())
                buffer = io.BytesIO()
                np.savez(buffer, image=torch.cat(images).numpy(), text=torch.cat(reports).numpy())
                atomic_write_bytes(folder / f"chunk{c // CHUNK:05d}.npz", buffer.getvalue())
        finally:
            model.to(memory_format=torch.channels_last)


def _thread_comparison(backbone, batches, cores: int, torch_threads, map_bulk) -> dict[str, Any]:
    """Bare image throughput, same batches, one after the other: one thread; one batch at a time on
    every core (intra-op threads: the code before); one batch per core, one thread each
    (``map_bulk``: now)."""
    n = sum(len(b) for b in batches)
    settings = {
        "1_thread": lambda: [backbone.encode_image_batch(p) for p in batches],
        f"{cores}_intra_op_threads_before": lambda: [backbone.encode_image_batch(p) for p in batches],
        f"{cores}_workers_x_1_thread_now": lambda: map_bulk(backbone.encode_image_batch, batches, workers=cores),
    }
    threads = {"1_thread": 1, f"{cores}_intra_op_threads_before": cores, f"{cores}_workers_x_1_thread_now": 1}
    rates: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(1):
        for name, fn in settings.items():
            with torch_threads(threads[name]):
                start = time.perf_counter()
                fn()
                rates[name].append(n / (time.perf_counter() - start))
    return {f"images_per_s_{k}": round(float(np.median(v)), 2) for k, v in rates.items()}


def _layout_comparison(backbone, batches) -> dict[str, Any]:
    """Offline image tower, 1 thread: NCHW (the code before) vs channels_last (now), same batches."""
    import torch

    from runtime.threads import torch_threads

    from model.backbones import stage_feature_map

    model = backbone.image_model
    n = sum(len(b) for b in batches)

    def features(pixels, memory_format):  # OfflineBackbone._image_features with a chosen layout
        return backbone.pool_feature_map(stage_feature_map(model, pixels.contiguous(memory_format=memory_format)))

    def rate(memory_format) -> float:
        model.to(memory_format=memory_format)
        start = time.perf_counter()
        with torch.inference_mode():
            for pixels in batches:
                features(pixels, memory_format)
        return n / (time.perf_counter() - start)

    before, after = [], []
    with torch_threads(1):
        with torch.inference_mode():
            reference = backbone.image_features(batches[0][:4])
            model.to(memory_format=torch.contiguous_format)
            old = features(batches[0][:4], torch.contiguous_format)
        before.append(rate(torch.contiguous_format))
        after.append(rate(torch.channels_last))
    model.to(memory_format=torch.channels_last)
    b, a = float(np.median(before)), float(np.median(after))
    return {"threads": 1, "images_per_s_nchw_before": round(b, 2), "images_per_s_channels_last_after": round(a, 2),
            "speedup": round(a / b, 2), "max_abs_feature_diff": float((reference - old).abs().max())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=96, help="demo phantoms to embed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbone", default="offline")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--no-runtimes", action="store_true", help="skip the torch / OpenVINO / ONNX Runtime ingest comparison")
    args = p.parse_args(argv)
    report = {"machine": machine(), "embed": run(args.n, args.batch_size, args.backbone, args.reps, not args.no_runtimes)}
    report["machine"]["load_average_at_end"] = machine()["load_average"]
    emit(report)
    return report


if __name__ == "__main__":
    main()
