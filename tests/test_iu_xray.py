"""IU X-ray report parsing on the real reports torchxrayvision ships."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from data.dataset import studies_fingerprint
from data.demo import demo_study
from data.iu_xray import frontal_first, image_view, load_iu_reports, parse_report, shipped_image_views
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


# ----------------------------------------------------------------------------- frontal image first


def test_shipped_dicom_metadata_views_counts():
    views = shipped_image_views()
    # PA 3,593 + AP 423 frontal; LL 717 + LATERAL 119 + RL 29 + LARGE LATERAL 2 lateral; blanks left out.
    assert Counter(views.values()) == {"PA": 3593, "AP": 423, "LATERAL": 717 + 119 + 29 + 2}


def test_frontal_image_comes_first_on_real_metadata(reports):
    by_id = {s.study_id: s for s in reports}
    # CXR37 lists its LATERAL image (…-0001) before its PA (…-0002): checked by hand in the metadata.
    assert by_id["CXR37"].image_paths == ("CXR37_IM-1847-0001-0002.png", "CXR37_IM-1847-0001-0001.png")
    assert by_id["CXR37"].view == "PA"
    # CXR57: LL then AP in the report -> the AP image first.
    assert by_id["CXR57"].image_path == "CXR57_IM-2170-1001-0002.png" and by_id["CXR57"].view == "AP"
    # CXR170: LATERAL, LARGE LATERAL, AP -> AP first, laterals keep their order.
    assert by_id["CXR170"].image_paths == (
        "CXR170_IM-0461-0001-0003.png", "CXR170_IM-0461-0001-0001.png", "CXR170_IM-0461-0001-0002.png")
    # CXR104 has only a lateral image: kept, and labelled as such so a view filter can drop it.
    assert by_id["CXR104"].image_paths == ("CXR104_IM-0031-0001-0002.png",) and by_id["CXR104"].view == "LATERAL"
    # CXR1's report names its images CXR1_1_IM-… while the metadata says CXR1_IM-…
    assert by_id["CXR1"].view == "PA"


def test_first_image_is_never_a_known_lateral_when_a_frontal_exists(reports):
    views = shipped_image_views()
    for s in reports:
        kinds = [image_view(Path(p).stem, views) for p in s.image_paths]
        if any(k in ("PA", "AP") for k in kinds):
            assert kinds[0] in ("PA", "AP"), s.study_id
        assert s.view == (kinds[0] if kinds else "")
    counts = Counter(s.view for s in reports)
    assert counts["PA"] + counts["AP"] == 2243 + 319  # frontal first: 2,562, vs 2,339 in report order (129 known laterals came first)
    assert sum(len(s.image_paths) for s in reports) == 7470  # nothing dropped


def test_views_and_order_without_metadata():
    ordered, view = frontal_first(["a", "b", "c", "d"], {"a": "LATERAL", "c": "AP"})
    assert (ordered, view) == (["c", "b", "d", "a"], "AP")
    assert frontal_first(["a"], {}) == (["a"], "")
    assert frontal_first([], {"a": "PA"}) == ([], "")


def test_demo_studies_keep_their_own_image_naming(reports):
    """The demo renders from tags and names each phantom by study id, so the frontal reordering
    leaves its studies (and so studies_fingerprint and every cache keyed by it) unchanged."""
    s = next(r for r in reports if r.study_id == "CXR37")
    d = demo_study(s)
    assert d.image_paths == ("images/CXR37.png",) and d.view == "PA"
    assert studies_fingerprint([d]) == studies_fingerprint([demo_study(replace(s, image_paths=s.image_paths[::-1], view=""))])
