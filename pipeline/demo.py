"""The offline default: the demo data -> trained head -> index, built once and reused.

``python app.py`` with no options serves this, and ``python -m pipeline`` builds it ahead of
time. Every step is cached (phantoms, frozen features, the run folder, the index), so a second
start only loads, and a start after an interrupted build resumes where it stopped. Imports here
stay light (no torch) so the first start can serve its progress page before the heavy ones.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from data.paths import cache_root

log = logging.getLogger(__name__)


def default_run_dir() -> Path:
    """Where ``python train.py`` (no arguments) writes its run: the app's default model."""
    return cache_root() / "runs" / "offline-demo"


def default_index_dir() -> Path:
    return cache_root() / "indexes" / "offline-demo"


def demo_pending() -> bool:
    """True while the default run or its index is not built yet (the app's first start)."""
    return (not ((default_run_dir() / "config.json").is_file() and (default_index_dir() / "manifest.json").is_file())
            or outdated_demo_run(default_run_dir()))


def ensure_demo(run_dir: Path | None = None, index_dir: Path | None = None,
                train_args: list[str] | None = None) -> tuple[Path, Path]:
    """Build whatever of the offline demo is missing through the pipeline; returns (run_dir, index_dir).

    No run yet, or one trained on another offline tower (``outdated_demo_run``): every step
    (``pipeline.steps.train_run`` with ``--index``). A run but no index, or one written by older
    code: the index step alone, from the cached features (seconds to a minute)."""
    run_dir = Path(run_dir or default_run_dir())
    index_dir = Path(index_dir or default_index_dir())
    if not (run_dir / "config.json").is_file() or outdated_demo_run(run_dir):
        from pipeline.options import parse_training_args
        from pipeline.steps import train_run

        log.info("[1/2] training the projector head on the offline demo (first start only) -> %s", run_dir)
        train_run(parse_training_args(["--out", str(run_dir), "--index", str(index_dir), *(train_args or [])]))
    elif not (index_dir / "manifest.json").is_file() or outdated_demo_index(index_dir):
        from pipeline.steps import index_run, run_collection

        log.info("[2/2] indexing the run's studies -> %s", index_dir)
        studies, data_root = run_collection(run_dir)
        index_run(run_dir, index_dir, studies, data_root=data_root)
    return run_dir, index_dir


def outdated_demo_run(run_dir: Path) -> bool:
    """The demo run's head was trained on the features of another offline tower (an older pooling,
    ``model.offline_tower``): its checkpoint would be refused; or its knowledge input was read by an
    older phrase parser (``data.findings_text.PARSER_VERSION``): its reports' parsed findings differ
    from what a query's are now. Either way the demo is retrained and re-indexed. Runs of other
    backbones, and unreadable configs (the loader reports them), are kept."""
    from data.findings_text import PARSER_VERSION
    from model.offline_tower import OFFLINE_BACKBONE_ID

    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
        name, found = config.get("backbone_name"), config.get("backbone_id")
        parser = (config.get("versions") or {}).get("phrase_parser", 1)
        knowledge = bool((config.get("head") or {}).get("knowledge_dim"))
    except (OSError, ValueError, AttributeError):
        return False
    if name == "offline" and found != OFFLINE_BACKBONE_ID:
        log.info("the demo run was trained on %s; this code's offline tower is %s: retraining it", found, OFFLINE_BACKBONE_ID)
        return True
    if name == "offline" and knowledge and parser != PARSER_VERSION:
        log.info("the demo run read its reports with phrase parser v%s; this code's is v%s: retraining it", parser,
                 PARSER_VERSION)
        return True
    return False


def outdated_demo_index(index_dir: Path) -> bool:
    """The demo index was written by older code: another metadata schema or report reader, or no frozen vectors
    (``index.frozen``) or familiarity model (``trust.familiarity``). It is rebuilt from the cached
    features instead of failing; an index the user built is never rebuilt behind their back. A
    damaged index is left for the loader to report."""
    from index.frozen import FROZEN_IMAGES
    from index.manifest import FAMILIARITY, MANIFEST, META
    from data.report_findings import READER_VERSION
    from index.store import SCHEMA_VERSION, report_reader_version, schema_version

    try:  # only the list of files: verifying them is the loader's job
        files = json.loads((index_dir / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return False
    found, reader = schema_version(index_dir / META), report_reader_version(index_dir / META)
    missing = [name for name in (FROZEN_IMAGES, FAMILIARITY) if name not in files]
    if found != SCHEMA_VERSION or (found is not None and reader != READER_VERSION) or missing:
        log.info("the demo index is outdated (schema %s, report reader %s; this code writes %s, %s; missing %s): "
                 "rebuilding it", found, reader, SCHEMA_VERSION, READER_VERSION, ", ".join(missing) or "nothing")
        return True
    return False
