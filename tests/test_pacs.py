"""A PACS source over DICOMweb, tested against a real Orthanc (issue 27): build, sync, viewer links,
query by StudyInstanceUID, and the faults (unreachable, 401, lateral-only, undecodable, SR without
text, deleted mid-way, killed mid-sync, HTTP 500 mid-sync).

Fixture PACS (stored with STOW-RS): 30 demo phantoms as CR DICOM with real patient tags, 25 PA (20 with
a Basic Text SR holding their report, one JPEG 2000 lossless) and 5 lateral-only; 10 more studies are
stored later to test sync.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid

from tests.helpers_dicom import PATIENT_ID, PATIENT_NAME
from tests.orthanc import BIRTH_DATE, OrthancServer, radiograph, require_orthanc, text_sr

pytestmark = pytest.mark.timeout(900)
N_FRONTAL, N_LATERAL, N_SR = 25, 5, 20


def cli(*argv: str) -> int:
    from index.__main__ import main

    return main(list(argv))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    require_orthanc()
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pacs(orthanc, small_demo, tmp_path_factory):
    """The fixture PACS: returns (server, auth file, {uid: Study}, extra studies for sync, run dir)."""
    from data.dataset import load_dataset

    data, run, _ = small_demo
    studies = [s for s in load_dataset(data) if s.image_path][:40]
    assert len(studies) == 40
    uids = [generate_uid() for _ in studies]
    datasets = []
    for i, (uid, study) in enumerate(zip(uids[:30], studies[:30])):
        view = "LL" if i >= N_FRONTAL else "PA"
        datasets.append(radiograph(study.image_path, uid, view=view, j2k="real" if i == N_FRONTAL - 1 else ""))
        if i < N_SR:
            datasets.append(text_sr(uid, study.findings, study.impression))
    orthanc.store(datasets)
    auth = orthanc.auth_file(tmp_path_factory.mktemp("auth") / "auth.json")
    return orthanc, auth, dict(zip(uids, studies)), list(zip(uids[30:], studies[30:])), run


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Where the first test builds the PACS index the later ones search and sync."""
    return tmp_path_factory.mktemp("idx") / "pacs-index"


def _store_more(server, extra) -> list[str]:
    server.store([radiograph(study.image_path, uid) for uid, study in extra])
    return [uid for uid, _ in extra]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _count(index: Path, capsys) -> int:
    capsys.readouterr()
    assert cli("info", "--index", str(index)) == 0
    err = capsys.readouterr().err
    return int(next(line for line in err.splitlines() if line.startswith("studies: ")).split(": ")[1])


# --------------------------------------------------------------------------- build, search, links
def test_build_indexes_the_frontal_studies_and_skips_the_lateral_ones(pacs, built, capsys):
    server, auth, by_uid, _, run = pacs
    rc = cli("build", "--run", str(run), "--dicomweb", server.url, "--auth-file", str(auth), "--out", str(built))
    out = capsys.readouterr().out
    assert rc == 0, out
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    lateral = [uid for uid in list(by_uid)[N_FRONTAL:30]]
    assert sorted(line.split()[1].rstrip(":") for line in skipped) == sorted(lateral)
    assert all("only non-frontal views (ViewPosition: LL)" in line for line in skipped)
    assert f"built {built}: {N_FRONTAL} studies" in out
    assert "listed 30, known 0, fetched 25, skipped 5, indexed 25" in out
    assert _count(built, capsys) == N_FRONTAL


def test_the_index_keeps_the_sr_reports_and_no_identifier(pacs, built):
    from index.manifest import META
    from index.store import MetadataStore
    from index.sync import image_dir_for

    _, _, by_uid, _, _ = pacs
    store = MetadataStore.load(built / META)
    try:
        records = {item.study.study_id: item.study for item in store.all()}
    finally:
        store.close()
    uids = list(by_uid)
    assert set(records) == set(uids[:N_FRONTAL])
    for uid in uids[:N_SR]:  # the SR's TEXT items, verbatim
        assert (records[uid].findings, records[uid].impression) == (by_uid[uid].findings, by_uid[uid].impression)
    for uid in uids[N_SR:N_FRONTAL]:  # no SR, no CSV: image-only
        assert records[uid].report_text == ""
    assert all(r.patient_id == r.study_id for r in records.values())
    files = [p for folder in (built, image_dir_for(built)) for p in folder.rglob("*") if p.is_file()]
    assert len(files) >= N_FRONTAL + 3
    secrets = [s.encode() for s in (PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID, BIRTH_DATE,
                                    "General Hospital", "Smith^John")]
    for path in files:
        data = path.read_bytes()
        assert not [s for s in secrets if s in data], path


