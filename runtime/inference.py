"""Run the frozen towers in an inference runtime (OpenVINO or ONNX Runtime) instead of torch.

Why: a ViT-B/16 image query in torch eager mode runs at ~65% of what two CPU cores can do
(``python -m bench.query``, key ``query.runtime_vs_floor``); a graph runtime fuses the layer
norms, GELUs and attention into its matrix products and gets closer to the float32 floor.

How: each tower (:mod:`model.towers` says which module and inputs) is exported ONCE to ONNX and
cached under ``<cache>/runtimes/<key>/`` where the key hashes the backbone id (which carries
the weights' SHA-256), the tower and the export recipe; OpenVINO and ONNX Runtime both read
that file. The compiled model is built lazily per intra-op thread count (the caller's
``torch.get_num_threads()``, which :mod:`runtime.threads` sets per query and per bulk worker),
so the runtime follows the same thread policy as torch.

Features stay float32 and equal to torch's (cosine >= 0.9999, ``tests/test_runtime.py``), so the
backbone id does not change: caches, checkpoints and indexes built with torch stay valid.
Anything that goes wrong (runtime not installed, export or compile error) logs one line and
leaves that tower on torch.

``auto`` picks OpenVINO, else ONNX Runtime, else torch: the order measured on the 2-core host
(ViT-B/16 image forward, alternating blocks; see docs/performance.md).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from data.atomic_io import atomic_write_json
from runtime.option import RUNTIME_MODULES, runtime_installed

log = logging.getLogger(__name__)

EXPORT_RECIPE = "onnx-opset17-torchscript-v1"  # bump when the export changes: new cache entries


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run this tower here (not installed, export or compile failed)."""


# ----------------------------------------------------------------------------------------
# export (once per tower, cached by backbone identity)
# ----------------------------------------------------------------------------------------

def export_dir(backbone_id: str, tower: str, root: Path | None = None) -> Path:
    """Cache folder of one tower's export: a hash of the backbone id, the tower and the recipe."""
    from data.paths import cache_root

    key = json.dumps([backbone_id, tower, EXPORT_RECIPE, torch.__version__.split("+")[0]])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(root or cache_root() / "runtimes") / f"{tower}-{digest}"


def export_onnx(
    module: torch.nn.Module,
    examples: Sequence[torch.Tensor],
    input_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    folder: Path,
) -> Path:
    """``folder/model.onnx`` for ``module`` (exported now unless already cached).

    Written under a temporary name and renamed, so a crash mid-export never leaves a file a
    later run would trust; ``key.json`` beside it says what it is.
    """
    path = folder / "model.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"model.onnx.tmp{os.getpid()}-{threading.get_ident()}"
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on Python-side shape checks: the shapes are the export's
            torch.onnx.export(
                module.eval(), tuple(examples), str(tmp), dynamo=False, input_names=list(input_names),
                output_names=["features"], dynamic_axes=dynamic_axes, opset_version=17, do_constant_folding=True,
            )
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written export left behind
        raise
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------
# compiled towers
# ----------------------------------------------------------------------------------------

class CompiledTower:
    """An exported tower run by OpenVINO or ONNX Runtime: ``tower(*tensors) -> float32 tensor``.

    One compiled model per intra-op thread count, built on first use at that count; OpenVINO
    infer requests are per OS thread (bulk workers call concurrently), ONNX Runtime sessions
    are thread-safe.
    """

    def __init__(self, path: Path, runtime: str, input_names: Sequence[str]) -> None:
        if runtime not in RUNTIME_MODULES:
            raise ValueError(f"{runtime!r} is not a compiled runtime")
        self.path, self.runtime, self.input_names = Path(path), runtime, list(input_names)
        self._compiled: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._module = importlib.import_module(RUNTIME_MODULES[runtime])  # ImportError -> caller falls back
        self._compile(max(1, torch.get_num_threads()))  # fail now, not on the first query

    def _compile(self, threads: int) -> Any:
        with self._lock:
            if threads not in self._compiled:
                self._compiled[threads] = (_compile_openvino if self.runtime == "openvino" else _compile_ort)(
                    self._module, self.path, threads)
            return self._compiled[threads]

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        threads = max(1, torch.get_num_threads())
        compiled = self._compiled.get(threads) or self._compile(threads)
        inputs = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self.input_names, tensors)}
        if self.runtime == "onnxruntime":
            out = compiled.run(None, inputs)[0]
        else:
            requests = self._local.__dict__.setdefault("requests", {})
            request = requests.get(threads)
            if request is None:
                request = requests[threads] = compiled.create_infer_request()
            out = request.infer(inputs)[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))


