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
    if (not (index_dir / "manifest.json").is_file() or _stale_store(index_dir)
            or not _has_frozen_vectors(index_dir)):
        log.info("[2/2] building the search index -> %s", index_dir)
        build_index_for_run(run_dir, index_dir)
    return run_dir, index_dir


def _stale_store(index_dir: Path) -> bool:
    """The demo index's metadata was written by older code (another schema): rebuild it from the
    cached features instead of failing (an index the user built is never rebuilt behind their back)."""
    from index.manifest import META
    from index.store import SCHEMA_VERSION, schema_version

    found = schema_version(index_dir / META)
    if found != SCHEMA_VERSION:
        log.info("the demo index's metadata is schema %s, this code writes %s: rebuilding it", found, SCHEMA_VERSION)
        return True
    return False


def _has_frozen_vectors(index_dir: Path) -> bool:
    """Indexes built before ``index.frozen`` lack the frozen vectors: rebuilt from cached features (seconds)."""
    import json

    try:
        return "frozen_images.npy" in json.loads((index_dir / "manifest.json").read_text()).get("files", {})
    except (OSError, ValueError):
        return False


def build_index_for_run(run_dir: Path, index_dir: Path, studies=None, progress: bool = True) -> None:
    """Index a run's gallery from the cached frozen features (no second backbone pass)."""
    import json

    from data.demo import demo_dir, load_demo_dataset
    from index.build import build_index, encoder_identity
    from model.features import embed_studies
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
    image_feats, text_feats = embed_studies(model.backbone, studies, progress=progress)
    build_index(
        index_dir,
        model.project_image_features(image_feats),
        model.project_text_features(text_feats),
        studies,
        encoder_identity(model),
        data_root=data_root,
        run_dir=run_dir,
        frozen_image_feats=image_feats,
    )


if __name__ == "__main__":  # `python -m webapp.bootstrap`: build the offline default ahead of time
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print("offline demo ready: run %s, index %s" % ensure_demo())
