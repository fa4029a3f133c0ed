"""End-to-end query latency through the engine. Prints ONE JSON document.

    python -m bench.query                              # offline, ViT-B/16 and ViT-B/16+int8 (random weights), ~3 min
    python -m bench.query --backbones offline          # one backbone only

For each backbone: an untrained ``RetrievalHead`` and an index of 4,000 random gallery vectors
(``index.build.build_index``), loaded by ``SearchEngine.load`` as the app does, then

* image query: upload BYTES -> ``data.images.load_radiograph`` -> ``engine.search_by_image``
  (embed, abnormal probability, image and report graphs, hits with metadata); for a 256 px
  phantom PNG and a 2048 px JPEG (a typical export), with a stage breakdown;
* text query: ``engine.search_by_text`` on distinct phrases (first time: no cache) and again
  (the LRU cache of ``RetrievalModel.embed_texts``), and the code before (padded text pass,
  no cache) side by side;
* thread policy: the same image queries pinned to 1 or 2 intra-op threads and with the
  adaptive policy of ``runtime.threads.query_threads`` (what the app runs), one at a time and
  two at once (gradio concurrency 2);
* for ``+int8``: the cosine between its image features and the float32 ones (same weights);
* for float32 ViT-B/16: its FLOPs over this host's dense-GEMM rate, the floor under its forward time;
* runtimes (``bench.runtime_compare``): image queries of ViT-B/16 and the offline backbone in torch,
  OpenVINO and ONNX Runtime in alternating blocks, the float32 floor measured again right after,
  and ``runtime_vs_floor`` (the runtime ``auto`` picks: image p50 / floor; target <= 1.2x), with
  OpenVINO's per-op profile of the ViT-B/16 forward.

All in the serving setting of ``runtime.threads.configure_serving(2)`` and ``query_threads``
unless stated. Latency is wall-clock median / p95, with the process CPU time per call beside
it (~threads x wall when the query had its cores). Targets (ViT-B/16 on 2 cores): image p50
< 300 ms, text p50 < 100 ms.
"""
from __future__ import annotations

import argparse
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, log, machine, scratch_dir, setup_environment, stopwatch, summary, target, time_calls
from bench.engine_fixture import build_engine, image_query

VIT = "openclip-random:ViT-B-16"
VIT_INT8 = VIT + "+int8"  # same weights, image tower's linear layers in dynamic int8 (runtime.quantize)
PHRASES = [
    "large right pleural effusion", "small left pleural effusion", "cardiomegaly", "right upper lobe opacity",
    "left lower lobe atelectasis", "right pneumothorax", "calcified granuloma", "no acute cardiopulmonary abnormality",
    "mild cardiomegaly with pulmonary vascular congestion", "bilateral interstitial opacities",
    "left basilar airspace disease", "hyperinflated lungs consistent with emphysema", "degenerative changes of the spine",
    "right middle lobe pneumonia", "small bilateral pleural effusions", "enlarged cardiac silhouette",
    "postoperative changes of sternotomy", "nodular opacity in the right upper lobe", "clear lungs, normal heart size",
    "elevated right hemidiaphragm", "tortuous thoracic aorta", "healed rib fractures on the left",
    "patchy opacity in the lingula", "pulmonary edema",
]


