"""The offline demo dataset: every real IU X-ray report paired with a synthetic PA phantom.

Why: the IU reports ship with torchxrayvision but their images do not, and nothing can be
downloaded here. ``data.phantom`` renders, for each report, a frontal radiograph whose findings
follow the report's MeSH tags, so the whole system (training, index, app) runs offline on
real report text with images that carry the reported findings.

Layout (``demo_dir()``): ``images/<study_id>.png`` (8-bit grayscale), ``studies.jsonl`` with
image paths relative to the folder, ``dataset.json`` (generator version, seed, size, source),
written last. Building is cached (a matching ``dataset.json`` with all images present returns
at once) and resumable (images already on disk are kept; each PNG is written atomically, so an
interrupted build leaves only whole files and stray temp files, which the next build removes).

Run ``python -m data.demo`` to build the full demo and print its timing as JSON.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from data.atomic_io import atomic_write_bytes
from data.dataset import META_FILE, STUDIES_FILE, dataset_meta, load_dataset, save_dataset
from data.paths import cache_root
from data.phantom import DEFAULT_SIZE, PHANTOM_VERSION, encode_png, render_phantom
from data.phantom.golden import renderer_id as phantom_renderer_id
from data.records import Study

DEMO_VERSION = 1  # bump whenever rendering changes: it is part of the cache folder name
SOURCE = "IU X-ray reports (torchxrayvision) + synthetic phantoms"
IMAGES_DIR = "images"
RENDERER_MARKER = "RENDERER"  # inside images/: which renderer drew the PNGs there
VIEW = "PA"


def demo_dir(seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
    """Cache folder of the demo rendered with ``seed`` at ``size`` px."""
    return cache_root() / f"demo-v{DEMO_VERSION}-s{seed}-{size}px"


def renderer_id() -> str:
    """PHANTOM_VERSION plus a hash of the golden-image hashes: images drawn by a renderer with other
    pixels are never reused, while edits that keep every pixel (comments, layout) keep the cache."""
    return phantom_renderer_id()


def demo_meta(seed: int, size: int, limit: int | None) -> dict[str, Any]:
    """What identifies a built demo; a folder whose dataset.json differs is rebuilt."""
    return {
        "name": "demo",
        "generator": "data.phantom",
        "demo_version": DEMO_VERSION,
        "phantom_version": PHANTOM_VERSION,
        "renderer": renderer_id(),
        "seed": int(seed),
        "size": int(size),
        "limit": None if limit is None else int(limit),
        "view": VIEW,
        "source": SOURCE,
    }


def image_relpath(study_id: str) -> str:
    return f"{IMAGES_DIR}/{study_id}.png"


def demo_study(study: Study) -> Study:
    """The report unchanged, pointed at its phantom (only image_paths and view change)."""
    return replace(study, image_paths=(image_relpath(study.study_id),), view=VIEW)


def build_demo_dataset(
    out_dir: Path | str | None = None,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    limit: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Render the phantoms of the IU reports (the first ``limit`` when given) into ``out_dir``.

    Returns the folder. Cached: returns at once when its dataset.json matches and every image is
    present. Resumable: only missing images are rendered.
    """
    out = Path(out_dir) if out_dir is not None else demo_dir(seed, size)
    meta = demo_meta(seed, size, limit)
    if _is_complete(out, meta):
        return out

    from data.iu_xray import load_iu_reports

    reports = load_iu_reports()
    if limit is not None:
        reports = reports[: max(0, int(limit))]
    images = out / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    _remove_stray_temp_files(images)
    # Images from another renderer id are re-rendered but rewritten only where their bytes differ:
    # identical files keep their mtime, so the feature cache (keyed by size + mtime) stays valid.
    verify = not _drawn_by(images, meta["renderer"])
    if verify:  # images of studies outside this build cannot be checked now: drop them
        _discard_images_except(images, {Path(image_relpath(s.study_id)).name for s in reports})
    todo = [s for s in reports if verify or not (out / image_relpath(s.study_id)).is_file()]
    _render_all(todo, out, seed, size, workers, progress, verify)
    if verify:
        atomic_write_bytes(images / RENDERER_MARKER, meta["renderer"].encode())
    save_dataset(out, [demo_study(s) for s in reports], meta=meta)
    return out


