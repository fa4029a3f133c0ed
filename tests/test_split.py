"""Split by patient: disjoint, seeded, stable across runs and saved; patient- vs study-level."""
from __future__ import annotations

from data.records import Study
from data.split import SPLITS, load_or_create_split, patient_split, split_hash, split_level


def _studies(n_patients: int = 300, per_patient: int = 3) -> list[Study]:
    return [
        Study(study_id=f"s{p}_{k}", patient_id=f"p{p}", image_paths=(f"{p}_{k}.png",), findings="x",
              impression="y", label=(p + k) % 2)
        for p in range(n_patients) for k in range(per_patient)
    ]


def test_split_is_patient_disjoint_and_complete():
    studies = _studies()
    split = patient_split(studies, seed=0)
    patient_of = {s.study_id: s.patient_id for s in studies}
    patients = {k: {patient_of[i] for i in split[k]} for k in SPLITS}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sorted(i for k in SPLITS for i in split[k]) == sorted(s.study_id for s in studies)
    assert len(patients["train"]) == 240 and len(patients["val"]) == 30 and len(patients["test"]) == 30


def test_split_is_stable_and_seeded():
    studies = _studies()
    a, b = patient_split(studies, seed=0), patient_split(list(reversed(studies)), seed=0)
    assert {k: set(v) for k, v in a.items()} == {k: set(v) for k, v in b.items()}  # order-independent
    assert split_hash(a) == split_hash(b)
    assert split_hash(a) != split_hash(patient_split(studies, seed=1))


def test_adding_patients_does_not_move_existing_ones():
    base = _studies(200)
    grown = base + _studies(260)[600:]
    a, b = patient_split(base), patient_split(grown)
    moved = [i for k in SPLITS for i in a[k] if i not in b[k]]
    assert len(moved) < 0.1 * len(base)  # rank-based cut: only patients near the boundaries move


def test_saved_split_is_reused(tmp_path):
    studies = _studies(50)
    path = tmp_path / "split.json"
    first = load_or_create_split(path, studies, seed=3)
    mtime = path.stat().st_mtime_ns
    again = load_or_create_split(path, studies, seed=3)
    assert again == first and path.stat().st_mtime_ns == mtime


def test_split_level_is_patient_only_when_patient_ids_are_given():
    from data.iu_xray import load_iu_reports

    assert split_level(_studies()) == "patient"
    # IU X-ray gives no patient ids (its DICOM "Patient ID" is the report number): study-level.
    assert split_level(load_iu_reports()) == "study"
    one = Study(study_id="a", patient_id="a", image_paths=("a.png",), findings="x", impression="", label=0)
    assert split_level([one]) == "study"
    assert split_level([one, Study(**{**one.__dict__, "study_id": "b", "patient_id": "p1"})]) == "patient"
    assert split_level([]) == "study"
