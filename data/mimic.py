"""MIMIC-CXR-JPG loader: JPEGs + free-text reports + CheXpert labels (No Finding = normal).

Expected layout (PhysioNet): ``<root>/mimic-cxr-2.0.0-chexpert.csv[.gz]``,
``<root>/mimic-cxr-2.0.0-metadata.csv[.gz]``, images under
``<root>/files/pXX/p<subject>/s<study>/<dicom_id>.jpg`` and reports (from MIMIC-CXR) under
``<reports_root>/files/pXX/p<subject>/s<study>.txt``.
"""
from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path
from typing import Iterator

from data.findings import chexpert_tags
from data.records import ABNORMAL, NORMAL, Study

CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv"
FRONTAL_VIEWS = ("PA", "AP")
_SECTION = re.compile(r"^\s*([A-Z][A-Z /]+):", re.MULTILINE)


def load_mimic(root: Path | str, reports_root: Path | str | None = None, frontal_only: bool = True) -> list[Study]:
    """One Study per MIMIC study with a labelled report and at least one (frontal) image."""
    root = Path(root)
    reports_root = Path(reports_root) if reports_root is not None else root
    labels = {(r["subject_id"], r["study_id"]): r for r in _read_csv(root, CHEXPERT_FILE)}
    images: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in _read_csv(root, METADATA_FILE):
        view = (r.get("ViewPosition") or "").upper()
        if frontal_only and view not in FRONTAL_VIEWS:
            continue
        images.setdefault((r["subject_id"], r["study_id"]), []).append((r["dicom_id"], view))
    studies = []
    for (subject, study), row in sorted(labels.items()):
        imgs = images.get((subject, study))
        if not imgs:
            continue
        folder = Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        report_path = reports_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        if not report_path.is_file():
            continue
        findings, impression = split_report(report_path.read_text(errors="replace"))
        tags = chexpert_tags(row)  # positives, "/uncertain" (-1.0) and "/negative" (0.0), see data.findings
        normal = tags == ("normal",)
        studies.append(
            Study(
                study_id=f"s{study}",
                patient_id=f"p{subject}",
                image_paths=tuple(str(root / folder / f"{dicom}.jpg") for dicom, _ in imgs),
                findings=findings,
                impression=impression,
                label=NORMAL if normal else ABNORMAL,
                tags=tags,
                view=imgs[0][1],
            )
        )
    return studies


def split_report(text: str) -> tuple[str, str]:
    """FINDINGS and IMPRESSION sections of a free-text MIMIC report ('' when absent)."""
    sections: dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        sections[m.group(1).strip()] = re.sub(r"\s+", " ", text[m.end() : end]).strip()
    return sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")


def _read_csv(root: Path, name: str) -> Iterator[dict[str, str]]:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rt", newline="") as handle:
                yield from csv.DictReader(handle)
            return
    raise FileNotFoundError(f"{name}[.gz] not found under {root}")
