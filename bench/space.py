"""A Hugging Face Space as pushed: the repository's files alone, a fresh venv from requirements.txt,
``SPACE_ID=test python app.py``. Prints ONE JSON document (first page, search ready, peak memory).

    python -m bench.space                       # full first start (phantoms too): many minutes on 2 cores
    python -m bench.space --reuse phantoms      # the demo's phantoms linked in (as bench.startup --cold)
    python -m bench.space --reuse features      # + the frozen features: the first start trains and indexes
    python -m bench.space --reuse run           # + the trained demo run: the first start indexes
    python -m bench.space --venv DIR            # an existing venv (skips the install; not a fresh Space)
    python -m bench.space --installer uv        # uv installs requirements.txt (the suite's fast fresh venv)

What a Space does, and nothing more: the tracked files are copied (no Makefile, no .venv, no .cache,
no example films, which `make` fetches), pip installs requirements.txt (this machine's pip config
serves torch from local disk; a Space downloads it), and the app starts with ``SPACE_ID`` and
``GRADIO_SERVER_PORT`` set. The app must bind 0.0.0.0 (checked in /proc/net/tcp), serve its
progress page first, then the app with its ``/search_text`` endpoint, which is called once.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import ROOT, emit, log, machine, scratch_dir, stop_process
from bench.pip_sources import uv_source_args
from bench.serving_load import tree_rss_mb

SPACE_PORT = 7860


def copy_repository(dst: Path) -> Path:
    """The files a ``git push`` to the Space carries (tracked and not ignored), minus the Makefile."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file() and not src.is_symlink() and name != "Makefile":
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def fresh_venv(where: Path, python: str, installer: str = "pip") -> tuple[Path, float]:
    """``python -m venv`` + an install of ``requirements.txt`` alone; (venv python, seconds).

    ``pip`` is what a Space runs. ``uv`` (``uv pip install``, the suite's choice) installs the same
    requirements from the same sources into the same fresh venv, from uv's cache of unpacked wheels
    (hard links: seconds once warm, where pip unpacks and byte-compiles ~7 GB every time)."""
    started = time.monotonic()
    # uv installs into a venv without pip (ensurepip's own install takes ~3 s); pip needs its own copy
    subprocess.run([python, "-m", "venv", *(["--without-pip"] if installer == "uv" else []), str(where)], check=True)
    py = where / "bin" / "python"
    requirements = ["-r", str(ROOT / "requirements.txt")]
    if installer == "uv":
        from uv import find_uv_bin  # requirements-dev.txt: the suite's tool, never the Space's

        command = [find_uv_bin(), "pip", "install", "-q", "--python", str(py), *uv_source_args(), *requirements]
        # `make setup` has just resolved the same files into uv's cache: offline first (about a second instead of
        # ~25 s reading the package indexes), online when the cache lacks something
        if subprocess.run([*command, "--offline"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    else:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *requirements], check=True, stdout=subprocess.DEVNULL)
    return py, round(time.monotonic() - started, 1)


REUSE_LEVELS = ("none", "phantoms", "features", "run")


def seed_cache(cache: Path, reuse: str) -> list[str]:
    """Give the Space's empty cache what ``reuse`` names of the default cache: the demo phantoms (linked),
    their frozen features and their report sentences' (copied), the trained demo run (copied; its index is
    not, so the first start still serves its progress page and builds the index, step [2/2] of
    ``pipeline.demo.ensure_demo``)."""
    from data.demo import demo_dir
    from data.paths import cache_root
    from index.build import SENTENCE_CACHE
    from pipeline.demo import default_run_dir

    level = REUSE_LEVELS.index(reuse)
    reused: list[str] = []
    src_demo = demo_dir()
    if level >= 1 and (src_demo / "dataset.json").is_file():
        (cache / src_demo.name).symlink_to(src_demo, target_is_directory=True)
        reused.append(f"phantoms: {src_demo}")
    if level >= 2 and (cache_root() / "features").is_dir():
        shutil.copytree(cache_root() / "features", cache / "features")
        reused.append(f"frozen features: {cache_root() / 'features'}")
        if (cache_root() / SENTENCE_CACHE).is_dir():  # the report sentences' features (the familiarity model's)
            shutil.copytree(cache_root() / SENTENCE_CACHE, cache / SENTENCE_CACHE)
    run_dir = default_run_dir()
    if level >= 3 and (run_dir / "config.json").is_file():
        shutil.copytree(run_dir, cache / run_dir.relative_to(cache_root()))
        reused.append(f"trained run: {run_dir}")
    return reused


