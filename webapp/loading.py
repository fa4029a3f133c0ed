"""Loading the search service from app.py's options: in the app, and in its search worker processes.

Why a module of its own: ``webapp.search_workers`` starts worker processes that load the same
service from the same options; the loader must be importable by name in a fresh (spawned)
process, which a function of the ``__main__`` script is not reliably.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data.errors import InputError

log = logging.getLogger(__name__)


def load_service(args: argparse.Namespace, train_args: list[str] | None = None, with_maps: bool = True):
    """Build (first start) or load the model, the index and the plots (``with_maps``)."""
    from index.engine import SearchEngine
    from model.retrieval_model import RetrievalModel
    from pipeline.demo import ensure_demo
    from webapp.plots import EmbeddingMaps
    from webapp.service import RunInfo, SearchService

    if args.bundle:
        from index.bundle import open_bundle

        bundle = open_bundle(args.bundle)  # checksums verified; a hub id fails fast offline
        run_dir, index_dir = bundle.run_dir, bundle.index_dir
        args.data_root = args.data_root or bundle.data_root
    elif args.run and args.index:
        run_dir, index_dir = Path(args.run), args.index  # a folder or milvus://...
    elif args.run or args.index:
        raise InputError("give both --run and --index, or neither for the offline demo")
    else:
        run_dir, index_dir = ensure_demo(train_args=train_args)
    log.info("loading the model and index")
    model = RetrievalModel.from_run(run_dir, backbone_path=args.backbone_path)
    engine = SearchEngine.load(index_dir, model, data_root=args.data_root)  # a folder or milvus://
    maps = None
    if with_maps:
        impressions = {m.study_id: m.impression or m.findings for m in engine.store.all()}
        maps = EmbeddingMaps.load(run_dir / "embedding_map.json", impressions)
    service = SearchService(engine, RunInfo.load(run_dir), maps, keep_uploads=args.keep_uploads)
    service.text_mode = getattr(args, "text_mode", None) or service.text_mode
    service.loaded_from = (str(run_dir), str(index_dir))
    return service


def load_worker_service(args: argparse.Namespace):
    """The service in a search worker: the app's runtime, no embedding maps (text search does not draw them)."""
    from runtime.option import apply_runtime_argument

    apply_runtime_argument(args)
    return load_service(args, with_maps=False)
