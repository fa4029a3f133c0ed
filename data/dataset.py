"""A dataset on disk: ``studies.jsonl`` (one Study per line, image paths relative to the
folder) plus ``dataset.json`` (name, version, counts). Written atomically."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.atomic_io import atomic_write_bytes, atomic_write_json
from data.records import Study

STUDIES_FILE = "studies.jsonl"
META_FILE = "dataset.json"


def save_dataset(folder: Path | str, studies: Sequence[Study], meta: dict[str, Any] | None = None) -> None:
    """Write the study list and its metadata; the metadata file is written last."""
    folder = Path(folder)
    lines = "".join(json.dumps(s.to_dict(), sort_keys=True) + "\n" for s in studies)
    atomic_write_bytes(folder / STUDIES_FILE, lines.encode())
    info = dict(meta or {})
    info.update({"n_studies": len(studies), "version": studies_fingerprint(studies)})
    atomic_write_json(folder / META_FILE, info)


def load_dataset(folder: Path | str) -> list[Study]:
    """Studies of a saved dataset, image paths made absolute."""
    folder = Path(folder)
    path = folder / STUDIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no dataset at {folder} (missing {STUDIES_FILE})")
    studies = []
    with path.open() as handle:
        for line in handle:
            if line.strip():
                d = json.loads(line)
                d["image_paths"] = [str(folder / p) if not os.path.isabs(p) else p for p in d.get("image_paths", [])]
                studies.append(Study.from_dict(d))
    return studies


def dataset_meta(folder: Path | str) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def studies_fingerprint(studies: Iterable[Study]) -> str:
    """Short hash of study ids, labels, texts and image file names: the data version in cache keys."""
    h = hashlib.sha256()
    for s in studies:
        h.update(json.dumps([s.study_id, s.label, s.report_text, [Path(p).name for p in s.image_paths]]).encode())
    return h.hexdigest()[:16]


def with_images(studies: Sequence[Study]) -> tuple[list[Study], list[Study]]:
    """Split studies into (those with a readable image file, those without): the one rule every
    loader's output and every index build applies."""
    usable, missing = [], []
    for study in studies:
        (usable if study.image_path and Path(study.image_path).is_file() else missing).append(study)
    return usable, missing
