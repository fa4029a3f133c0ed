"""torch vs the inference runtimes (``runtime.inference``), side by side in one process.

Used by ``bench.query`` (image query latency through the engine, ViT-B/16 and the offline
tower, and ``runtime_vs_floor``) and ``bench.embed`` (bulk ingest throughput). Every runtime
gets its own backbone of the same weights; the runs alternate in blocks (torch, openvino,
onnxruntime, torch, ...) so drift in the shared machine's load hits all of them alike.

    python -m bench.runtime_compare --profile    # where OpenVINO's ViT-B/16 time goes, by op type
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import emit, log, machine, setup_environment, stopwatch, summary, target

RUNTIMES = ("torch", "openvino", "onnxruntime")
FLOOR_TARGET = 1.2  # the bar: float32-equivalent image query p50 <= 1.2x the floor


def _alternate(fns: dict[str, Callable[[], Any]], rounds: int, per_block: int) -> dict[str, list[float]]:
    """ms of each call, ``per_block`` calls of one runtime at a time, runtimes alternating."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up: first-call allocations, lazy compiles
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def query_runtimes(name: str, uploads: list[bytes], tmp: Path, rounds: int = 4, per_block: int = 3) -> dict[str, Any]:
    """Image query p50/p95 (upload bytes -> hits, as ``bench.query``) of ``name`` per runtime,
    in alternating blocks, and each runtime's feature cosine to torch's."""
    import torch

    from bench.engine_fixture import build_engine, image_query
    from runtime.threads import configure_serving

    configure_serving(2)
    engines, actual = {}, {}
    for runtime in RUNTIMES:
        with stopwatch() as t:
            engine, _ = build_engine(name, tmp / f"rt-{runtime}-{name.replace(':', '-')}", runtime=runtime)
        engines[runtime], actual[runtime] = engine, engine.encoder.backbone.runtime
        log(f"query runtimes: {name} on {runtime} ready in {t['s']:.1f}s (export + compile on first use)")
    engines = {r: e for r, e in engines.items() if actual[r] == r}  # a runtime that fell back is not timed twice
    counter = {"i": 0}

    def query(engine):
        def run():
            counter["i"] += 1
            return image_query(engine, uploads[counter["i"] % len(uploads)])
        return run

    times = _alternate({r: query(e) for r, e in engines.items()}, rounds, per_block)
    ref = engines["torch"].encoder.backbone
    pixels = torch.stack([ref.preprocess(_image(b)) for b in uploads[:4]])
    feats = {r: e.encoder.backbone.encode_image_batch(pixels) for r, e in engines.items()}
    out: dict[str, Any] = {"backbone": ref.backbone_id, "rounds": rounds, "per_block": per_block,
                           "threads": "adaptive (2 alone)", "runtimes_fell_back": [r for r in RUNTIMES if actual[r] != r]}
    for runtime, values in times.items():
        out[runtime] = {"image_query": summary(values),
                        "feature_cosine_min_to_torch": round(float((feats[runtime] * feats["torch"]).sum(1).min()), 6)}
        out[runtime]["speedup_p50_vs_torch"] = round(float(np.median(times["torch"]) / np.median(values)), 2)
    out["_engines"] = engines  # popped by the caller (floor, profile); not JSON
    return out


def _image(data: bytes):
    from data.images import load_radiograph

    return load_radiograph(data).image