def load_demo_dataset(seed: int = 0, size: int = DEFAULT_SIZE, limit: int | None = None) -> list[Study]:
    """The demo studies (image paths absolute), building whatever is missing first.

    With ``limit``, a complete full demo already on disk is sliced instead of rewritten.
    """
    folder = demo_dir(seed, size)
    if limit is not None and _is_complete(folder, demo_meta(seed, size, None)):
        return load_dataset(folder)[: max(0, int(limit))]
    return load_dataset(build_demo_dataset(folder, seed=seed, size=size, limit=limit))


# ----------------------------------------------------------------------------- internals


def _is_complete(folder: Path, meta: dict[str, Any]) -> bool:
    """dataset.json matches ``meta`` and every image listed in studies.jsonl exists."""
    found = dataset_meta(folder)
    if not found or any(found.get(k) != v for k, v in meta.items()):
        return False
    studies_file = folder / STUDIES_FILE
    if not studies_file.is_file():
        return False
    n = 0
    with studies_file.open() as handle:
        for line in handle:
            if not line.strip():
                continue
            n += 1
            for rel in json.loads(line).get("image_paths", []):
                if not (folder / rel).is_file():
                    return False
    return n == found.get("n_studies")


STALE_TEMP_SECONDS = 120


def _remove_stray_temp_files(images: Path) -> None:
    """Temp files left by a killed writer (``atomic_write_bytes`` names them ``.<name>.*.tmp``).

    Only ones older than a couple of minutes: a fresh one may belong to a concurrent build."""
    now = time.time()
    for tmp in images.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
        except FileNotFoundError:
            pass


def _drawn_by(images: Path, renderer: str) -> bool:
    """The marker says this renderer drew every image there (written only once all were checked)."""
    marker = images / RENDERER_MARKER
    return marker.is_file() and marker.read_text().strip() == renderer


def _discard_images_except(images: Path, keep: set[str]) -> None:
    for png in images.glob("*.png"):
        if png.name not in keep:
            png.unlink(missing_ok=True)


def _tune_worker_malloc() -> None:
    """Pool initializer: keep freed numpy buffers in the heap instead of returning them to the OS.

    Each render allocates and frees ~20 MB of 0.5 MB arrays; with glibc's defaults every one is
    a fresh mmap, and the page faults cost ~14 ms of system time per image (about a third of the
    total). glibc only; elsewhere this is a no-op.
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError, TypeError):
        pass


def _render_to_file(job: tuple[str, tuple[str, ...], int, int, str, bool]) -> str:
    """Worker: render one study and write its PNG atomically (with ``verify``, only if it differs)."""
    study_id, tags, seed, size, path, verify = job
    png = encode_png(render_phantom(tags, seed=seed, study_id=study_id, size=size))
    if not (verify and Path(path).is_file() and Path(path).read_bytes() == png):
        atomic_write_bytes(Path(path), png)
    return study_id


def _render_all(studies: Sequence[Study], out: Path, seed: int, size: int, workers: int, progress: bool,
                verify: bool = False) -> None:
    from tqdm.auto import tqdm

    jobs = [(s.study_id, tuple(s.tags), int(seed), int(size), str(out / image_relpath(s.study_id)), verify)
            for s in studies]
    if not jobs:
        return
    bar = tqdm(total=len(jobs), desc="rendering demo phantoms", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(jobs) < 16:
            for job in jobs:
                _render_to_file(job)
                bar.update(1)
            return
        # "spawn": safe even when the parent already runs torch/gradio threads (fork is not).
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes=int(workers), initializer=_tune_worker_malloc) as pool:
            for _ in pool.imap_unordered(_render_to_file, jobs, chunksize=8):
                bar.update(1)
    finally:
        bar.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the offline demo dataset (IU reports + phantoms).")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the cache's demo folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--limit", type=int, default=None, help="only the first N reports")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folder = build_demo_dataset(args.out, seed=args.seed, size=args.size, limit=args.limit, workers=args.workers, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    meta = json.loads((folder / META_FILE).read_text())
    print(json.dumps({"dir": str(folder), "n_studies": meta["n_studies"], "seconds": round(seconds, 2), "workers": args.workers}))


if __name__ == "__main__":
    main()
