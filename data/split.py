"""Seeded train/val/test split by patient, saved so every model meets the same test studies.

It is a *patient-level* split only when the source gives patient ids distinct from its study ids
(MIMIC-CXR, a manifest with a ``patient_id`` column). IU X-ray has none (its DICOM "Patient ID" is
the report number), so there every "patient" is one study and the split is *study-level*:
:func:`split_level` says which, and train.py, eval.json and the app report it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence


from data.atomic_io import atomic_write_json
from data.records import Study

SPLITS = ("train", "val", "test")


def patient_split(
    studies: Sequence[Study], seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, list[str]]:
    """Assign whole patients to train/val/test; returns study ids per split.

    Where patient ids are just the study ids this is a study-level split (see :func:`split_level`).

    Patients are ordered by a seeded hash of their id, not by position, so adding studies
    does not reshuffle the patients already assigned.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    patients = sorted({s.patient_id for s in studies}, key=lambda p: _hash(p, seed))
    n = len(patients)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    assignment = {}
    for i, p in enumerate(patients):
        assignment[p] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    out: dict[str, list[str]] = {k: [] for k in SPLITS}
    for s in studies:
        out[assignment[s.patient_id]].append(s.study_id)
    return out


def split_hash(split: dict[str, list[str]]) -> str:
    """Identifies a split in checkpoints and eval reports."""
    payload = json.dumps({k: sorted(split[k]) for k in SPLITS}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def save_split(path: Path | str, split: dict[str, list[str]], seed: int) -> None:
    atomic_write_json(Path(path), {"seed": seed, "hash": split_hash(split), **{k: split[k] for k in SPLITS}})


def load_split(path: Path | str) -> dict[str, list[str]]:
    d = json.loads(Path(path).read_text())
    return {k: list(d[k]) for k in SPLITS}


def load_or_create_split(path: Path | str, studies: Sequence[Study], seed: int = 0) -> dict[str, list[str]]:
    """The saved split when it covers exactly these studies; otherwise a new one, saved."""
    path = Path(path)
    ids = {s.study_id for s in studies}
    if path.is_file():
        split = load_split(path)
        if {i for k in SPLITS for i in split[k]} == ids:
            return split
    split = patient_split(studies, seed=seed)
    save_split(path, split, seed)
    return split


def split_level(studies: Sequence[Study]) -> str:
    """"patient" when some study's patient id differs from its study id (the source gave patient
    ids, so splitting by them keeps each patient's studies together), else "study"."""
    return "patient" if any(s.patient_id != s.study_id for s in studies) else "study"


def _hash(patient_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()
