"""The offline default: data -> trained head -> index, built once and reused.

``python app.py`` with no options serves this. Each step is cached (phantoms, frozen
features, the run folder, the index), so a second start only loads, and a start after an
interrupted build resumes where it stopped.
"""
from __future__ import annotations

import logging
from pathlib import Path

from data.paths import cache_root

log = logging.getLogger(__name__)


def default_run_dir() -> Path:
    """Where ``python train.py`` (no arguments) writes its run: the app's default model."""
    return cache_root() / "runs" / "offline-demo"


def default_index_dir() -> Path:
    return cache_root() / "indexes" / "offline-demo"


def ensure_demo(run_dir: Path | None = None, index_dir: Path | None = None, train_args: list[str] | None = None) -> tuple[Path, Path]:
    """Build whatever of the offline demo is missing; returns (run_dir, index_dir)."""
    run_dir = Path(run_dir or default_run_dir())
    index_dir = Path(index_dir or default_index_dir())
    if not (run_dir / "config.json").is_file():
        log.info("[1/2] training the projector head on the offline demo (first start only) -> %s", run_dir)
        import train

        train.main(["--out", str(run_dir), *(train_args or [])])
    if not (index_dir / "manifest.json").is_file() or _outdated_demo_index(index_dir):
        log.info("[2/2] building the search index -> %s", index_dir)
        build_index_for_run(run_dir, index_dir)
    return run_dir, index_dir


def _outdated_demo_index(index_dir: Path) -> bool:
    """The demo index was written by older code: another metadata schema, or no frozen vectors
    (``index.frozen``) or familiarity model (``index.familiarity``). It is rebuilt from the cached
    features (seconds to a minute) instead of failing; an index the user built is never rebuilt
    behind their back. A damaged index is left for the loader to report."""
    import json

    from index.frozen import FROZEN_IMAGES
    from index.manifest import FAMILIARITY, MANIFEST, META
    from index.store import SCHEMA_VERSION, schema_version

    try:  # only the list of files: verifying them is the loader's job
        files = json.loads((index_dir / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return False
    found = schema_version(index_dir / META)
    missing = [name for name in (FROZEN_IMAGES, FAMILIARITY) if name not in files]
    if found != SCHEMA_VERSION or missing:
        log.info("the demo index is outdated (schema %s, this code writes %s; missing %s): rebuilding it",
                 found, SCHEMA_VERSION, ", ".join(missing) or "nothing")
        return True
    return False


def build_index_for_run(run_dir: Path, index_dir: Path, studies=None, progress: bool = True) -> None:
    """Index a run's gallery: the same path as ``python -m index build`` (``index.build.build_from_encoder``),
    whose frozen features come from train.py's cache, so nothing is embedded twice."""
    import json

    from data.demo import demo_dir, load_demo_dataset
    from index.build import build_from_encoder
    from model.retrieval_model import RetrievalModel

    config = json.loads((Path(run_dir) / "config.json").read_text())
    model = RetrievalModel.from_run(run_dir)
    data_root = None
    if studies is None:
        if not str(config.get("data", "")).startswith("demo"):
            raise ValueError(f"run {run_dir} was trained on {config.get('data')!r}; build its index with "
                             "`python -m index build --run RUN --data DIR`")
        limit = int(config["data"][4:]) if config["data"][4:].isdigit() else None
        studies = load_demo_dataset(limit=limit)
        data_root = demo_dir()
    build_from_encoder(index_dir, model, studies, data_root=data_root, run_dir=run_dir, progress=progress)


if __name__ == "__main__":  # `python -m webapp.bootstrap`: build the offline default ahead of time
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print("offline demo ready: run %s, index %s" % ensure_demo())
