"""The shared findings vocabulary: tag parsing for every source, and graded relevance."""
from __future__ import annotations

import pytest

from data.findings import (
    Finding,
    chexpert_tags,
    findings_from_tags,
    parse_tag,
    profile,
    relevance,
    shares_finding,
    side_credit,
)
from data.iu_xray import load_iu_reports
from data.records import Study


def test_iu_mesh_tags_parse_to_finding_side_location_severity():
    assert parse_tag("Pleural Effusion/left/small") == Finding("pleural effusion", "left", "", "mild")
    assert parse_tag("Airspace Disease/lung/left/retrocardiac") == Finding("opacity", "left", "retrocardiac")
    assert parse_tag("Opacity/lung/middle lobe/right") == Finding("opacity", "right", "middle")
    assert parse_tag("Opacity/lung/lingula") == Finding("opacity", "left", "middle")  # lingula is left
    assert parse_tag("Pulmonary Atelectasis/base/bilateral/mild").side == "bilateral"
    assert parse_tag("Opacity/lung/base/right/left") == Finding("opacity", "bilateral", "lower")
    assert parse_tag("Cardiomegaly/severe") == Finding("cardiomegaly", "", "", "severe")
    assert parse_tag("Cardiomegaly/left").side == ""  # not a lateral finding
    assert parse_tag("Lung/hypoinflation") == Finding("hypoinflation")
    assert parse_tag("Lung/base/left") is None  # a place, not a finding
    for non_finding in ("normal", "No Indexing", "Technical Quality of Image Unsatisfactory", "", " / "):
        assert parse_tag(non_finding) is None
    assert parse_tag("Some New Heading/right").name == "some new heading"  # open vocabulary: nothing dropped


def test_chexpert_rows_keep_uncertain_and_negative_apart():
    row = {"subject_id": "1", "study_id": "2", "Pleural Effusion": "1.0", "Edema": "-1.0",
           "Pneumothorax": "0.0", "Cardiomegaly": "", "No Finding": ""}
    tags = chexpert_tags(row)
    assert tags == ("Pleural Effusion", "Edema/uncertain", "Pneumothorax/negative")
    found = {f.name: f.certainty for f in findings_from_tags(tags)}
    assert found == {"pleural effusion": "positive", "edema": "uncertain", "pneumothorax": "negative"}
    assert chexpert_tags({"No Finding": "1.0", "Support Devices": "1.0"}) == ("normal",)
    study = Study("s", "p", ("a.jpg",), "", "", 1, tags=tags)
    assert study.finding_names == ("pleural effusion",)  # only positives are filterable findings


def test_every_real_iu_study_parses_and_abnormal_ones_mostly_have_findings():
    studies = load_iu_reports()
    abnormal = [s for s in studies if s.label == 1]
    with_findings = [s for s in abnormal if s.structured_findings]
    assert all(not s.structured_findings for s in studies if s.label == 0)
    assert len(with_findings) / len(abnormal) > 0.9
    lateral = [f for s in studies for f in s.structured_findings if f.name == "pleural effusion"]
    sides = {f.side for f in lateral}
    assert {"left", "right", "bilateral"} <= sides


def _p(*tags: str) -> dict:
    return profile(findings_from_tags(tags))


def test_relevance_grades_side_agreement():
    left = _p("Pleural Effusion/left")
    assert relevance(left, left) == 1.0
    assert relevance(_p(), _p()) == 1.0  # normal <-> normal
    assert relevance(_p(), left) == 0.0  # normal <-> abnormal
    assert relevance(left, _p("Pleural Effusion/right")) == 0.25  # side contradicts: partial only
    assert relevance(left, _p("Pleural Effusion")) == 0.5  # side unknown on one
    assert relevance(left, _p("Pleural Effusion/bilateral")) == 0.5  # overlap
    # weighted Jaccard: one of two names matched fully
    assert relevance(left, _p("Pleural Effusion/left", "Cardiomegaly")) == pytest.approx(0.5)
    assert relevance(_p("Cardiomegaly"), _p("Pneumothorax/right")) == 0.0
    # symmetric
    a, b = _p("Opacity/lung/base/right", "Cardiomegaly"), _p("Opacity/lung/lingula")
    assert relevance(a, b) == relevance(b, a) == pytest.approx(0.25 / 2)


def test_shares_finding_respects_side_and_normal():
    assert shares_finding(_p(), _p())
    assert not shares_finding(_p(), _p("Cardiomegaly"))
    assert shares_finding(_p("Pleural Effusion/left"), _p("Pleural Effusion/bilateral", "Nodule"))
    assert not shares_finding(_p("Pleural Effusion/left"), _p("Pleural Effusion/right"))
    assert shares_finding(_p("Pleural Effusion/left"), _p("Pleural Effusion"))  # unknown side: not a contradiction
    assert side_credit(frozenset({"left"}), frozenset({"right"})) == 0.25


def test_finding_round_trips_and_reads_as_text():
    f = Finding("pleural effusion", "left", "lower", "mild")
    assert Finding.from_dict(f.to_dict()) == f
    assert f.text == "mild left lower zone pleural effusion"
    assert Finding("edema", certainty="uncertain").text == "possible edema"
