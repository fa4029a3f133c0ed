"""Structured findings in the index: stored with each study, filterable by finding AND side,
returned with every hit; an index written by older code asks to be rebuilt."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from data.findings import Finding
from data.records import Study
from index import IndexLoadError, SearchEngine, build_index
from index.engine import Filters
from index.manifest import META
from index.store import SCHEMA_VERSION, MetadataStore, StoreSchemaError, append_to_store, schema_version, write_store
from tests.test_index import FakeEncoder, identity
from webapp.presenters import hits_as_records

# (tags, expected side of "pleural effusion" in the index; None = no effusion)
EFFUSIONS = [
    (("Pleural Effusion/left/small",), "left"),
    (("Pleural Effusion/right",), "right"),
    (("Pleural Effusion/bilateral/large", "Cardiomegaly/mild"), "bilateral"),
    (("Pleural Effusion/left", "Pleural Effusion/right/small"), "bilateral"),  # two tags, one per side
    (("Pleural Effusion",), ""),
    (("Pneumothorax/left",), None),
    (("normal",), None),
]


def _studies(repeat: int = 6) -> list[Study]:
    out = []
    for r in range(repeat):
        for k, (tags, _) in enumerate(EFFUSIONS):
            i = r * len(EFFUSIONS) + k
            out.append(Study(study_id=f"S{i}", patient_id=f"P{i}", image_paths=(f"/nonexistent/s{i}.png",),
                             findings=f"report {i}", impression="", label=int(tags != ("normal",)), tags=tags, view="PA"))
    return out


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    studies = _studies()
    emb = np.random.default_rng(0).normal(size=(len(studies), 32)).astype(np.float32)
    out = tmp_path_factory.mktemp("findings") / "index"
    encoder = FakeEncoder()
    build_index(out, emb, emb, studies, identity(encoder))
    return out, studies, emb, encoder


def test_store_holds_structured_findings_and_side_rows(index):
    out, studies, _, _ = index
    conn = sqlite3.connect(out / META)
    try:
        record = json.loads(conn.execute("SELECT record FROM items WHERE study_id = 'S2'").fetchone()[0])
        rows = conn.execute("SELECT finding, side FROM item_findings WHERE row_id = 3 ORDER BY finding").fetchall()
        version = conn.execute("SELECT value FROM info WHERE key = 'schema_version'").fetchone()[0]
    finally:
        conn.close()
    assert record["structured_findings"] == [
        {"name": "pleural effusion", "side": "bilateral", "location": "", "severity": "severe", "certainty": "positive"},
        {"name": "cardiomegaly", "side": "", "location": "", "severity": "mild", "certainty": "positive"},
    ]
    assert record["tags"] == list(studies[2].tags) and record["findings"] == "report 2"
    assert rows == [("pleural effusion", "bilateral")]  # left + right tags fold into one bilateral row
    assert version == str(SCHEMA_VERSION) == "3"
    store = MetadataStore.load(out / META)
    try:
        assert store.get([0])[0].study == studies[0]
        assert store.get([0])[0].structured_findings == (Finding("pleural effusion", side="left", severity="mild"),)
        assert store.finding_counts() == {"pleural effusion": 30, "cardiomegaly": 6, "pneumothorax": 6}
    finally:
        store.close()


@pytest.mark.parametrize("side, expected", [
    ("left", {"left", "bilateral"}),  # a bilateral effusion is also on the left
    ("right", {"right", "bilateral"}),
    ("bilateral", {"bilateral"}),
    (None, {"left", "right", "bilateral", ""}),
])
def test_side_filter(index, side, expected):
    out, studies, emb, encoder = index
    engine = SearchEngine.load(out, encoder)
    side_of = {s.study_id: side_ for s, (_, side_) in zip(studies, EFFUSIONS * 6)}
    for finding in ("pleural effusion", "Pleural Effusion"):  # the vocabulary name or the MeSH heading
        result = engine.search_by_image_vector(emb[0], k=len(studies), filters={"finding": finding, "side": side})
        assert {side_of[h.study_id] for h in result.hits} == expected
        assert result.n_candidates == sum(side_of[s.study_id] in expected for s in studies)
        assert len(result.hits) == result.n_candidates
    assert engine.search_by_image_vector(emb[0], k=5, filters={"finding": "pneumothorax", "side": "right"}).hits == []


def test_side_filter_is_validated():
    assert Filters.parse({"finding": "pleural effusion", "side": "Left"}) == Filters(finding="pleural effusion", side="left")
    assert Filters.parse({"finding": "pleural effusion", "side": "any"}).side is None
    assert Filters.parse({"finding": "x", "side": "left"}).to_dict()["side"] == "left"
    with pytest.raises(ValueError, match="side filter must be one of left, right, bilateral"):
        Filters.parse({"finding": "pleural effusion", "side": "middle"})
    with pytest.raises(ValueError, match="side filter needs a finding"):
        Filters.parse({"side": "left"})


def test_hits_carry_structured_findings_in_one_json_shape(index):
    out, studies, emb, encoder = index
    engine = SearchEngine.load(out, encoder)
    result = engine.search_by_image_vector(emb[2], k=3)
    hit = result.hits[0]
    assert hit.study_id == "S2" and hit.study == studies[2]
    assert hit.label == 1 and hit.label_name == "abnormal" and hit.image_path == "/nonexistent/s2.png"
    record = hit.to_dict()
    assert record["structured_findings"][0] == {"name": "pleural effusion", "side": "bilateral", "location": "",
                                                "severity": "severe", "certainty": "positive"}
    assert set(record) == {"rank", "study_id", "score", "label", "view", "finding_names", "tags", "findings",
                           "impression", "structured_findings", "channels"}
    assert record["label"] == "abnormal" and record["tags"] == list(studies[2].tags)
    assert hits_as_records(result.hits) == [h.to_dict() for h in result.hits]
    assert json.loads(json.dumps(result.to_dict()))["hits"][0] == record
    assert "P2" not in json.dumps(result.to_dict())  # no patient id in what a hit tells a caller


def _version_1_store(path):
    """The metadata file as the previous code wrote it (schema 1: a column per field)."""
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE items (row_id INTEGER PRIMARY KEY, study_id TEXT NOT NULL UNIQUE, patient_id TEXT NOT NULL,
            label INTEGER NOT NULL, view TEXT NOT NULL, tags TEXT NOT NULL, finding_names TEXT NOT NULL,
            findings TEXT NOT NULL, impression TEXT NOT NULL, image_path TEXT NOT NULL, image_paths TEXT NOT NULL);
        CREATE TABLE item_findings (row_id INTEGER NOT NULL, finding TEXT NOT NULL);
        CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO info VALUES ('schema_version', '1');
        INSERT INTO items VALUES (0, 'S0', 'S0', 1, 'PA', '["Nodule"]', '["nodule"]', 'f', 'i', 'a.png', '["a.png"]');
    """)
    conn.commit()
    conn.close()