def test_a_report_search_finds_a_study_by_its_sr_text(pacs, built, model):
    from index.engine import SearchEngine

    _, _, by_uid, _, _ = pacs
    engine = SearchEngine.load(built, model)
    texts = {}
    for uid in list(by_uid)[:N_SR]:
        texts.setdefault(by_uid[uid].report_text, []).append(uid)
    text, owners = next((t, u) for t, u in texts.items() if len(u) == 1 and len(t) > 40)
    vec = model.embed_texts([text])[0]
    hits = engine.search_by_image_vector(vec, k=3, target="reports").hits
    assert hits[0].study_id == owners[0]
    assert hits[0].report_text == text


def test_hits_carry_their_study_uid_and_a_viewer_link(pacs, built, model):
    from index.engine import SearchEngine
    from webapp.pacs import add_links, link_cards, with_viewer_links
    from webapp.presenters import hits_as_records, report_cards
    from webapp.service import RunInfo, SearchService

    _, _, by_uid, _, run = pacs
    template = "http://pacs/ohif/viewer?StudyInstanceUIDs={study_uid}"
    service = SearchService(SearchEngine.load(built, model), RunInfo.load(run), maps=None)
    out = with_viewer_links(service.search_text, template, html_at=(1,), records_at=3)("pleural effusion", 5,
                                                                                         "any", "any", "any")
    hits = out[3]["hits"]
    assert len(hits) == 5
    for hit in hits:
        assert hit["study_uid"] == hit["study_id"] and hit["study_uid"] in by_uid
        assert hit["viewer_url"] == f"http://pacs/ohif/viewer?StudyInstanceUIDs={hit['study_uid']}"
        assert f"href='{hit['viewer_url']}'" in out[1]
    assert out[1].count("Open in viewer") == 5
    # no template, no link; a non-UID study id (a folder-built index) never gets one
    unlinked = with_viewer_links(service.search_text, None, html_at=(1,), records_at=3)("pleural effusion", 5,
                                                                                       "any", "any", "any")
    assert "viewer_url" not in json.dumps(unlinked[3]) and "Open in viewer" not in unlinked[1]
    assert all(hit["study_uid"] == hit["study_id"] for hit in unlinked[3]["hits"])
    assert add_links([{"study_id": "CXR12"}], template) == [{"study_id": "CXR12"}]
    assert link_cards(report_cards([], lambda h: []), template).startswith("<p")
    assert hits_as_records([]) == []


def test_query_by_study_uid_searches_with_its_frontal_image(pacs, built, model, tmp_path):
    from data.dicomweb import PacsSource
    from index.engine import SearchEngine
    from webapp.pacs import UidQuery
    from webapp.service import RunInfo, SearchService

    server, auth, by_uid, _, run = pacs
    service = SearchService(SearchEngine.load(built, model), RunInfo.load(run), maps=None)
    query = UidQuery(service.search_image, PacsSource(server.url, auth_file=auth))
    uid = list(by_uid)[3]
    preview, gallery, _, estimate, status, records, _ = query.search(uid, 5, "any", "any", "any")
    assert preview is not None and len(gallery) == 5, status
    assert records["hits"][0]["study_id"] == uid  # the study itself, first
    assert estimate is not None
    upload = tmp_path / "same.dcm"  # the same DICOM uploaded: the same verdict and hits
    upload.write_bytes(query.source.frontal_dicom(uid))
    uploaded = service.search_image(str(upload), 5, "any", "any", "any")[5]
    assert records["familiarity"] is not None and records["familiarity"] == uploaded["familiarity"]
    assert [h["study_id"] for h in records["hits"]] == [h["study_id"] for h in uploaded["hits"]]
    lateral = list(by_uid)[N_FRONTAL]
    *_, status, records, _ = query.search(lateral, 5, "any", "any", "any")
    assert "only non-frontal views" in status and records["hits"] == []
    *_, status, _, _ = query.search("not-a-uid", 5, "any", "any", "any")
    assert "StudyInstanceUID" in status
    *_, status, _, _ = query.search("1.2.3.4", 5, "any", "any", "any")
    assert status == f"**Warning:** Study 1.2.3.4 is not on the PACS at {server.url}."