def runtime_vs_floor(comparison: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """``{"runtime", "image_p50_ms", "floor_ms", "ratio"}`` for the runtime ``auto`` picks, plus
    every timed runtime's own figures: the float32 image query p50 over the float32 floor."""
    from runtime.option import resolve_runtime

    floor_ms = floor["forward_floor_ms_at_best_gemm"]
    each = {r: {"image_p50_ms": v["image_query"]["median_ms"], "ratio": round(v["image_query"]["median_ms"] / floor_ms, 2)}
            for r, v in comparison.items() if r in RUNTIMES}
    chosen = resolve_runtime("auto")
    chosen = chosen if chosen in each else "torch"
    return {"runtime": chosen, "image_p50_ms": each[chosen]["image_p50_ms"], "floor_ms": floor_ms,
            "ratio": each[chosen]["ratio"], "target": target(each[chosen]["ratio"], FLOOR_TARGET, "max", "x"),
            "floor_is": "forward_floor_ms_at_best_gemm: FLOPs / this host's best 2-thread GEMM rate, same run",
            "each_runtime": each}


def runtime_int8(name: str, float_backbone, uploads: list[bytes], rounds: int = 4, per_block: int = 3) -> dict[str, Any]:
    """``<name>+ortint8`` (ONNX Runtime dynamic int8 image tower) against ``float_backbone``
    (the chosen float32 runtime): forward ms in alternating blocks at 2 threads and feature
    cosine (random weights here: the real-weight fidelity is in tests/test_runtime_int8.py)."""
    import torch

    from model.factory import create_backbone
    from runtime.threads import torch_threads

    int8 = create_backbone(name + "+ortint8", runtime=float_backbone.runtime)
    pixels = torch.stack([float_backbone.preprocess(_image(b)) for b in uploads[:4]])
    cosine = (float_backbone.encode_image_batch(pixels) * int8.encode_image_batch(pixels)).sum(1)
    with torch_threads(2):
        times = _alternate({f"float32_{float_backbone.runtime}": lambda: float_backbone.encode_image_batch(pixels[:1]),
                            "int8_onnxruntime": lambda: int8.encode_image_batch(pixels[:1])}, rounds, per_block)
    medians = {k: round(float(np.median(v)), 1) for k, v in times.items()}
    fp32_key = f"float32_{float_backbone.runtime}"
    return {"backbone": int8.backbone_id, "forward_ms_median": medians,
            "int8_speedup": round(medians[fp32_key] / medians["int8_onnxruntime"], 2),
            "feature_cosine_min_random_weights": round(float(cosine.min()), 5)}


def openvino_profile(backbone, threads: int = 2, reps: int = 5) -> dict[str, Any]:
    """Where OpenVINO's image forward spends its time: per-op-type share of the summed node
    times (OpenVINO's own counters, ``PERF_COUNT``), with the matrix products' effective rate."""
    import openvino as ov

    runner = backbone.image_runner
    if runner is None or getattr(runner, "runtime", None) != "openvino":
        return {"skipped": "the image tower does not run in OpenVINO"}
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(runner.path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    from PIL import Image

    pixels = backbone.preprocess(Image.new("L", (64, 64)))[None].numpy()
    request.infer({0: pixels})
    per_type: dict[str, float] = {}
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        request.infer({0: pixels})
        walls.append((time.perf_counter() - t0) * 1e3)
        for info in request.get_profiling_info():
            key = f"{info.node_type} ({info.exec_type})"
            per_type[key] = per_type.get(key, 0.0) + info.real_time.total_seconds() * 1e3 / reps
    total = sum(per_type.values())
    top = sorted(per_type.items(), key=lambda kv: -kv[1])[:10]
    return {"threads": threads, "forward_wall_ms_median": round(float(np.median(walls)), 1),
            "node_time_ms_total": round(total, 1),
            "by_op_type_ms": {k: {"ms": round(v, 1), "share": round(v / total, 3)} for k, v in top}}


def ingest_runtimes(studies, batch_size: int, runtimes=RUNTIMES, reps: int = 2) -> dict[str, Any]:
    """Bulk ingest (``model.features.cached_frozen_features``: decode, preprocess, images and reports on
    the bulk workers, cache chunks) per runtime, alternating, fresh cache each time; images/s
    counts the studies' images (each study has one image and one report)."""
    from model.factory import create_backbone
    from model.features import cached_frozen_features

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-rt-"))
    backbones = {r: create_backbone("offline", runtime=r) for r in runtimes}
    backbones = {r: b for r, b in backbones.items() if b.runtime == r}
    seconds: dict[str, list[float]] = {r: [] for r in backbones}
    reference = {}
    for rep in range(reps):
        for runtime, backbone in backbones.items():
            with stopwatch() as t:
                image, _ = cached_frozen_features(backbone, studies, cache_dir=tmp / f"{runtime}-{rep}",
                                         batch_size=batch_size, progress=False)
            seconds[runtime].append(t["s"])
            reference.setdefault(runtime, image)
        log(f"ingest runtimes rep {rep + 1}/{reps}: " + ", ".join(f"{r} {s[-1]:.1f}s" for r, s in seconds.items()))
    n = len(studies)
    out: dict[str, Any] = {"n_studies": n, "reps": reps, "batch_size": batch_size}
    for runtime, values in seconds.items():
        median = float(np.median(values))
        cosine = (reference[runtime] * reference["torch"]).sum(1).min()
        out[runtime] = {"seconds_median": round(median, 2), "images_per_s": round(n / median, 2),
                        "all_runs_s": [round(x, 2) for x in values], "feature_cosine_min_to_torch": round(float(cosine), 6)}
    from runtime.option import resolve_runtime

    chosen = resolve_runtime("auto")
    if chosen in out and "torch" in out:
        speedup = round(out[chosen]["images_per_s"] / out["torch"]["images_per_s"], 2)
        out["chosen_runtime"] = chosen
        out["speedup_vs_torch"] = target(speedup, 1.3, "min", "x")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", action="store_true", help="OpenVINO per-op profile of the ViT-B/16 image tower")
    args = p.parse_args(argv)
    setup_environment()
    from model.factory import create_backbone

    report: dict[str, Any] = {"machine": machine()}
    if args.profile:
        report["openvino_profile"] = openvino_profile(create_backbone("openclip-random:ViT-B-16", runtime="openvino"))
    emit(report)
    return report


if __name__ == "__main__":
    main()
