"""CSV manifest and MIMIC-CXR-JPG loaders on small hand-made folders."""
from __future__ import annotations

import gzip

import pytest
from PIL import Image

from data.findings import Finding
from data.manifest import ManifestError, load_manifest
from data.mimic import load_mimic, split_report
from data.records import ABNORMAL, NORMAL


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (64, 64), 128).save(path)


def test_manifest_reports_bad_rows_and_keeps_the_rest(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text(
        "image_path,report,label,patient_id,view\n"
        "a.png,No acute disease.,normal,p1,pa\n"
        "missing.png,Left effusion.,abnormal,p2,PA\n"
        "b.png,Right upper lobe opacity.,1,p3,AP\n"
        "b.png,,0,p4,PA\n"
        "a.png,Something,maybe,p5,PA\n"
    )
    loaded = load_manifest(tmp_path / "m.csv")
    assert [s.label for s in loaded.studies] == [NORMAL, ABNORMAL]
    assert [s.patient_id for s in loaded.studies] == ["p1", "p3"]
    assert loaded.studies[0].view == "PA"
    assert loaded.studies[1].image_path == str(tmp_path / "b.png")
    assert loaded.skipped == [
        "row 3: image not found: missing.png",
        "row 5: empty report",
        "row 6: label 'maybe' is not one of 0, 1, normal, abnormal",
    ]


def test_manifest_missing_columns_named(tmp_path):
    (tmp_path / "m.csv").write_text("path,text\nx.png,hello\n")
    with pytest.raises(ManifestError, match="lacks required column\\(s\\) image_path, report, label"):
        load_manifest(tmp_path / "m.csv")


def test_mimic_layout(tmp_path):
    root = tmp_path / "mimic"
    root.mkdir()
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as f:
        f.write("subject_id,study_id,Pleural Effusion,No Finding\n10000032,50414267,,1.0\n10000033,50414268,1.0,\n")
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(
        "dicom_id,subject_id,study_id,ViewPosition\n"
        "d1,10000032,50414267,PA\nd2,10000032,50414267,LATERAL\nd3,10000033,50414268,AP\n"
    )
    for subject, study in (("10000032", "50414267"), ("10000033", "50414268")):
        report = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("EXAMINATION: CHEST\n\nFINDINGS: Small left\n effusion.\n\nIMPRESSION: Effusion.\n")
    studies = load_mimic(root)
    assert [(s.study_id, s.patient_id, s.label, s.view) for s in studies] == [
        ("s50414267", "p10000032", NORMAL, "PA"), ("s50414268", "p10000033", ABNORMAL, "AP")]
    assert studies[0].image_paths == (str(root / "files/p10/p10000032/s50414267/d1.jpg"),)  # lateral dropped
    assert studies[1].tags == ("Pleural Effusion",)
    assert studies[1].findings == "Small left effusion."


def test_split_report_sections():
    assert split_report("FINDINGS: a b\nIMPRESSION: c") == ("a b", "c")
    assert split_report("IMPRESSION: only") == ("", "only")


def test_manifest_tags_parse_to_structured_findings(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(
        "image_path,report,label,study_id,tags\n"
        'a.png,Small left effusion. Big heart.,abnormal,s1,"pleural effusion/left/small; Cardiomegaly ;"\n'
        "a.png,Possible right upper lobe opacity.,1,s2,opacity/upper lobe/right/uncertain\n"
        "a.png,Clear lungs.,normal,s3,normal\n"
        "a.png,No tags given.,normal,s4,\n"
    )
    s1, s2, s3, s4 = load_manifest(tmp_path / "m.csv").studies
    assert s1.tags == ("pleural effusion/left/small", "Cardiomegaly")
    assert s1.structured_findings == (
        Finding("pleural effusion", side="left", severity="mild"), Finding("cardiomegaly"))
    assert s1.finding_names == ("pleural effusion", "cardiomegaly")
    assert s2.structured_findings == (
        Finding("opacity", side="right", location="upper", certainty="uncertain"),)
    assert s2.finding_names == ()  # uncertain is not a positive finding
    assert s3.structured_findings == () and s4.structured_findings == () and s4.tags == ()
