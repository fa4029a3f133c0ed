"""Plain CSV manifest loader: ``image_path,report,label[,patient_id,view,study_id,impression,tags]``.

For any collection that is neither IU X-ray nor MIMIC. Bad rows are reported and skipped,
never fatal: a 10,000-row manifest with three missing files still loads 9,997 studies.

Columns: ``image_path`` (relative to the CSV's folder or absolute), ``report`` (the findings text),
``label`` (``0``/``1``/``normal``/``abnormal``) are required. Optional: ``patient_id`` (default: the
study id, so the split is study-level), ``view`` (upper-cased), ``study_id`` (default ``row<N>``),
``impression`` and ``tags``.

``tags`` holds the study's findings, ``;``-separated, each in the tag syntax of
:mod:`data.findings` (``finding[/qualifier]...``, case-insensitive), e.g.
``pleural effusion/left/small;cardiomegaly``. Qualifiers give the side (``left``, ``right``,
``bilateral``), a size (``small``/``mild``, ``moderate``, ``large``/``severe``), a zone (``upper lobe``,
``middle lobe``, ``lower lobe``, ``base``, ``apex``, ``hilum``, ``retrocardiac``) and a certainty
(``uncertain``, ``negative``). Each tag is kept verbatim on ``Study.tags`` and read as a
:class:`data.findings.Finding` by ``Study.structured_findings``; ``normal`` marks a study with no
finding.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from data.errors import ManifestError  # noqa: F401 (defined in data.errors, re-exported)
from data.records import ABNORMAL, NORMAL, Study

REQUIRED_COLUMNS = ("image_path", "report", "label")
_LABELS = {"0": NORMAL, "normal": NORMAL, "1": ABNORMAL, "abnormal": ABNORMAL}


@dataclass
class ManifestLoad:
    studies: list[Study]
    skipped: list[str] = field(default_factory=list)  # "row 7: image not found: a.png"


def load_manifest(path: Path | str, check_images: bool = True) -> ManifestLoad:
    """Studies of a CSV manifest; relative image paths resolve against the CSV's folder.

    One study per row. ``patient_id`` defaults to the study id (one study per patient), which
    keeps the split patient-disjoint only if that is true: give the column when it is not.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(
                f"manifest {path.name} lacks required column(s) {', '.join(missing)}; "
                f"found {', '.join(columns) or 'none'} (need {', '.join(REQUIRED_COLUMNS)})"
            )
        result = ManifestLoad(studies=[])
        seen: set[str] = set()
        for row_number, raw in enumerate(reader, start=2):  # row 1 is the header
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            problem = _row_problem(row, path.parent, check_images)
            study_id = row.get("study_id") or f"row{row_number}"
            if problem is None and study_id in seen:
                problem = f"duplicate study_id {study_id}"
            if problem:
                result.skipped.append(f"row {row_number}: {problem}")
                continue
            seen.add(study_id)
            result.studies.append(
                Study(
                    study_id=study_id,
                    patient_id=row.get("patient_id") or study_id,
                    image_paths=(str(_resolve(row["image_path"], path.parent)),),
                    findings=row["report"],
                    impression=row.get("impression", ""),
                    label=_LABELS[row["label"].lower()],
                    tags=tuple(t.strip() for t in row.get("tags", "").split(";") if t.strip()),
                    view=row.get("view", "").upper(),
                )
            )
    return result


def _row_problem(row: dict[str, str], root: Path, check_images: bool) -> str | None:
    if not row.get("image_path"):
        return "empty image_path"
    if not row.get("report"):
        return "empty report"
    if row.get("label", "").lower() not in _LABELS:
        return f"label {row.get('label')!r} is not one of 0, 1, normal, abnormal"
    if check_images and not _resolve(row["image_path"], root).is_file():
        return f"image not found: {row['image_path']}"
    return None


def _resolve(image_path: str, root: Path) -> Path:
    p = Path(image_path)
    return p if p.is_absolute() else root / p
