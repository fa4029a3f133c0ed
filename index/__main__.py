"""Command line: build an index for a trained run, add new studies to one, or describe one.

    python -m index build --run RUN_DIR --out INDEX_DIR [--data DATA_DIR] [--batch-size 64]
    python -m index build ... --engine ray | --out milvus://...   (scale.cli: Ray ingest, Milvus)
    python -m index embed --backbone NAME --shards DIR [--workers N] (features once, for train.py --features)
    python -m index add   --index INDEX_DIR --data DATA_DIR [--run RUN_DIR]
    python -m index info  --index INDEX_DIR
    python -m index build --run RUN_DIR --dicomweb URL --out INDEX_DIR   (a PACS: index.pacs_cli)
    python -m index sync  --index INDEX_DIR --dicomweb URL                (its new studies)

Data options are the shared ones of ``data.sources`` (default: the offline demo dataset).
``build`` is the index step of the build pipeline (``pipeline.steps.index_run``: frozen features
from the cache train.py filled or from Ray's shards, then the run's head, to a folder or Milvus);
``add`` grows either through the same builder (``index.build``). This file only parses arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from data.errors import LOAD_ERRORS, InputError, one_line
from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from runtime.option import add_runtime_argument, apply_runtime_argument


def _load_encoder(run_dir: str, backbone_path: str | None = None):
    from model.retrieval_model import RetrievalModel

    return RetrievalModel.from_run(run_dir, backbone_path=backbone_path)


def _parser() -> argparse.ArgumentParser:
    from data.sources import add_data_arguments
    from index import pacs_cli
    from scale import cli as scale_cli

    parser = argparse.ArgumentParser(prog="python -m index", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="embed a dataset with a trained run and build its index")
    build.add_argument("--run", required=True, help="trained run folder (model.retrieval_model)")
    build.add_argument("--out", required=True, help="index folder to (re)write atomically, or milvus://PATH.db#NAME")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--backbone-path", metavar="DIR", help="local copy of the run's backbone weights (no hub)")
    add_runtime_argument(build)
    build.add_argument("--M", type=int, default=DEFAULT_M, help="hnsw graph degree")
    build.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION)
    build.add_argument("--ef", type=int, default=None,
                       help=f"hnsw query beam width (default: the smallest reaching recall@10 >= 0.98, measured at "
                            f"build; {DEFAULT_EF} is only the graph's start)")
    scale_cli.add_build_arguments(build)
    add_data_arguments(build)
    pacs_cli.add_source_arguments(build)  # --- PACS source (issue 27): index.pacs_cli

    add = sub.add_parser("add", help="embed studies not yet in an index and add them (no rebuild)")
    add.add_argument("--index", required=True, help="existing index folder or milvus://... address")
    add.add_argument("--run", help="trained run folder (default: the one the index was built from)")
    add.add_argument("--batch-size", type=int, default=64)
    add.add_argument("--backbone-path", metavar="DIR", help="local copy of the run's backbone weights (no hub)")
    add_runtime_argument(add)
    add_data_arguments(add)
    pacs_cli.add_source_arguments(add)
    pacs_cli.add_sync_command(sub)  # --- end PACS source

    scale_cli.add_embed_command(sub)

    info = sub.add_parser("info", help="print an index's manifest after verifying its files")
    info.add_argument("--index", required=True)
    return parser


def _report_reader_line(folder: Path) -> None:
    """Say on stderr which report reader read the index's reports, and when this code reads them differently."""
    from data.report_findings import READER_VERSION
    from index.manifest import META
    from index.store import report_reader_version

    reader = report_reader_version(Path(folder) / META)
    if reader is None:
        return
    note = "" if reader == READER_VERSION else f" (this code reads reports as v{READER_VERSION}: rebuild the index to re-read them)"
    print(f"report reader: v{reader}{note}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    apply_runtime_argument(args)
    try:
        return _run(args)
    except LOAD_ERRORS as exc:  # the inputs' fault (data.errors): one line, exit 2
        print(one_line(exc), file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from index.build import add_from_encoder
    from index.manifest import read_manifest, verify_files
    from index.vector_store import artifacts_dir

    if args.command == "info":
        manifest = read_manifest(artifacts_dir(args.index))
        verify_files(artifacts_dir(args.index), manifest)
        print(f"studies: {manifest.count}", file=sys.stderr)  # stdout stays one JSON document for scripts
        _report_reader_line(artifacts_dir(args.index))
        print(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
        return 0
    from index import pacs_cli

    if pacs_cli.wants_pacs(args):  # build/add/sync --dicomweb URL (issue 27)
        return pacs_cli.run(args, _load_encoder)
    from data.sources import load_source
    from scale import cli as scale_cli
    from pipeline.steps import data_root_for, index_run

    source = load_source(args)
    if args.command == "embed":
        return scale_cli.run_embed(args, source)
    if args.command == "build":
        encoder = _load_encoder(args.run, args.backbone_path)
        shards = scale_cli.shards_for_build(args, source.studies, encoder)
        manifest = index_run(args.run, args.out, source.studies, data_root=data_root_for(args, source.studies),
                             batch_size=args.batch_size, encoder=encoder, shards=shards,
                             M=args.M, ef_construction=args.ef_construction, ef=args.ef)
        skipped = f" ({len(source.skipped)} rows skipped, listed above)" if source.skipped else ""
        print(f"built {args.out}: {manifest.count} studies{skipped}, backbone {manifest.backbone_id}")
    else:
        run_dir = args.run or read_manifest(artifacts_dir(args.index)).run_dir
        if not run_dir:
            raise InputError("the index does not record its run folder; pass --run RUN_DIR")
        encoder = _load_encoder(run_dir, args.backbone_path)
        manifest, added = add_from_encoder(args.index, encoder, source.studies, batch_size=args.batch_size)
        print(f"added {added} studies to {args.index}: now {manifest.count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
