"""Shared helpers of the bench scripts: latency statistics, memory, machine facts, targets.

Every bench part prints ONE JSON document. Machines are shared and noisy, so parts report
medians (and p95), wall time next to the CPU time of the measuring thread (on a loaded box
the CPU time is the better guess of what an idle machine would show), and ratios measured
side by side in the same process rather than absolute figures compared across runs.
"""
from __future__ import annotations

import atexit
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the JSON document."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def scratch_dir(prefix: str) -> Path:
    """A temp folder removed when this process exits: a bench leaves nothing behind in /tmp."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def summary(values_ms: list[float] | np.ndarray) -> dict[str, float]:
    """Median, p95 and count of a list of milliseconds (rounded for reading)."""
    v = np.asarray(values_ms, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"median_ms": round(float(np.median(v)), 3), "p95_ms": round(float(np.percentile(v, 95)), 3), "n": int(v.size)}


def time_calls(fn: Callable[[Any], Any], inputs: list[Any], warmup: int = 1) -> dict[str, Any]:
    """Call ``fn`` on each input once, timing wall and process CPU time of every call.

    CPU time counts every intra-op thread: about ``threads x wall`` when the call had its cores,
    clearly less when it waited for them (a busy shared machine)."""
    for x in inputs[:warmup]:
        fn(x)
    wall, cpu = [], []
    for x in inputs:
        c0, t0 = time.process_time(), time.perf_counter()
        fn(x)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {**summary(wall), "cpu": summary(cpu)}


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["s"]`` (wall seconds) and ``t["cpu_s"]`` (process CPU)."""
    out: dict[str, float] = {}
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0
        out["cpu_s"] = time.process_time() - c0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB). Linux: VmHWM, which starts afresh
    in a spawned child (``ru_maxrss`` survives exec and would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024 if platform.system() == "Linux" else kb / 2**20, 1)  # macOS reports bytes


def rss_mb() -> float | None:
    """Current resident set size (Linux), to tell the data's share from a step's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average says how shared the box was."""
    info: dict[str, Any] = {
        "cpus": cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def target(value: float | None, limit: float, kind: str = "max", unit: str = "") -> dict[str, Any]:
    """A measured figure next to its target; ``kind`` "max" means value must be below limit."""
    met = None if value is None else (value < limit if kind == "max" else value >= limit)
    return {"value": value, "target": f"{'<' if kind == 'max' else '>='} {limit:g}{unit}", "met": met}


def run_isolated(fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Run ``fn(**kwargs)`` in a fresh (spawned) process and return its dict: peak RSS and
    thread settings of one case are then its own, not those of whatever ran before."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, kwargs))
    proc.start()
    child.close()
    try:
        ok, result = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"benchmark child {fn.__name__} died (exit code {proc.exitcode})") from None
    proc.join()
    if not ok:
        raise RuntimeError(f"benchmark child {fn.__name__} failed:\n{result}")
    return result


def _child(conn, fn, kwargs) -> None:
    import traceback

    try:
        conn.send((True, fn(**kwargs)))
    except BaseException:  # noqa: BLE001 - report any failure to the parent
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def emit(report: dict[str, Any], save_as: str | None = None) -> None:
    """Print the JSON document (and keep a copy under bench/out/ when asked)."""
    text = json.dumps(report, indent=2, default=_jsonable)
    print(text, flush=True)
    if save_as:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / save_as).write_text(text + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def setup_environment() -> None:
    """No hub, no analytics: the same environment the tests use."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def stop_process(proc: "subprocess.Popen", timeout: float = 30) -> None:
    """Stop a server a bench started: SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
