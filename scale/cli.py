"""The scale-out options of ``python -m index``: Ray ingest to Parquet shards, Milvus output.

    python -m index embed --backbone offline --shards DIR [--workers N] [--gpus-per-worker G]
                          [--ray-address ADDR] [data options]      # features once, for train.py --features DIR
    python -m index build --run RUN --out INDEX_DIR|milvus://PATH.db#NAME|milvus://HOST:PORT#NAME
                          --engine ray [--shards DIR] [...]        # shards (missing ones only) -> index

The index itself is written by the one builder (``index.build`` via ``pipeline.steps.index_run``)
whatever the engine and the output; this module only adds the Ray options and runs the ingest.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from data.errors import InputError


def _ray_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Ray ingest (scale.ray_ingest)")
    g.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (default: a local Ray)")
    g.add_argument("--workers", type=int, default=1, help="embedding actors (one backbone each)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per embedding actor")
    g.add_argument("--shards", metavar="DIR", help="Parquet feature shards (default: next to the feature cache)")
    g.add_argument("--shard-size", type=int, default=64, help="studies per Parquet shard (the unit of resume)")


def add_build_arguments(build: argparse.ArgumentParser) -> None:
    build.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="embed in this process, or on Ray into Parquet shards first")
    _ray_arguments(build)


def add_embed_command(sub) -> None:
    from data.sources import add_data_arguments

    embed = sub.add_parser("embed", help="write a collection's frozen features as Parquet shards on Ray")
    embed.add_argument("--backbone", default="offline", help="frozen backbone (as train.py --backbone)")
    embed.add_argument("--backbone-path", metavar="DIR", help="local copy of the backbone weights")
    embed.add_argument("--batch-size", type=int, default=32)
    _ray_arguments(embed)
    add_data_arguments(embed)


def _ingest(args: argparse.Namespace, studies, backbone, shards: Path, backbone_path: str | None) -> None:
    from scale import ray_ingest

    report = ray_ingest.ingest(
        studies, shards, backbone, ray_ingest.backbone_factory_for(backbone.name, backbone_path),
        workers=args.workers, gpus_per_worker=args.gpus_per_worker, address=args.ray_address,
        batch_size=min(args.batch_size, 32), shard_size=args.shard_size,
    )
    ray_ingest.shutdown()
    print(f"shards {shards}: embedded {len(report.embedded)}, already there {len(report.skipped)}, "
          f"bad images {len(report.bad)} ({report.seconds:.1f}s)")


def run_embed(args: argparse.Namespace, source) -> int:
    from model.factory import create_backbone

    if not args.shards:
        raise InputError("pass --shards DIR (then train.py --features DIR and index build --shards DIR)")
    backbone = create_backbone(args.backbone, path=args.backbone_path)
    _ingest(args, source.studies, backbone, Path(args.shards), args.backbone_path)
    return 0


def shards_for_build(args: argparse.Namespace, studies, encoder) -> Path | None:
    """``--engine ray``: the shard folder, its missing shards embedded on Ray (workers build the run's
    backbone from ``--backbone-path`` too); ``--engine local``: None (the shared feature cache)."""
    if args.engine != "ray":
        return None
    from scale import ray_ingest

    shards = Path(args.shards) if args.shards else ray_ingest.default_shards_dir(encoder, studies)
    _ingest(args, studies, encoder.backbone, shards, args.backbone_path)
    return shards