# --------------------------------------------------------------------------- sync
def test_a_second_sync_adds_nothing(pacs, built, capsys):
    server, auth, _, _, _ = pacs
    before = _digest(built)
    assert cli("sync", "--index", str(built), "--dicomweb", server.url, "--auth-file", str(auth)) == 0
    out = capsys.readouterr().out
    assert f"added 0 studies to {built}: now {N_FRONTAL}" in out
    assert "listed 30, known 25, fetched 0, skipped 5, indexed 0" in out
    assert cli("add", "--index", str(built), "--dicomweb", server.url, "--auth-file", str(auth)) == 0  # same as sync
    assert f"added 0 studies to {built}: now {N_FRONTAL}" in capsys.readouterr().out
    assert _digest(built) == before  # nothing republished


def test_sync_adds_exactly_the_new_studies(pacs, built, capsys):
    server, auth, _, extra, _ = pacs
    new = _store_more(server, extra[:5])
    assert cli("sync", "--index", str(built), "--dicomweb", server.url, "--auth-file", str(auth)) == 0
    assert f"added 5 studies to {built}: now {N_FRONTAL + 5}" in capsys.readouterr().out
    from index.sync import indexed_study_ids

    assert set(new) <= indexed_study_ids(built)
    assert _count(built, capsys) == N_FRONTAL + 5


def test_orthanc_killed_mid_sync_leaves_the_index_serving_and_the_next_sync_completes(pacs, built, capsys,
                                                                                       monkeypatch, model):
    from data.dicomweb import PacsSource
    from index.engine import SearchEngine

    server, auth, _, extra, _ = pacs
    new = _store_more(server, extra[5:10])
    before = _digest(built)
    real_fetch, calls = PacsSource.fetch, []

    def fetch_then_die(self, uid):
        calls.append(uid)
        if len(calls) == 3:
            server.kill()
        return real_fetch(self, uid)

    monkeypatch.setattr(PacsSource, "fetch", fetch_then_die)
    rc = cli("sync", "--index", str(built), "--dicomweb", server.url, "--auth-file", str(auth), "--in-flight", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: the PACS at ") and "unreachable" in err[-1]
    assert _digest(built) == before  # the published index is untouched ...
    assert len(SearchEngine.load(built, model).store.all()) == N_FRONTAL + 5  # ... and still serves
    monkeypatch.setattr(PacsSource, "fetch", real_fetch)
    server.start()
    assert cli("sync", "--index", str(built), "--dicomweb", server.url, "--auth-file", str(auth)) == 0
    assert f"added 5 studies to {built}: now {N_FRONTAL + 10}" in capsys.readouterr().out
    from index.sync import indexed_study_ids

    ids = indexed_study_ids(built)
    assert set(new) <= ids and len(ids) == N_FRONTAL + 10  # no duplicates


# --------------------------------------------------------------------------- faults
class _FailAfter(http.server.BaseHTTPRequestHandler):
    """A proxy in front of Orthanc that answers HTTP 500 to the Nth instance retrieval (a PACS failing mid-sync)."""

    target = ""
    fail_at = 2
    seen = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        if "/instances/" in self.path and not self.path.endswith("/metadata"):
            type(self).seen += 1
            if type(self).seen >= self.fail_at:
                self.send_error(500, "storage backend failure")
                return
        upstream = requests.get(self.target + self.path, headers={k: v for k, v in self.headers.items()
                                                                    if k.lower() != "host"}, timeout=30)
        self.send_response(upstream.status_code)
        for key in ("Content-Type",):
            if key in upstream.headers:
                self.send_header(key, upstream.headers[key])
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    def log_message(self, *args):
        pass


def test_a_500_mid_sync_is_one_line_and_writes_nothing(pacs, built, capsys):
    server, auth, _, _, _ = pacs
    extra_uid = generate_uid()
    server.store([radiograph(next(iter(pacs[2].values())).image_path, extra_uid),
                  radiograph(list(pacs[2].values())[1].image_path, generate_uid())])
    before = _digest(built)
    _FailAfter.target, _FailAfter.seen, _FailAfter.fail_at = server.base, 0, 2
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailAfter)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}/dicom-web"
        rc = cli("sync", "--index", str(built), "--dicomweb", url, "--auth-file", str(auth), "--in-flight", "1")
    finally:
        proxy.shutdown()
        proxy.server_close()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and "HTTP 500" in err[-1]
    assert _digest(built) == before