def test_older_store_asks_for_a_rebuild(tmp_path):
    old = tmp_path / "meta.sqlite"
    _version_1_store(old)
    assert schema_version(old) == 1
    with pytest.raises(StoreSchemaError, match=r"schema version 1; this code reads version 3.*Rebuild the index"):
        MetadataStore.load(old)
    with pytest.raises(StoreSchemaError, match="Rebuild the index"):  # `index add` on an old index
        append_to_store(old, _studies(1)[:1], start=1)
    assert issubclass(StoreSchemaError, IndexLoadError)  # the CLI and the app report it as a load error
    fresh = tmp_path / "new.sqlite"
    write_store(fresh, _studies(1))
    assert schema_version(fresh) == SCHEMA_VERSION and schema_version(tmp_path / "absent.sqlite") is None


def test_demo_first_start_rebuilds_a_stale_index(tmp_path, monkeypatch):
    from pipeline import demo, steps

    run, idx = tmp_path / "run", tmp_path / "index"
    run.mkdir()
    idx.mkdir()
    (run / "config.json").write_text("{}")
    # only the schema is stale: the other files of a current demo index are listed
    (idx / "manifest.json").write_text('{"files": {"frozen_images.npy": "sha", "familiarity.safetensors": "sha"}}')
    _version_1_store(idx / META)
    built = []
    recorded = _studies(1)
    monkeypatch.setattr(steps, "run_collection", lambda r: (recorded, tmp_path / "data"))
    monkeypatch.setattr(steps, "index_run", lambda r, i, studies, data_root: built.append((r, i, studies)))
    demo.ensure_demo(run, idx)
    assert built == [(run, idx, recorded)]  # the index step of the pipeline, on the run's own studies
    (idx / META).unlink()
    write_store(idx / META, _studies(1))
    demo.ensure_demo(run, idx)
    assert len(built) == 1  # current schema: loaded as it is