def _compile_openvino(ov: Any, path: Path, threads: int) -> Any:
    from runtime.threads import available_cores

    # ``threads`` per request and as many streams as fit the cores: a lone query gets one
    # stream with every core; 1-thread callers (bulk workers, concurrent queries) get one
    # stream each and run in parallel instead of queueing for a single stream.
    streams = max(1, available_cores() // threads)
    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": threads * streams, "NUM_STREAMS": streams, "PERFORMANCE_HINT": "LATENCY",
        # float32 everywhere: on CPUs with bf16/fp16 units OpenVINO would otherwise drop
        # precision by default, and the features must equal torch's.
        "INFERENCE_PRECISION_HINT": "f32",
        "ENABLE_CPU_PINNING": False,  # a shared machine: do not pin threads to busy cores
    }
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def _compile_ort(ort: Any, path: Path, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class TowerSpec:
    """What to export for one tower: its inputs and how to build the module (only called when
    the export is not cached yet: building may copy the tower)."""

    name: str  # "image" | "text": part of the cache key
    input_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    build: Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]


def compile_tower(
    runtime: str, backbone_id: str, spec: TowerSpec, root: Path | None = None, int8: bool = False,
) -> CompiledTower | None:
    """The tower compiled in ``runtime``, exporting it first if not cached; None (and one log
    line) when that cannot be done here, so the caller keeps torch. ``int8``: ONNX Runtime's
    dynamic int8 of the export (:func:`quantize_onnx`; ``runtime`` must be onnxruntime)."""
    if runtime == "torch":
        return None
    if int8 and runtime != "onnxruntime":
        raise ValueError("int8 towers run in onnxruntime (its dynamic int8 graph)")
    try:
        if not runtime_installed(runtime):
            raise RuntimeUnavailable(f"the {runtime} package is not installed")
        folder = export_dir(backbone_id, spec.name, root)
        path = folder / "model.onnx"
        if not path.is_file():
            module, examples = spec.build()
            export_onnx(module, examples, spec.input_names, spec.dynamic_axes, folder)
            atomic_write_json(folder / "key.json", {"backbone_id": backbone_id, "tower": spec.name,
                                                    "recipe": EXPORT_RECIPE, "torch": torch.__version__})
        if int8:
            path = quantize_onnx(path)
        return CompiledTower(path, runtime, spec.input_names)
    except Exception as exc:  # any failure: serve with torch rather than not at all
        log.warning("runtime %s unavailable for the %s tower of %s (%s: %s); using torch",
                    runtime, spec.name, backbone_id, type(exc).__name__, str(exc).splitlines()[0][:300])
        return None


def quantize_onnx(path: Path) -> Path:
    """``model.int8.onnx`` beside ``path`` (made once): every MatMul/Gemm with int8 weights per
    output channel and uint8 activations quantised per call (ONNX Runtime's dynamic
    quantisation; no calibration data). Weights use 7 bits (``reduce_range``): AVX2 without
    VNNI multiplies u8 x s8 pairs into int16 and would saturate at 8 bits."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name("model.int8.onnx")
    if out.is_file():
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}-{threading.get_ident()}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" notice goes to the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    os.replace(tmp, out)
    return out
