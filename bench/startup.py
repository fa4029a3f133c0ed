"""App start-up: seconds from ``python app.py`` to the first served page. Prints ONE JSON document.

    python -m bench.startup            # warm start (~1 min)
    python -m bench.startup --cold     # + cold start of the full demo (many minutes on 2 cores)

The app runs in a subprocess (``tests.app_server.running_app``: a free loopback port, polled
until ``GET /`` answers 200), with ``CXR_CACHE`` pointing at the cache under test:

* warm: everything built already. Uses the default cache's offline demo when it is complete
  (what ``make run`` starts on a second run); otherwise first builds a small demo
  (``--warm-demo-limit`` studies, no embedding maps; ~1 min, not timed) into a temporary cache
  and times the start on that (start-up loads the towers, the head, the index and builds the
  UI: the gallery size hardly matters).
* cold (``--cold``): a fresh temporary cache, so the app trains the head on the full demo,
  builds the index, then serves. The demo's rendered phantoms are reused from the default
  cache when a complete copy is there (linked in: the report says so), so the figure is
  embedding 3,955 studies + head training + evaluation + maps + index + start-up.

Both report the app's own "ready in" log line next to the time to first page.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, emit, log, machine, scratch_dir, setup_environment, stopwatch

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _demo_is_built(cache: Path) -> bool:
    return (cache / "runs" / "offline-demo" / "config.json").is_file() and \
        (cache / "indexes" / "offline-demo" / "manifest.json").is_file()


def _copy_examples(src_cache: Path, dst_cache: Path) -> bool:
    """The pediatric example films (fetched at set-up), so the app starts as it would for a user."""
    src = src_cache / "pediatric"
    if not src.is_dir():
        return False
    shutil.copytree(src, dst_cache / "pediatric", dirs_exist_ok=True)
    return True


def time_app_start(cache: Path, timeout: float, wait_maps: bool = False) -> dict[str, Any]:
    """Start app.py on ``cache``; seconds to the first 200 on ``/`` and the app's "ready in"."""
    from tests.app_server import running_app

    previous = os.environ.get("CXR_CACHE")
    os.environ["CXR_CACHE"] = str(cache)  # running_app writes the app's log into this cache
    started = time.monotonic()
    try:
        with running_app(env={"CXR_CACHE": str(cache)}, timeout=timeout) as (url, proc, seconds):
            search_s = _wait_for_search(url, proc, started, timeout)
            log_files = sorted(cache.glob("app-*.log"), key=lambda p: p.stat().st_mtime)
            while wait_maps and time.monotonic() - started < timeout and proc.poll() is None and \
                    "embedding maps ready" not in log_files[-1].read_text():
                time.sleep(2.0)
            text = log_files[-1].read_text() if log_files else ""
    finally:
        if previous is None:
            os.environ.pop("CXR_CACHE", None)
        else:
            os.environ["CXR_CACHE"] = previous
    ready = re.findall(r"ready in ([0-9.]+)s", text)
    maps = re.findall(r"embedding maps ready \(([0-9.]+)s", text)
    return {"first_page_s": round(seconds, 1), "search_ready_s": search_s,
            "app_ready_in_s": float(ready[-1]) if ready else None,
            "maps_after_search_s": float(maps[-1]) if maps else None,
            "wall_including_shutdown_s": round(time.monotonic() - started, 1)}


def _wait_for_search(url: str, proc, started: float, timeout: float) -> float | None:
    """Seconds from launch until the served page is the app (its config names search_text), not the
    first-start progress page. None if the app exits first."""
    import urllib.request

    while time.monotonic() - started < timeout and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as response:
                if b"search_text" in response.read():
                    return round(time.monotonic() - started, 1)
        except OSError:
            pass
        time.sleep(1.0)
    return None


def warm(limit: int, timeout: float, runs: int = 2) -> dict[str, Any]:
    from data.paths import cache_root

    default = cache_root()
    if _demo_is_built(default):
        what = f"default cache {default}: full offline demo already built"
        cache = default
    else:
        cache = scratch_dir("bench-warm-cache-")
        what = (f"full demo not built in {default}: a {limit}-study demo (no embedding maps) built first into a "
                "temporary cache (not timed); start-up cost hardly depends on the gallery size")
        log(f"startup: building a {limit}-study demo for the warm start (not timed) ...")
        _copy_examples(default, cache)
        with stopwatch() as t:
            _build_small_demo(cache, limit)
        what += f" [prep {t['s']:.0f}s]"
    log("startup: warm start ...")
    timed = [time_app_start(cache, timeout) for _ in range(runs)]
    best = min(timed, key=lambda r: r["first_page_s"])
    return {"what": what, "runs": timed, "first_page_s": best["first_page_s"], "app_ready_in_s": best["app_ready_in_s"]}


def _build_small_demo(cache: Path, limit: int) -> None:
    """ensure_demo() on a demo limited to ``limit`` studies, in a child with CXR_CACHE=cache."""
    import subprocess

    code = ("from pipeline.demo import ensure_demo; "
            f"ensure_demo(train_args=['--demo-limit', '{limit}', '--bootstrap', '0', '--no-maps', '--quiet'])")
    env = {**os.environ, "CXR_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cold(timeout: float) -> dict[str, Any]:
    from data.demo import demo_dir
    from data.paths import cache_root

    cache = scratch_dir("bench-cold-cache-")
    examples = _copy_examples(cache_root(), cache)
    src = demo_dir()
    os.environ["CXR_CACHE"] = str(cache)
    try:
        dst = demo_dir()
    finally:
        os.environ.pop("CXR_CACHE")
    reused = (src / "dataset.json").is_file()
    if reused:
        dst.symlink_to(src, target_is_directory=True)
    log(f"startup: cold start into {cache} (phantoms {'reused' if reused else 'rendered too'}) ...")
    result = time_app_start(cache, timeout, wait_maps=True)
    result["included"] = ("first page: the progress page (webapp.startup); search ready: embed 3,955 studies + "
                          "train head + evaluate (1000 bootstraps) + index build + app start"
                          + ("" if reused else " + rendering 3,955 phantoms")
                          + "; the t-SNE/UMAP maps follow in the background (maps_after_search_s)")
    result["phantoms_reused_from"] = str(src) if reused else None
    result["example_films_copied"] = examples
    eval_file = cache / "runs" / "offline-demo" / "eval.json"
    if eval_file.is_file():
        import json

        result["train_timings_s"] = json.loads(eval_file.read_text()).get("timings_s")
    return result


def run(with_cold: bool = False, warm_limit: int = 120, timeout: float = 3600, warm_runs: int = 2) -> dict[str, Any]:
    setup_environment()
    out: dict[str, Any] = {"warm": warm(warm_limit, timeout, warm_runs)}
    log(f"startup: warm first page in {out['warm']['first_page_s']}s")
    out["cold"] = cold(timeout) if with_cold else "skipped: opt-in (--cold); takes many minutes on 2 cores"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cold", action="store_true", help="also time a cold start of the full demo")
    p.add_argument("--warm-demo-limit", type=int, default=120, help="studies in the stand-in demo for the warm start")
    p.add_argument("--warm-runs", type=int, default=2, help="warm starts timed (the best is reported)")
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args(argv)
    report = {"machine": machine(), "startup": run(args.cold, args.warm_demo_limit, args.timeout, args.warm_runs)}
    report["machine"]["load_average_at_end"] = machine()["load_average"]
    emit(report)
    return report


if __name__ == "__main__":
    main()
