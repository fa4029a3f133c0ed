"""IU X-ray report parsing on the real reports torchxrayvision ships."""
from __future__ import annotations

import pytest

from data.iu_xray import load_iu_reports, parse_report
from data.records import ABNORMAL, NORMAL, finding_names


@pytest.fixture(scope="module")
def reports():
    return load_iu_reports()


def test_counts_on_shipped_reports(reports):
    assert len(reports) == 3955
    assert sum(s.label == NORMAL for s in reports) == 1391
    assert sum(len(s.image_paths) for s in reports) == 7470
    assert len({s.study_id for s in reports}) == 3955


def test_hand_checked_normal_report(reports):
    cxr1 = next(s for s in reports if s.study_id == "CXR1")
    assert cxr1.label == NORMAL
    assert cxr1.tags == ("normal",)
    assert cxr1.finding_names == ()
    assert cxr1.impression == "Normal chest x-XXXX."
    assert cxr1.findings.startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    assert cxr1.image_paths == ("CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png")


def test_hand_checked_left_effusion_report(reports):
    # Read by hand from ecgen-radiology/372.xml.
    s = next(s for s in reports if s.study_id == "CXR372")
    assert s.label == ABNORMAL
    assert s.tags == (
        "Airspace Disease/lung/left/retrocardiac",
        "Costophrenic Angle/posterior/blunted",
        "Catheters, Indwelling/right",
        "Pleural Effusion/left/small",
    )
    assert s.finding_names == ("opacity", "blunted costophrenic angle", "support device", "pleural effusion")
    assert "Small left pleural effusion." in s.impression
    assert len(s.image_paths) == 3


def test_label_is_normal_only_when_mesh_is_exactly_normal():
    xml = """<eCitation><uId id="CXR9"/><MedlineCitation><Article><Abstract>
      <AbstractText Label="FINDINGS">Heart is enlarged.</AbstractText>
      <AbstractText Label="IMPRESSION">Cardiomegaly.</AbstractText></Abstract></Article></MedlineCitation>
      <MeSH><major>normal</major><major>Cardiomegaly/mild</major></MeSH>
      <parentImage id="CXR9_IM-1"/></eCitation>"""
    s = parse_report(xml, image_dir=None)
    assert s.label == ABNORMAL
    assert s.finding_names == ("cardiomegaly",)
    assert s.image_paths == ("CXR9_IM-1.png",)
    assert s.report_text == "Findings: Heart is enlarged. Impression: Cardiomegaly."


def test_finding_names_drop_qualifiers_and_non_findings():
    assert finding_names(["No Indexing", "Opacity/lung/base/right", "Opacity/lung/apex/left", "normal"]) == ("opacity",)


def test_reads_an_extracted_folder_too(tmp_path):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    (folder / "2.xml").write_text('<eCitation><uId id="CXR2"/><MeSH><major>normal</major></MeSH></eCitation>')
    (folder / "10.xml").write_text('<eCitation><uId id="CXR10"/><MeSH><major>Nodule</major></MeSH></eCitation>')
    studies = load_iu_reports(folder, image_dir=tmp_path / "png")
    assert [s.study_id for s in studies] == ["CXR2", "CXR10"]  # numeric order, not string order
    assert [s.label for s in studies] == [NORMAL, ABNORMAL]