def make_uploads(tmp: Path, n: int = 6) -> dict[str, list[bytes]]:
    """Phantom PNGs as rendered (256 px) and the same films as 2048 px JPEG exports."""
    from PIL import Image

    from data.dataset import load_dataset
    from data.demo import build_demo_dataset

    studies = load_dataset(build_demo_dataset(out_dir=tmp / "demo", limit=n, workers=1, progress=False))
    pngs = [Path(s.image_path).read_bytes() for s in studies]
    jpegs = []
    for data in pngs:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("L").resize((2048, 2048), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return {"png_256px": pngs, "jpeg_2048px": jpegs}


def stage_breakdown(engine, data: bytes, reps: int = 5) -> dict[str, Any]:
    """Median ms of each stage of one image query (decode, preprocess, forward, the rest)."""
    from data.images import load_radiograph
    from index.ann import normalise
    from runtime.threads import query_threads

    backbone, model = engine.encoder.backbone, engine.encoder
    times: dict[str, list[float]] = {"decode": [], "preprocess": [], "forward": [], "head_and_search": []}
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        image = load_radiograph(data).image
        t1 = time.perf_counter()
        pixels = backbone.preprocess(image)[None]
        t2 = time.perf_counter()
        with query_threads():
            feats = backbone.encode_image_batch(pixels)
        t3 = time.perf_counter()
        emb = normalise(model.project_image_features(feats))
        model.abnormal_probability(emb)
        engine.search_by_image_vector(emb, k=10, target="images")
        engine.search_by_image_vector(emb, k=10, target="reports")
        t4 = time.perf_counter()
        for key, (a, b) in zip(times, ((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
            times[key].append((b - a) * 1e3)
    return {k: round(float(np.median(v[1:])), 2) for k, v in times.items()}  # first rep = warm-up


def text_queries(engine, phrases: list[str]) -> dict[str, Any]:
    """Distinct phrases (cache misses), then the same again (hits); and the code before."""
    model, backbone = engine.encoder, engine.encoder.backbone
    model.clear_text_cache()
    engine.search_by_text("warm up the text tower")
    first = time_calls(lambda p: engine.search_by_text(p, k=10), phrases, warmup=0)
    cached = time_calls(lambda p: engine.search_by_text(p, k=10), phrases, warmup=0)
    out: dict[str, Any] = {"new_phrase": first, "repeated_phrase_cached": cached}
    if hasattr(backbone, "trim_text_padding"):
        # before: the padded text pass and no cache, on the same phrases, same process
        def uncached_padded(p: str):
            model.clear_text_cache()
            return engine.search_by_text(p, k=10)

        backbone.trim_text_padding = False
        before = time_calls(uncached_padded, phrases[: max(6, len(phrases) // 2)], warmup=1)
        backbone.trim_text_padding = True
        after = time_calls(uncached_padded, phrases[: max(6, len(phrases) // 2)], warmup=1)
        probe = phrases[:4]
        backbone.trim_text_padding = False
        padded = backbone.encode_texts(probe)
        backbone.trim_text_padding = True
        trimmed = backbone.encode_texts(probe)
        out["before_after_trim_padding"] = {
            "before_padded_to_context_ms": before["median_ms"], "after_trimmed_ms": after["median_ms"],
            "before_cpu_ms": before["cpu"]["median_ms"], "after_cpu_ms": after["cpu"]["median_ms"],
            "speedup": round(before["median_ms"] / after["median_ms"], 2),
            "max_abs_feature_diff": float((padded - trimmed).abs().max()),
        }
    model.clear_text_cache()
    return out


def thread_policy(engine, uploads: list[bytes], n_each: int) -> dict[str, Any]:
    """Image queries one at a time and two at once (gradio concurrency 2), with every query
    pinned to 1 or 2 intra-op threads and with the adaptive policy the app uses."""
    from contextlib import nullcontext

    from runtime.threads import query_threads

    out: dict[str, Any] = {}
    for name, policy in (("1_thread", lambda: query_threads.pinned(1)), ("2_thread", lambda: query_threads.pinned(2)),
                         ("adaptive", nullcontext)):
        with policy():
            out[f"sequential_{name}"] = time_calls(lambda b: image_query(engine, b), uploads[:n_each], warmup=1)
            per_query: list[float] = []

            def worker(items: list[bytes]) -> None:
                for b in items:
                    t0 = time.perf_counter()
                    image_query(engine, b)
                    per_query.append((time.perf_counter() - t0) * 1e3)

            start = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(worker, [uploads[:n_each], uploads[::-1][:n_each]]))
            total = time.perf_counter() - start
            out[f"two_at_once_{name}"] = {**summary(per_query), "queries_per_s": round(len(per_query) / total, 2)}
    return out


def int8_agreement(engine, uploads: list[bytes], rounds: int = 4) -> dict[str, Any]:
    """The int8 image tower against the float32 one of the same weights: feature cosine, and
    forward time in alternating blocks (the host's speed drifts; alternating keeps the ratio fair)."""
    import torch

    from data.images import load_radiograph
    from model.factory import create_backbone
    from runtime.threads import query_threads

    quantized = engine.encoder.backbone
    reference = create_backbone(quantized.name.removesuffix("+int8"))
    pixels = torch.stack([quantized.preprocess(load_radiograph(b).image) for b in uploads])
    cosine = (reference.encode_image_batch(pixels) * quantized.encode_image_batch(pixels)).sum(dim=1)
    times: dict[str, list[float]] = {"float32": [], "int8": []}
    with query_threads() as threads:
        for _ in range(rounds):
            for name, backbone in (("float32", reference), ("int8", quantized)):
                for i in range(len(uploads) // 2):
                    t0 = time.perf_counter()
                    backbone.encode_image_batch(pixels[i:i + 1])
                    times[name].append((time.perf_counter() - t0) * 1e3)
    fp32_ms, int8_ms = (float(np.median(times[k])) for k in ("float32", "int8"))
    return {"images": len(uploads), "feature_cosine_min": round(float(cosine.min()), 5),
            "feature_cosine_mean": round(float(cosine.mean()), 5), "threads": threads,
            "forward_ms_alternating": {"float32": round(fp32_ms, 1), "int8": round(int8_ms, 1),
                                       "speedup": round(fp32_ms / int8_ms, 2), "n_each": len(times["int8"])}}


def float32_floor(backbone, threads: int = 2, size: int = 2048, reps: int = 10) -> dict[str, Any]:
    """The float32 image tower's lower bound on this host: its FLOPs (counted by torch's
    FlopCounterMode on a copy with ``nn.Linear`` attention, which the counter sees) over the
    host's own dense-GEMM rate at ``threads`` threads: a forward pass made of matrix products
    at that rate or slower cannot beat it."""
    import copy

    import torch
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    from runtime.quantize import split_open_clip_attention
    from runtime.threads import torch_threads

    tower = split_open_clip_attention(copy.deepcopy(backbone.model.visual)).eval()
    side = backbone.preprocess(Image.new("L", (8, 8))).shape[-1]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        tower(torch.zeros(1, 3, side, side))
    gflop = counter.get_total_flops() / 1e9
    a, b = torch.randn(size, size), torch.randn(size, size)
    with torch_threads(threads):
        for _ in range(3):
            a @ b
        seconds = []
        for _ in range(reps):
            with stopwatch() as t:
                a @ b
            seconds.append(t["s"])
    seconds.sort()
    rate = [2 * size ** 3 / s / 1e9 for s in (seconds[0], seconds[len(seconds) // 2])]
    return {"threads": threads, "image_tower_gflop": round(gflop, 1),
            "gemm_gflops_best": round(rate[0], 1), "gemm_gflops_median": round(rate[1], 1),
            "forward_floor_ms_at_best_gemm": round(gflop / rate[0] * 1e3, 1),
            "forward_floor_ms_at_median_gemm": round(gflop / rate[1] * 1e3, 1)}


def run_backbone(name: str, uploads: dict[str, list[bytes]], tmp: Path, n_image: int, n_policy: int) -> dict[str, Any]:
    from runtime.threads import configure_serving

    threads = configure_serving(2)
    engine, load_s = build_engine(name, tmp / f"index-{name.replace(':', '-')}")
    log(f"query: {name} loaded in {load_s}s; serving threads {threads}")
    png, jpeg = uploads["png_256px"], uploads["jpeg_2048px"]
    reps = max(1, n_image // len(png))
    image_png = time_calls(lambda b: image_query(engine, b), (png * reps)[:n_image], warmup=1)
    image_jpeg = time_calls(lambda b: image_query(engine, b), (jpeg * reps)[: max(3, n_image // 2)], warmup=0)
    log(f"query: {name} image p50 {image_png['median_ms']} ms (png), {image_jpeg['median_ms']} ms (2048 px jpeg)")
    texts = text_queries(engine, PHRASES)
    log(f"query: {name} text p50 {texts['new_phrase']['median_ms']} ms new, "
        f"{texts['repeated_phrase_cached']['median_ms']} ms repeated")
    out: dict[str, Any] = {
        "backbone": engine.encoder.backbone_id, "model_load_s": load_s, "gallery": engine.count,
        "serving_threads": threads,
        "image_query_png_256px": image_png,
        "image_query_jpeg_2048px": image_jpeg,
        "image_query_stages_ms_png": stage_breakdown(engine, png[0]),
        "image_query_stages_ms_jpeg": stage_breakdown(engine, jpeg[0], reps=3),
        "text_query": texts,
    }
    if n_policy:
        out["thread_policy"] = thread_policy(engine, png + png, n_policy)
        configure_serving(2)
    if name.endswith("+int8"):
        out["int8_vs_float32"] = int8_agreement(engine, png)
    elif name == VIT:
        out["float32_floor"] = float32_floor(engine.encoder.backbone)
    if name in (VIT, VIT_INT8):
        out["targets"] = {
            "image_query_p50_ms": target(image_png["median_ms"], 300, "max", " ms"),
            "text_query_p50_ms": target(texts["new_phrase"]["median_ms"], 100, "max", " ms"),
        }
    engine.store.close()
    return out


def run(backbones: list[str] | None = None, n_image: int = 12, n_policy: int = 4, runtimes: bool = True) -> dict[str, Any]:
    setup_environment()
    tmp = scratch_dir("bench-query-")
    uploads = make_uploads(tmp)
    out: dict[str, Any] = {"upload_bytes": {k: int(np.median([len(b) for b in v])) for k, v in uploads.items()}}
    for name in backbones or ["offline", VIT, VIT_INT8]:
        heavy = name != "offline"
        out[name] = run_backbone(name, uploads, tmp, n_image=n_image if heavy else 3 * n_image,
                                 n_policy=n_policy if heavy else 3 * n_policy)
    if runtimes:
        out.update(runtime_part(uploads["png_256px"], tmp))
    return out


def runtime_part(uploads: list[bytes], tmp: Path) -> dict[str, Any]:
    """torch vs OpenVINO vs ONNX Runtime side by side (``bench.runtime_compare``), the float32
    floor of the same run, and the runtime's ratio to it."""
    from bench.runtime_compare import openvino_profile, query_runtimes, runtime_int8, runtime_vs_floor

    comparison: dict[str, Any] = {}
    for name, rounds in ((VIT, 4), ("offline", 6)):
        comparison[name] = query_runtimes(name, uploads, tmp, rounds=rounds)
        engines = comparison[name].pop("_engines")
        if name == VIT:
            floor = float32_floor(engines["torch"].encoder.backbone)
            profile = openvino_profile(engines["openvino"].encoder.backbone) if "openvino" in engines else None
            chosen = engines.get("openvino") or engines.get("onnxruntime") or engines["torch"]
            int8 = runtime_int8(name, chosen.encoder.backbone, uploads)
        for engine in engines.values():
            engine.store.close()
        log(f"query runtimes: {name} image p50 " + ", ".join(
            f"{r} {v['image_query']['median_ms']} ms" for r, v in comparison[name].items() if isinstance(v, dict) and "image_query" in v))
    return {"runtimes": comparison, "runtime_floor": floor, "runtime_vs_floor": runtime_vs_floor(comparison[VIT], floor),
            "runtime_profile_openvino_vit_b16": profile, "runtime_int8_vit_b16": int8}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", nargs="+", default=None, help=f"default: offline {VIT} {VIT_INT8}")
    p.add_argument("--n-image", type=int, default=12, help="image queries timed for the heavy backbone (x3 for offline)")
    p.add_argument("--n-policy", type=int, default=4, help="queries per thread setting in the thread-policy part (0: skip)")
    p.add_argument("--no-runtimes", action="store_true", help="skip the torch / OpenVINO / ONNX Runtime comparison")
    args = p.parse_args(argv)
    report = {"machine": machine(), "query": run(args.backbones, args.n_image, args.n_policy, not args.no_runtimes)}
    report["machine"]["load_average_at_end"] = machine()["load_average"]
    emit(report)
    return report


if __name__ == "__main__":
    main()