# Settings a Space has only when its owner sets them as variables: the simulated Space starts without the
# developer's (or the test suite's) values, with the app's own defaults (one search worker on 2+ cores).
# PYTHONDONTWRITEBYTECODE too: a Space's pip byte-compiles what it installs, uv does not unless asked, so the
# simulation lets its first imports (the import check) write the .pyc files its app then reads, as a Space's would.
SET_BY_THE_USER = ("CXR_HOST", "CXR_PORT", "CXR_RUNTIME", "CXR_SEARCH_WORKERS", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")


# What a Space imports: every module of the app's layers (``scale`` needs requirements-scale.txt).
APP_PACKAGES = ("data", "runtime", "evaluation", "model", "trust", "index", "pipeline", "webapp")
_IMPORT_ALL = """
import importlib, json, pkgutil, sys
failed = {}
names = [m.name for p in sys.argv[1:] for m in pkgutil.walk_packages([p], prefix=p + ".")] + ["train", "app"]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)[:200]
print(json.dumps({"n_modules": len(names), "failed": failed}))
"""


def import_check(py: Path, repo: Path) -> dict[str, Any]:
    """Import every module of the app's layers, ``train`` and ``app`` in the Space's venv: a dependency
    that requirements.txt lacks fails here even where the first start does not reach it (training,
    when the run is reused)."""
    env = {**{k: v for k, v in os.environ.items() if k not in SET_BY_THE_USER}, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(py), "-c", _IMPORT_ALL, *APP_PACKAGES], cwd=repo, env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        return {"n_modules": 0, "failed": {"<import check>": done.stderr[-500:]}}
    return json.loads(done.stdout.strip().splitlines()[-1])


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket LISTENing on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read() if response.status == 200 else None
    except OSError:
        return None


def start_space(py: Path, repo: Path, cache: Path, port: int, timeout: float) -> dict[str, Any]:
    """``SPACE_ID=test python app.py`` in the copy; watch the page, the binding, memory; query once."""
    env = {k: v for k, v in os.environ.items() if k not in SET_BY_THE_USER}
    env.update({"SPACE_ID": "test", "GRADIO_SERVER_PORT": str(port), "CXR_CACHE": str(cache),
                "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    log_path = cache / "space-app.log"
    started = time.monotonic()
    out: dict[str, Any] = {"port": port, "first_page_s": None, "first_page_was_progress": None,
                           "search_ready_s": None, "bound_to": [], "peak_rss_mb": 0.0}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([str(py), "app.py"], cwd=repo, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            while time.monotonic() - started < timeout and proc.poll() is None:
                out["peak_rss_mb"] = max(out["peak_rss_mb"], tree_rss_mb(proc.pid))
                config = _get(f"http://127.0.0.1:{port}/config")
                if config is not None and out["first_page_s"] is None:
                    out["first_page_s"] = round(time.monotonic() - started, 1)
                    out["first_page_was_progress"] = b"build-progress" in config and b"search_text" not in config
                    out["bound_to"] = sorted(listening_addresses(port))
                if config is not None and b"search_text" in config:
                    out["search_ready_s"] = round(time.monotonic() - started, 1)
                    out["bound_to_when_ready"] = sorted(listening_addresses(port))
                    break
                time.sleep(1.0)
            if out["search_ready_s"] is not None:
                out["search_text"] = query_text(f"http://127.0.0.1:{port}/")
                out["peak_rss_mb"] = max(out["peak_rss_mb"], tree_rss_mb(proc.pid))
                out["rss_after_query_mb"] = tree_rss_mb(proc.pid)
        finally:
            out["exit_code_before_stop"] = proc.poll()
            stop_process(proc)
    out["log_tail"] = log_path.read_text()[-1500:]
    return out


def query_text(url: str, phrase: str = "small left pleural effusion") -> dict[str, Any]:
    """One call of the named endpoint, as a script would make it (gradio_client)."""
    from gradio_client import Client

    result = Client(url, verbose=False).predict(phrase, 8, "any", "any", "any", api_name="/search_text")
    records = result[3] if isinstance(result, (list, tuple)) and len(result) > 3 else None
    hits = records.get("hits", []) if isinstance(records, dict) else []
    return {"phrase": phrase, "n_hits": len(hits), "top_labels": [h.get("label") for h in hits[:3]]}


def run(reuse: str = "none", venv: str | None = None, python: str = "python3.11", timeout: float = 3600,
        port: int = SPACE_PORT, installer: str = "pip", check_imports: bool = False) -> dict[str, Any]:
    work = scratch_dir("space-sim-")
    repo = copy_repository(work / "repo")
    cache = work / "cache"
    cache.mkdir()
    report: dict[str, Any] = {"reused": seed_cache(cache, reuse), "makefile_present": (repo / "Makefile").exists()}
    if venv:
        py, report["venv"] = Path(venv) / "bin" / "python", f"reused {venv} (install not timed)"
    else:
        log(f"space: fresh venv from requirements.txt ({installer}) ...")
        py, report["install_s"] = fresh_venv(work / "venv", python, installer)
        report["installer"] = installer
    if check_imports:
        report["imports"] = import_check(py, repo)
    log(f"space: SPACE_ID=test python app.py on port {port} ...")
    report.update(start_space(py, repo, cache, port, timeout))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reuse", choices=REUSE_LEVELS, default="none",
                   help="what of the default cache the Space's empty cache gets (none = a real first start)")
    p.add_argument("--venv", help="use this venv instead of a fresh one")
    p.add_argument("--installer", choices=("pip", "uv"), default="pip",
                   help="what installs requirements.txt into the fresh venv (pip: as a Space does; uv: the suite's)")
    p.add_argument("--python", default=shutil.which("python3.11") or sys.executable, help="the Space's Python 3.11")
    p.add_argument("--port", type=int, default=SPACE_PORT)
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args(argv)
    report = {"machine": machine(), "space": run(args.reuse, args.venv, args.python, args.timeout, args.port,
                                                     args.installer)}
    report["machine"]["load_average_at_end"] = machine()["load_average"]
    emit(report)
    return report


if __name__ == "__main__":
    main()
