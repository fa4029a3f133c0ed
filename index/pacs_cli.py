"""``python -m index build|add --dicomweb URL`` and ``python -m index sync``: the PACS options and their wiring.

Kept apart from ``index/__main__.py`` (which only calls ``add_source_arguments``, ``add_sync_command``,
``wants_pacs`` and ``run``) so the PACS source adds one block there, not a branch per option.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from data.errors import PacsError


def add_source_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """The DICOMweb source options, for ``build``, ``add`` and ``sync``."""
    group = parser.add_argument_group("PACS (DICOMweb) source")
    group.add_argument("--dicomweb", metavar="URL", required=required,
                       help="DICOMweb root of a PACS, e.g. http://localhost:8042/dicom-web (index its frontal CR/DX studies)")
    group.add_argument("--auth-file", metavar="JSON",
                       help='credentials: {"username": ..., "password": ...} or {"token": ...}')
    group.add_argument("--since", metavar="YYYYMMDD", help="only studies with StudyDate on or after this day")
    group.add_argument("--study-uids", metavar="UID[,UID...]", help="only these StudyInstanceUIDs (comma-separated)")
    group.add_argument("--reports-csv", metavar="CSV",
                       help="reports of studies without an SR: study_uid,findings[,impression]")
    group.add_argument("--in-flight", type=int, default=4, help="studies fetched at once over WADO-RS")
    group.add_argument("--quiet", action="store_true", help="no progress bars (skipped studies are still listed)")


def add_sync_command(sub: argparse._SubParsersAction) -> None:
    sync = sub.add_parser("sync", help="add a PACS's studies not yet in an index (idempotent, resumable)")
    sync.add_argument("--index", required=True, help="index folder built with --dicomweb")
    sync.add_argument("--run", help="trained run folder (default: the one the index was built from)")
    sync.add_argument("--batch-size", type=int, default=64)
    sync.add_argument("--backbone-path", metavar="DIR", help="local copy of the run's backbone weights (no hub)")
    add_source_arguments(sync, required=True)


def wants_pacs(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "dicomweb", None))


def run(args: argparse.Namespace, load_encoder: Callable[[str, str | None], object]) -> int:
    """Build, add or sync from the PACS; prints each skipped study with its reason, then the totals."""
    from data.dicomweb import PacsSource, read_report_csv
    from index.manifest import read_manifest
    from index.sync import build_from_pacs, sync_from_pacs

    source = PacsSource(args.dicomweb, auth_file=args.auth_file, reports=read_report_csv(args.reports_csv))
    uids = [u for u in (args.study_uids or "").split(",") if u.strip()] or None
    progress = not getattr(args, "quiet", False)
    if args.command == "build":
        source.check()  # reachable and authorised, before the model loads
        manifest, report = build_from_pacs(
            args.out, load_encoder(args.run, args.backbone_path), source, run_dir=args.run, since=args.since,
            study_uids=uids, in_flight=args.in_flight, batch_size=args.batch_size, progress=progress,
            M=args.M, ef_construction=args.ef_construction, ef=args.ef)
        verb = f"built {args.out}: {manifest.count} studies"
    else:
        run_dir = args.run or read_manifest(Path(args.index)).run_dir
        if not run_dir:
            raise PacsError("the index does not record its run folder; pass --run RUN_DIR")
        source.check()
        manifest, report = sync_from_pacs(
            args.index, load_encoder(run_dir, args.backbone_path), source, since=args.since, study_uids=uids,
            in_flight=args.in_flight, batch_size=args.batch_size, progress=progress)
        verb = f"added {report.indexed} studies to {args.index}: now {manifest.count}"
    for line in report.lines():
        print(line)
    print(verb)
    return 0