def test_unreachable_pacs_and_wrong_credentials_are_one_line(pacs, tmp_path, capsys):
    from tests.orthanc import free_port

    server, _, _, _, run = pacs
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert cli("build", "--run", str(run), "--dicomweb", dead, "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0]
    wrong = server.auth_file(tmp_path / "wrong.json", password="not-it")
    assert cli("build", "--run", str(run), "--dicomweb", server.url, "--auth-file", str(wrong),
               "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the credentials (HTTP 401)" in err[0] and "--auth-file" in err[0]
    assert not (tmp_path / "x").exists()


def test_unusable_studies_are_skipped_with_their_reason(orthanc, pacs, tmp_path):
    """Undecodable JPEG 2000, an SR without text, a study deleted between QIDO and WADO."""
    from data.dicomweb import PacsSource

    server, auth, by_uid, _, _ = pacs
    png = next(iter(by_uid.values())).image_path
    broken, empty_sr, doomed = generate_uid(), generate_uid(), generate_uid()
    server.store([radiograph(png, broken, j2k="broken"), radiograph(png, empty_sr), text_sr(empty_sr, "", ""),
                  radiograph(png, doomed)])
    source = PacsSource(server.url, auth_file=auth)
    listed = source.list_studies(study_uids=[broken, empty_sr, doomed])
    assert listed == [broken, empty_sr, doomed]
    server.delete_study(doomed)  # after QIDO, before WADO
    got = {f.study_uid: f for f in source.fetch_many(listed)}
    assert got[broken].skipped.startswith("image not decodable") and "JPEG 2000" in got[broken].skipped
    assert got[empty_sr].study is not None and got[empty_sr].study.report_text == ""
    assert got[empty_sr].note == "its SR has no text; indexed image-only (no report)"
    assert got[doomed].skipped.startswith("deleted from the PACS after it was listed")
    for uid in (broken, empty_sr, doomed):
        server.delete_study(uid)
    assert requests.get(f"{server.url}/studies", auth=("pacs", "wrong")).status_code == 401


def test_the_app_wires_the_viewer_link_and_the_uid_box(pacs, built, model):
    import app
    from data.dicomweb import PacsSource
    from index.engine import SearchEngine
    from webapp.service import RunInfo, SearchService

    server, auth, _, _, run = pacs
    with pytest.raises(SystemExit, match="--viewer-url must be an http"):
        app.pacs_options(app.parse_args(["--viewer-url", "javascript:alert(1)//{study_uid}"]))
    args = app.parse_args(["--viewer-url", "http://pacs/ohif/viewer?StudyInstanceUIDs={study_uid}",
                           "--dicomweb", server.url, "--dicomweb-auth-file", str(auth)])
    source, template = app.pacs_options(args)
    assert isinstance(source, PacsSource) and template.endswith("={study_uid}")
    assert app.pacs_options(app.parse_args([])) == (None, None)
    service = SearchService(SearchEngine.load(built, model), RunInfo.load(run), maps=None)
    demo = app.build_ui(service, [], [], pacs_source=source, viewer_url=template)
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"search_image", "search_text", "search_study_uid"} <= names
    # issue 26: no chained round trips: Enter in the UID box answers results and verdict badge in one event
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in demo.config["components"]}
    (uid_event,) = [d for d in demo.config["dependencies"] if [ids["study-uid"], "submit"] in map(list, d["targets"])]
    assert ids["verdict-image"] in uid_event["outputs"] and uid_event["api_name"] != "search_study_uid"
    assert all(d.get("trigger_after") is None for d in demo.config["dependencies"])
    plain = app.build_ui(service, [], [])
    assert "search_study_uid" not in {d.get("api_name") for d in plain.config["dependencies"]}


def test_the_pacs_tests_skip_only_without_orthanc_and_outside_ci(monkeypatch):
    import tests.orthanc as orthanc_module

    monkeypatch.setattr(orthanc_module, "orthanc_binary", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Orthanc is not installed"):
        require_orthanc()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set, so the PACS tests must run"):
        require_orthanc()


def test_sr_text_items_and_uid_rules():
    """Enhanced SR nesting (a container inside the root) and "Conclusion" read as the impression; a listed
    StudyInstanceUID that is not a UID (it would name a file) is never taken."""
    from data.dicomweb import is_study_uid, sr_text

    def text(meaning: str, value: str) -> dict:
        return {"0040A040": {"Value": ["TEXT"]}, "0040A160": {"Value": [value]},
                "0040A043": {"Value": [{"00080104": {"Value": [meaning]}}]}}

    nested = {"0040A040": {"Value": ["CONTAINER"]}, "0040A730": {"Value": [text("Finding", "Small left effusion.")]}}
    sr = {"0040A730": {"Value": [nested, text("Conclusion", "Effusion."), text("Impression", "  ")]}}
    assert sr_text(sr) == ("Small left effusion.", "Effusion.")
    assert sr_text({}) == ("", "")
    assert is_study_uid("1.2.840.113619.2.55.3.604688119") and not is_study_uid("../../etc/passwd")
    assert not is_study_uid("1." + "2" * 70) and not is_study_uid("12345")
