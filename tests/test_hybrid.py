"""Hybrid text search (issue 23 §3-4): findings read from real IU report text, RRF fusion on
hand-built rankings, a ranking that never reads tags, modes on the engine, parse chips."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from data.findings import BILATERAL, LEFT, NEGATIVE, POSITIVE, RIGHT, UNCERTAIN, Finding
from data.iu_xray import load_iu_reports
from data.report_findings import affirmed_text, parse_query, report_findings
from index.build import build_index
from index.engine import SearchEngine
from index.fusion import Ranking, rrf
from index.hybrid import NOT_UNDERSTOOD, fuse
from index.report_findings import excluded, side_match, structured_ranking
from index.store import MetadataStore, write_store
from tests.test_index import FakeEncoder, identity
from webapp.text_query import chips, chips_html, with_side


@pytest.fixture(scope="module")
def reports():
    return {s.study_id: s for s in load_iu_reports()}


def said(text: str) -> set[tuple[str, str, str, str]]:
    return {(f.name, f.side, f.severity, f.certainty) for f in report_findings(text)}


def real(reports, study_id: str, text: str) -> str:
    s = reports[study_id]
    assert text in s.findings or text in s.impression, (study_id, text)
    return text


# ------------------------------------------------------------------------------ report text extraction
def test_no_cardiomegaly_with_bilateral_small_effusions(reports):
    # CXR546's impression, verbatim (its tags: Pleural Effusion/bilateral/small)
    text = real(reports, "CXR546", "no cardiomegaly with bilateral small pleural effusions.")
    assert said(text) == {("cardiomegaly", "", "", NEGATIVE), ("pleural effusion", BILATERAL, "mild", POSITIVE)}
    assert "cardiomegaly" not in affirmed_text(text) and "bilateral small pleural effusions" in affirmed_text(text)


def test_negation_scopes_over_a_list_and_stops_at_a_sentence(reports):
    text = real(reports, "CXR424", "There is no focal consolidation, pleural effusion, or pneumothorax.")
    assert said(text) == {("consolidation", "", "", NEGATIVE), ("pleural effusion", "", "", NEGATIVE),
                          ("pneumothorax", "", "", NEGATIVE)}
    assert affirmed_text(text) == ""
    s = reports["CXR546"]
    found = said(s.report_text)
    assert ("pneumonia", "", "", NEGATIVE) in found and ("nodule", "", "", NEGATIVE) in found
    assert ("pleural effusion", BILATERAL, "mild", POSITIVE) in found


def test_side_size_and_hedges_from_real_sentences(reports):
    text = real(reports, "CXR1496", "which may represent scarring alternatively small pleural effusions")
    assert ("pleural effusion", "", "mild", UNCERTAIN) in said(text)
    apex = next(s for s in reports.values() if "opacities in the left lung apex" in s.report_text)
    assert ("opacity", LEFT, "", POSITIVE) in said(apex.report_text)
    # a finding asserted in one sentence is not also listed as negated from another
    assert said("Small left pleural effusion. No pleural effusion on the right.") == {
        ("pleural effusion", LEFT, "mild", POSITIVE)}


def test_report_wordings_and_missing_spaces():
    assert ("cardiomegaly", "", "mild", POSITIVE) in said("Heart size is mildly enlarged.")
    assert ("elevated diaphragm", RIGHT, "", POSITIVE) in said("Low lung volumes with elevated right hemidiaphragm.")
    assert said("Stable cardiomegaly without acute cardiopulmonary abnormality.") == {("cardiomegaly", "", "", POSITIVE)}
    assert ("pneumothorax", "", "", NEGATIVE) in said("Heart size normal.No pneumothorax.")
    assert said("The aorta is normal.") == set()  # a bare anatomy word is not a finding


def test_a_cleared_finding_is_absent_and_an_attributed_one_takes_the_side_it_is_attributed_to(reports):
    """Report reader v2 (validation hybrid side-swaps were these two readings): CXR1181's cleared left base
    disease is not a left opacity; CXR3312's right middle lobe infiltrate "consistent with pneumonia" is
    a right pneumonia (its tags: Pneumonia/right), so neither answers a left-sided query."""
    cleared = real(reports, "CXR1181", "There has been clearing of the left base airspace disease.")
    assert said(cleared) == {("opacity", LEFT, "", NEGATIVE)}
    assert said("The left basilar opacity has cleared.") == {("opacity", LEFT, "", NEGATIVE)}
    attributed = real(reports, "CXR3312", "Right middle lobe infiltrate consistent with pneumonia.")
    assert {(n, side) for n, side, _, c in said(attributed) if c == POSITIVE} == {("opacity", RIGHT), ("pneumonia", RIGHT)}
    # a view's name is not a side: CXR1339 (tags: Pneumothorax/right/small) was read as bilateral
    decubitus = real(reports, "CXR1339", "Small 3.3 mm right-sided pneumothorax only visible on the left lateral "
                                         "decubitus film.")
    assert said(decubitus) == {("pneumothorax", RIGHT, "mild", POSITIVE)}  # "3.3 mm" no longer cuts "small" off
    # only where one thing is said to be another: a plain list keeps its unsided findings unsided
    assert ("cardiomegaly", "", "", POSITIVE) in said("Cardiomegaly consistent with the right pleural effusion history.")
    assert ("pneumonia", "", "", POSITIVE) in said("Right middle lobe infiltrate. Findings of pneumonia.")


def test_the_report_reader_version_is_recorded_and_an_older_demo_index_is_re_read(tmp_path):
    import sqlite3

    from data.report_findings import READER_VERSION
    from index.store import append_to_store, report_reader_version

    import json

    from index.frozen import FROZEN_IMAGES
    from index.manifest import FAMILIARITY, MANIFEST, META
    from pipeline.demo import outdated_demo_index

    path = tmp_path / META
    write_store(path, [_study(0, "Small left pleural effusion.")])
    assert report_reader_version(path) == READER_VERSION == 3
    (tmp_path / MANIFEST).write_text(json.dumps({"files": {FROZEN_IMAGES: {}, FAMILIARITY: {}, META: {}}}))
    assert not outdated_demo_index(tmp_path)
    conn = sqlite3.connect(path)
    with conn:  # a store written before the version was recorded
        conn.execute("DELETE FROM info WHERE key = 'report_reader'")
    conn.close()
    assert report_reader_version(path) == 1
    assert outdated_demo_index(tmp_path)  # the demo's index is re-read; a user's index is left as it is
    append_to_store(path, [_study(1, "Cardiomegaly.")])  # rows added later do not relabel the earlier ones
    assert report_reader_version(path) == 1
    assert report_reader_version(tmp_path / "missing.sqlite") is None


def test_query_parse():
    q = parse_query("small left pleural effusion, no pneumothorax")
    assert [(f.name, f.side, f.severity) for f in q.positive] == [("pleural effusion", LEFT, "mild")]
    assert [f.name for f in q.negated] == ["pneumothorax"]
    assert parse_query("retrocardiac opacity").positive[0].side == LEFT
    assert parse_query("the lungs are clear").normal
    assert not parse_query("zebra crossing").findings and not parse_query("zebra crossing").normal


# ----------------------------------------------------------------------------------------- fusion
def test_rrf_on_hand_built_rankings():
    dense = Ranking([1, 2, 3, 4])
    lexical = Ranking([3, 1, 9])
    structured = Ranking([3, 9, 2], [1.0, 1.0, 0.5])  # 3 and 9 tie: both rank 1, 2 ranks 3
    fused = rrf({"dense": dense, "lexical": lexical, "structured": structured}, k=60, tie_break="dense")
    expected = {1: 1 / 61 + 1 / 62, 2: 1 / 62 + 1 / 63, 3: 1 / 63 + 1 / 61 + 1 / 61, 4: 1 / 64, 9: 1 / 63 + 1 / 61}
    assert fused.ids == sorted(expected, key=lambda i: -expected[i]) == [3, 1, 9, 2, 4]
    assert fused.scores == pytest.approx([expected[i] for i in fused.ids])
    assert fused.channels[0] == ("dense", "lexical", "structured") and fused.channels[2] == ("lexical", "structured")
    assert structured.ranks() == {3: 1, 9: 1, 2: 3}
    # exclusion removes an item from every channel; weights scale a channel
    assert 3 not in rrf({"dense": dense, "lexical": lexical}, exclude={3}).ids
    heavy = rrf({"dense": dense, "structured": structured}, weights={"structured": 10.0}, tie_break="dense")
    assert heavy.ids == [3, 2, 9, 1, 4]  # 3: 10/61 + 1/63; 2: 10/63 + 1/62 > 9: 10/61; then dense only
    tied = rrf({"structured": Ranking([5, 6], [1.0, 1.0])}, tie_break="structured")
    assert tied.ids == [5, 6] and tied.scores[0] == tied.scores[1]  # equal grades, equal scores, stable order


def test_side_match_grades():
    assert side_match(LEFT, LEFT) == side_match("", RIGHT) == 1.0
    assert side_match(LEFT, BILATERAL) == side_match(BILATERAL, LEFT) == side_match(LEFT, "") == 0.5
    assert side_match(LEFT, RIGHT) == 0.0


def _store(tmp_path, studies, name="meta.sqlite") -> MetadataStore:
    write_store(tmp_path / name, studies)
    return MetadataStore.load(tmp_path / name)


def _study(i: int, text: str, tags: tuple[str, ...] = ()):
    from data.records import Study

    return Study(f"S{i}", f"P{i}", (f"/x/{i}.png",), text, "", int(bool(tags)), tags)


def test_structured_channel_and_exclusions(tmp_path):
    texts = ["Small left pleural effusion.", "Bilateral pleural effusions.", "Right pleural effusion.",
             "No pleural effusion.", "Possible left pleural effusion.", "Lungs are clear."]
    store = _store(tmp_path, [_study(i, t) for i, t in enumerate(texts)])
    ranking = structured_ranking(store.read, parse_query("small left pleural effusion"))
    grades = dict(zip(ranking.ids, ranking.scores))
    assert list(ranking.ids[:1]) == [0] and grades[0] == 1.0
    assert grades[1] == pytest.approx(0.5 * 0.8) and grades[4] == pytest.approx(0.5 * 0.8)  # bilateral; hedged
    assert 2 not in grades and 3 not in grades and 5 not in grades
    assert excluded(store.read, parse_query("left pleural effusion")) == {2}  # the opposite side only
    assert excluded(store.read, parse_query("no pleural effusion")) == {0, 1, 2}  # asserted ("possible" is not)
    normal = structured_ranking(store.read, parse_query("no acute cardiopulmonary abnormality"))
    assert set(normal.ids) == {3, 5}
    fused = fuse(store.read, "no pleural effusion", parse_query("no pleural effusion"), Ranking([2, 0, 3, 5, 4, 1]))
    assert not set(fused.fused.ids) & {0, 1, 2} and fused.fused.ids[0] == 3
    store.close()


# ------------------------------------------------------------------------ the engine: modes and tag blindness
@pytest.fixture(scope="module")
def iu_engines(tmp_path_factory, reports):
    """Two indexes of the same 300 real IU reports and vectors, one with every tag blanked."""
    studies = [replace(s, image_paths=(f"/x/{s.study_id}.png",)) for s in list(reports.values())[:300]]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(studies), 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    encoder = FakeEncoder()
    engines = []
    for name, items in (("tags", studies), ("blank", [replace(s, tags=()) for s in studies])):
        path = tmp_path_factory.mktemp(name) / "idx"
        build_index(path, emb, emb, items, identity(encoder))
        engines.append(SearchEngine.load(path, encoder))
    yield engines
    for e in engines:
        e.store.close()


PHRASES = ["small left pleural effusion", "right pneumothorax", "no pleural effusion", "cardiomegaly",
           "bilateral airspace opacities", "no acute cardiopulmonary abnormality", "left basilar atelectasis"]


def test_hybrid_ranking_is_unchanged_when_every_tag_is_blanked(iu_engines):
    with_tags, blank = iu_engines
    assert any(m.study.tags for m in with_tags.store.all()) and not any(m.study.tags for m in blank.store.all())
    for phrase in PHRASES:
        a = with_tags.search_by_text(phrase, k=20, mode="hybrid")
        b = blank.search_by_text(phrase, k=20, mode="hybrid")
        assert a.mode == "hybrid" and a.study_ids == b.study_ids, phrase
        assert [h.channels for h in a.hits] == [h.channels for h in b.hits]
        assert [round(h.score, 9) for h in a.hits] == [round(h.score, 9) for h in b.hits]


def test_hybrid_finds_what_the_reports_say_and_dense_does_not(iu_engines):
    engine = iu_engines[0]
    hybrid = engine.search_by_text("small left pleural effusion", k=5, mode="hybrid")
    dense = engine.search_by_text("small left pleural effusion", k=5, mode="dense")
    assert all(h.channels == ("dense",) for h in dense.hits) and dense.mode == "dense"
    top = hybrid.hits[0]
    assert "structured" in top.channels and top.to_dict()["channels"] == list(top.channels) and "tags" in top.to_dict()
    # CXR188 is the one report of the 300 saying "small left pleural effusion" (the dense vectors here are random)
    assert "CXR188" in hybrid.study_ids[:3] and "CXR188" not in dense.study_ids
    for hit in hybrid.hits:  # every hit's report states an effusion that is not right-sided only
        sides = {f.side for f in report_findings(hit.study.report_text)
                 if f.name == "pleural effusion" and f.certainty != NEGATIVE}
        assert sides and sides != {RIGHT}, hit.study_id
    negated = engine.search_by_text("no pleural effusion", k=20, mode="hybrid")
    for hit in negated.hits:
        assert not any(f.name == "pleural effusion" and f.certainty == POSITIVE for f in report_findings(hit.study.report_text))


def test_unreadable_phrase_falls_back_to_dense_and_says_so(iu_engines):
    engine = iu_engines[0]
    result = engine.search_by_text("zebra crossing", k=5, mode="hybrid")
    assert result.mode == "dense" and result.note == NOT_UNDERSTOOD
    assert result.study_ids == engine.search_by_text("zebra crossing", k=5).study_ids
    with pytest.raises(ValueError, match="text mode must be one of dense, hybrid"):
        engine.search_by_text("cardiomegaly", mode="sparse")


def test_side_filter_in_hybrid_mode(iu_engines):
    engine = iu_engines[0]
    result = engine.search_by_text("pleural effusion", k=10, mode="hybrid",
                                   filters={"finding": "pleural effusion", "side": "right"})
    allowed = set(engine.store.matching_ids(finding="pleural effusion", side="right").tolist())
    assert result.hits and result.n_candidates == len(allowed) and {h.row_id for h in result.hits} <= allowed


# ------------------------------------------------------------------------------------------- chips
def test_parse_chips():
    assert chips("small left pleural effusion", "hybrid") == [("finding", "pleural effusion · left · small")]
    assert ("negated", "excluding pleural effusion") in chips("no pleural effusion", "hybrid")
    assert chips("zebra crossing", "hybrid")[0][0] == "none"
    assert "image similarity only" in chips_html("zebra crossing")
    assert "&lt;script&gt;" in chips_html("<script> left pleural effusion") or "<script>" not in chips_html("<script>")
    assert with_side({"finding": None}, "left", "small left pleural effusion")["finding"] == "pleural effusion"
    from webapp.queries import QueryError

    with pytest.raises(QueryError, match="side filter needs a finding"):
        with_side({"finding": None}, "left", "zebra crossing")


def test_a_store_without_report_tables_is_refused_with_a_rebuild_message(tmp_path):
    import sqlite3

    from index.store import StoreSchemaError

    path = tmp_path / "meta.sqlite"
    write_store(path, [_study(0, "Small left pleural effusion.")])
    conn = sqlite3.connect(path)
    with conn:  # what schema 2 wrote: no report tables
        conn.executescript("DROP TABLE reports; DROP TABLE report_findings; DROP TABLE report_text;"
                           "UPDATE info SET value = '2' WHERE key = 'schema_version';")
    conn.close()
    with pytest.raises(StoreSchemaError, match=r"schema version 2; this code reads version 3.*Rebuild the index"):
        MetadataStore.load(path)


def test_why_quotes_the_reports_own_words_on_the_asked_side(reports):
    """"How each match was found" quotes the report as written ("Small left pleural effusion", not the
    vocabulary's "mild left pleural effusion"); never a negated sentence or one on the other side only."""
    from webapp.text_query import report_quotes

    bilateral = reports["CXR2348"].report_text  # moderate right, small left (real IU report)
    left = report_quotes("small left pleural effusion", bilateral)
    assert left[0] == "There is a small left pleural effusion" and all("right" not in q for q in left)
    assert report_quotes("right pleural effusion", bilateral)[0] == "There is a moderate sized right pleural effusion"
    assert report_quotes("no pleural effusion", bilateral) == []  # nothing asked for positively
    text = real(reports, "CXR372", "Small left pleural effusion.")
    assert report_quotes("left pleural effusion", text) == ["Small left pleural effusion"]
    assert report_quotes("right pleural effusion", text) == []
    assert report_quotes("pleural effusion", "There is no pleural effusion. Heart is enlarged.") == []
    assert report_quotes("cardiomegaly", "There is no pleural effusion. Heart is enlarged.") == ["Heart is enlarged"]
