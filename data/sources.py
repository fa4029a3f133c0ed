"""One entry point from command-line data options to a list of studies with images.

train.py, the index CLI and the app all resolve their data here, so "the demo", "IU X-ray",
"MIMIC" and "a CSV manifest" mean the same thing everywhere.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

from data.dataset import load_dataset, studies_fingerprint, with_images
from data.errors import InputError
from data.paths import cache_root
from data.records import Study

log = logging.getLogger(__name__)


@dataclass
class DataSource:
    studies: list[Study]
    name: str  # short slug for default run names: "demo", "iu", "mimic", "manifest", "dataset"
    skipped: list[str] = field(default_factory=list)

    def split_path(self, seed: int) -> Path:
        """Where this data's split lives (patient- or study-level, see data.split): shared by every model trained on it."""
        return cache_root() / "splits" / f"{self.name}-{studies_fingerprint(self.studies)}-s{seed}.json"


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data (default: the offline demo dataset)")
    g.add_argument("--data", metavar="DIR", help="a saved dataset folder (studies.jsonl), e.g. a built demo")
    g.add_argument("--iu-reports", metavar="PATH", help="IU X-ray ecgen-radiology folder or .tgz")
    g.add_argument("--iu-images", metavar="DIR", help="IU X-ray NLMCXR_png folder (with --iu-reports)")
    g.add_argument("--mimic", metavar="DIR", help="MIMIC-CXR-JPG root (chexpert + metadata CSVs, files/)")
    g.add_argument("--mimic-reports", metavar="DIR", help="MIMIC-CXR reports root, if not under --mimic")
    g.add_argument("--manifest", metavar="CSV", help="CSV manifest: image_path,report,label[,patient_id,view]")
    g.add_argument("--demo-limit", type=int, metavar="N", help="use only the first N demo studies (quick runs)")
    g.add_argument("--demo-seed", type=int, default=0, help="seed of the demo phantoms")


def load_source(args: argparse.Namespace) -> DataSource:
    """Studies named by the data arguments; studies without a readable image path are dropped."""
    if args.manifest:
        from data.manifest import load_manifest

        loaded = load_manifest(args.manifest)
        for problem in loaded.skipped:
            log.warning("manifest %s", problem)
        return DataSource(loaded.studies, "manifest", loaded.skipped)
    if args.mimic:
        from data.mimic import load_mimic

        return DataSource(load_mimic(args.mimic, args.mimic_reports), "mimic")
    if args.iu_reports:
        from data.iu_xray import load_iu_reports

        if not args.iu_images:
            raise InputError("--iu-reports needs --iu-images (the NLMCXR_png folder)")
        usable, missing = with_images(load_iu_reports(args.iu_reports, args.iu_images))
        if not usable:
            raise InputError(f"no IU images found under {args.iu_images}")
        return DataSource(usable, "iu", [f"{s.study_id}: no image found" for s in missing])
    if args.data:
        return DataSource(load_dataset(args.data), "dataset")
    from data.demo import load_demo_dataset

    studies = load_demo_dataset(seed=args.demo_seed, limit=args.demo_limit)
    name = "demo" if not args.demo_limit else f"demo{args.demo_limit}"
    return DataSource(studies, name)
