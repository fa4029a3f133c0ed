"""Nothing leaked: no outbound connection, no DICOM identifiers in what the app shows, logs or
indexes, no upload kept after its request, no unpickling of files from run folders.

The network audit runs the real app in a subprocess with a ``sitecustomize.py`` on its
PYTHONPATH: an audit hook (PEP 578) sees every ``socket.getaddrinfo``/``socket.connect`` of
that interpreter and of any Python child it starts, records any non-loopback address to a
file and refuses it.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app_server import app_log, gradio_client, running_app, wait_for_log_line
from tests.helpers_dicom import PATIENT_ID, PATIENT_NAME, make_dicom
from webapp.presenters import OK, WARNING

ROOT = Path(__file__).resolve().parent.parent
# Every identifier make_dicom writes, in the forms they could be printed in. Long enough not to
# occur by chance in compressed image bytes; text is also searched for the name's parts.
IDENTIFIERS = [PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID, "19700101", "20240102", "General Hospital"]
NAME_PARTS = ["Doe", "Jane"]

NETWORK_AUDIT = '''
"""Test-only: record and refuse any non-loopback network access of this interpreter."""
import ipaddress
import os
import sys

_LOG = os.environ.get("CXR_NETWORK_AUDIT_LOG")


def _is_local(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%")[0]
    if host in ("", "localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.endswith(".localhost")


def _audit(event, args):
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple):  # AF_UNIX path: local by definition
            return
        host = address[0]
    else:
        return
    if _is_local(host):
        return
    with open(_LOG, "a") as log:
        log.write(f"{event} {host!r} pid={os.getpid()} argv={sys.argv[:3]}\\n")
    raise ConnectionRefusedError(f"network audit: outbound {event} to {host!r} refused")


if _LOG:
    sys.addaudithook(_audit)
'''


def audited_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment that loads the audit hook into every Python process started with it."""
    hook_dir = tmp_path / "audit"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(NETWORK_AUDIT)
    log = tmp_path / "network.log"
    log.write_text("")
    return {"PYTHONPATH": str(hook_dir), "CXR_NETWORK_AUDIT_LOG": str(log)}, log


def seed_example_films(cache: Path) -> None:
    """Stand-ins for the 16 pediatric example films, so the app finds them cached.

    The real ones are fetched at set-up (`python -m data.pediatric`), never by the app
    (see the empty-cache test below).
    """
    for i in range(16):
        label = "NORMAL" if i < 8 else "PNEUMONIA"
        path = cache / "pediatric" / label / f"{label}-{i}.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.random.default_rng(i).random((96, 96)) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def audited_app(small_demo, tmp_path_factory):
    """The real app on the small index, under the network audit; yields (url, audit log, app log, temp dir,
    process). The module's last app test (the search worker's) stops it."""
    tmp = tmp_path_factory.mktemp("audited-app")
    env, audit_log = audited_env(tmp)
    cache, uploads = tmp / "cache", tmp / "gradio"
    seed_example_films(cache)
    env.update({"CXR_CACHE": str(cache), "GRADIO_TEMP_DIR": str(uploads), "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"})
    _, run, index = small_demo
    # as users run it: with a search worker (the suite's other apps run without one), loaded before the audit is read
    with running_app(["--run", str(run), "--index", str(index), "--search-workers", "1"], env=env, timeout=300) as (
            url, proc, seconds):
        print(f"\naudited app up in {seconds:.1f}s")
        wait_for_log_line(url, proc, "search workers: 1 process(es) ready")
        yield url, audit_log, app_log(url), uploads, proc


@pytest.fixture(scope="module")
def client(audited_app):
    return gradio_client(audited_app[0])


@pytest.fixture(scope="module")
def queried(audited_app, client, small_demo, tmp_path_factory):
    """Answers of a text query, an image query and a DICOM query (with identifiers) through the app."""
    from gradio_client import handle_file

    tmp = tmp_path_factory.mktemp("uploads")
    text = client.predict("small left pleural effusion", 5, "any", "any", "any", api_name="/search_text")
    png = Path(shutil.copy(sorted((small_demo[0] / "images").glob("*.png"))[0], tmp / "query.png"))
    image = client.predict(handle_file(str(png)), 5, "any", "any", "any", api_name="/search_image")
    dicom = tmp / "Doe_Jane.dcm"
    dicom.write_bytes(make_dicom(_phantom_pixels(small_demo)))
    dicom_answer = client.predict(handle_file(str(dicom)), 5, "any", "any", "any", api_name="/search_image")
    return {"text": text, "image": image, "dicom": dicom_answer, "dicom_bytes": dicom.read_bytes()}


def test_no_outbound_connection_while_starting_and_answering(audited_app, queried):
    assert queried["text"][2].startswith(OK), queried["text"][2]
    assert queried["image"][4].startswith(OK), queried["image"][4]
    assert queried["dicom"][4].startswith(OK), queried["dicom"][4]
    attempts = audited_app[1].read_text()
    assert attempts == "", f"outbound network access:\n{attempts}"


def test_the_audit_hook_catches_and_refuses_outbound_access(tmp_path):
    """The audit itself works: a child that resolves and connects to a public address is logged."""
    env, log = audited_env(tmp_path)
    code = ("import socket\n"
            "for call in (lambda: socket.getaddrinfo('pypi.org', 443), lambda: socket.create_connection(('192.0.2.1', 443), 1)):\n"
            "    try:\n        call()\n    except OSError as exc:\n        print('refused:', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert out.stdout.count("refused:") == 2, out.stdout + out.stderr
    logged = log.read_text()
    assert "'pypi.org'" in logged and "'192.0.2.1'" in logged


def test_first_start_with_an_empty_cache_makes_no_outbound_connection(tmp_path):
    env, log = audited_env(tmp_path)
    env.update({"CXR_CACHE": str(tmp_path / "empty-cache"), "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"})
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import app; app.example_uploads()"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert log.read_text() == ""  # no download attempted: examples are simply absent


# ----------------------------------------------------------------------------- DICOM identifiers
def _assert_no_identifiers(what: str, text: str, binary: bool = False) -> None:
    for identifier in IDENTIFIERS + ([] if binary else NAME_PARTS):
        assert identifier not in text, f"{identifier!r} leaked into {what}"


def test_dicom_identifiers_never_reach_the_page_the_api_or_the_server_log(audited_app, queried):
    preview, gallery, reports, probability, status, records = queried["dicom"][:6]  # the State stays server-side
    shown = json.dumps([gallery, reports, probability, status, records], ensure_ascii=False, default=str)
    _assert_no_identifiers("the API answer", shown)
    with Image.open(preview) as img:  # the de-identified preview the page shows
        _assert_no_identifiers("the preview's metadata", json.dumps(img.info, default=str))
    _assert_no_identifiers("the preview file", Path(preview).read_bytes().decode("latin-1"), binary=True)
    _assert_no_identifiers("the server log", audited_app[2].read_text(errors="replace"))


def test_uploads_are_deleted_once_read_and_nothing_under_the_temp_dir_holds_identifiers(audited_app, queried):
    uploads = audited_app[3]
    files = [p for p in uploads.rglob("*") if p.is_file()]
    assert files, "gradio wrote its outputs (gallery, preview) under GRADIO_TEMP_DIR"
    for path in files:
        payload = path.read_bytes()
        assert payload != queried["dicom_bytes"], f"the uploaded DICOM was kept: {path}"
        assert path.suffix.lower() != ".dcm", f"an upload was kept: {path}"
        _assert_no_identifiers(f"temp file {path.name}", payload.decode("latin-1"), binary=True)


def test_an_api_call_cannot_make_the_app_read_or_delete_a_server_file(audited_app, small_demo, tmp_path):
    """The service deletes the path it is given; gradio only passes paths in its upload folder."""
    import urllib.request

    victim = Path(shutil.copy(sorted((small_demo[0] / "images").glob("*.png"))[3], tmp_path / "victim.png"))
    endpoint = audited_app[0].rstrip("/") + "/gradio_api/call/search_image"
    payload = {"data": [{"path": str(victim), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"},
                        3, "any", "any", "any"]}
    request = urllib.request.Request(endpoint, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{endpoint}/{event}", timeout=60) as response:
        answer = response.read().decode()
    assert "event: error" in answer and "CXR" not in answer, answer[:500]
    assert victim.is_file(), "a file outside the upload folder was deleted"


def test_the_app_answers_text_from_its_worker_and_stops_it_on_exit(audited_app, client, small_demo, model):
    """The app as users start it (one search worker; this module's app): once the worker is ready, /search_text
    is answered with the in-process answer, the worker does the searching, and SIGTERM stops it too. Last test
    of the module that uses the app: it stops it. (Was tests/test_search_workers.py's, on an app of its own.)"""
    import time

    from bench.serving_load import child_pids, process_cpu_s

    proc = audited_app[4]
    workers = [c for c in child_pids(proc.pid) if process_cpu_s(c) > 1.0]  # loaded: a model costs CPU
    assert len(workers) == 1, f"one loaded search worker expected, found {workers}"
    query = ("small left pleural effusion", 8, "any", "any", "any")
    before = {c: process_cpu_s(c) for c in workers}
    for _ in range(30):
        *_, records = client.predict(*query, api_name="/search_text")
    used = sum(process_cpu_s(c) - before[c] for c in workers)
    expected = _service(small_demo, model, keep_uploads=False).search_text(*query)[3]
    assert [h["study_id"] for h in records["hits"]] == [h["study_id"] for h in expected["hits"]]
    assert len(records["hits"]) == 8
    assert used > 0.05, f"the worker used {used:.2f} s of CPU for 30 searches: they ran in the web process"
    proc.terminate()
    assert proc.wait(60) == 0
    deadline = time.monotonic() + 20
    while any(os.path.exists(f"/proc/{c}") and not open(f"/proc/{c}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
              for c in workers):
        assert time.monotonic() < deadline, "the search worker outlived the app"
        time.sleep(0.5)


def _phantom_pixels(small_demo, invert: bool = False) -> np.ndarray:
    """12-bit pixels of an indexed phantom (noise would now be refused as not a radiograph);
    ``invert`` for MONOCHROME1, which the loader inverts back."""
    source = sorted((small_demo[0] / "images").glob("*.png"))[1]
    pixels = np.asarray(Image.open(source).convert("L").resize((128, 128)), np.uint16) * 16
    return (4080 - pixels).astype(np.uint16) if invert else pixels


def _service(small_demo, model, keep_uploads: bool):
    from index.engine import SearchEngine
    from webapp.service import RunInfo, SearchService

    return SearchService(SearchEngine.load(small_demo[2], model), RunInfo.load(small_demo[1]), None,
                         keep_uploads=keep_uploads)


def test_dicom_query_through_the_service_shows_and_logs_no_identifiers(small_demo, model, tmp_path, caplog):
    caplog.set_level("DEBUG")
    service = _service(small_demo, model, keep_uploads=False)
    upload = tmp_path / "upload.dcm"
    upload.write_bytes(make_dicom(_phantom_pixels(small_demo, invert=True), photometric="MONOCHROME1", view="AP"))
    preview, gallery, reports, probability, status, records, state = service.search_image(str(upload), 5, "any", "any", "any")
    assert status.startswith(OK), status
    _assert_no_identifiers("the answer", json.dumps([gallery, reports, probability, status, records, state], default=str))
    assert preview.info == {} and preview.mode == "L"
    _assert_no_identifiers("the log", caplog.text)


@pytest.mark.parametrize("keep", [False, True])
def test_upload_is_deleted_after_reading_unless_keeping_was_asked_for(keep, small_demo, model, tmp_path):
    service = _service(small_demo, model, keep_uploads=keep)
    good = Path(shutil.copy(sorted((small_demo[0] / "images").glob("*.png"))[2], tmp_path / "good.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image" * 50)
    assert service.search_image(str(good), 3, "any", "any", "any")[4].startswith(OK)
    assert service.search_image(str(bad), 3, "any", "any", "any")[4].startswith(WARNING)
    assert good.exists() is keep and bad.exists() is keep


def test_index_built_from_dicom_files_holds_no_identifiers(small_demo, model, tmp_path, monkeypatch):
    from index.__main__ import main as index_cli
    from index.engine import SearchEngine

    monkeypatch.setattr("model.factory.create_backbone", lambda name, path=None, **kw: model.backbone)
    rows = []
    for i in range(4):
        path = tmp_path / "dicom" / f"study{i}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(make_dicom((np.random.default_rng(i).random((96, 96)) * 4000).astype(np.uint16)))
        rows.append(f"dicom/study{i}.dcm,{'Right pleural effusion.' if i % 2 else 'Lungs are clear.'},{i % 2},P{i},PA")
    csv = tmp_path / "manifest.csv"
    csv.write_text("image_path,report,label,patient_id,view\n" + "\n".join(rows) + "\n")
    out = tmp_path / "index"
    assert index_cli(["build", "--run", str(small_demo[1]), "--out", str(out), "--manifest", str(csv)]) == 0
    for path in out.iterdir():
        _assert_no_identifiers(f"index file {path.name}", path.read_bytes().decode("latin-1"), binary=True)
    engine = SearchEngine.load(out, model)
    records = [json.dumps(h.to_dict()) for h in engine.search_by_text("pleural effusion", k=4).hits]
    assert len(records) == 4
    _assert_no_identifiers("search hits", " ".join(records))


# ----------------------------------------------------------------------------- unsafe loading
def _python_sources() -> list[Path]:
    skip = {".venv", ".cache", ".git", "node_modules", "__pycache__"}
    return sorted(p for p in ROOT.rglob("*.py") if not (set(p.relative_to(ROOT).parts) & skip))


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """Calls that can execute code from a file: pickle.load(s), torch.load without
    weights_only=True, np.load without allow_pickle=False."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner_name = _dotted(node.func.value)  # "torch", "np", "safetensors.torch", ...
        method = node.func.attr
        if owner_name in ("pickle", "cPickle", "dill", "cloudpickle", "joblib") and method in ("load", "loads"):
            found.append((node.lineno, f"{owner_name}.{method}"))
        elif owner_name == "torch" and method == "load" and _keyword(node, "weights_only") is not True:
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif owner_name in ("np", "numpy") and method == "load" and _keyword(node, "allow_pickle") is not False:
            found.append((node.lineno, f"{owner_name}.load without allow_pickle=False"))
    return found


def test_the_unsafe_load_detector_flags_what_it_should():
    source = textwrap.dedent("""
        import pickle, torch, numpy as np
        pickle.load(f); pickle.loads(b)
        torch.load(p); torch.load(p, weights_only=False)
        np.load(p); np.load(p, allow_pickle=True)
        torch.load(p, map_location="cpu", weights_only=True); np.load(p, allow_pickle=False)
        safetensors.torch.load(payload); json.load(f)
    """)
    assert [what for _, what in unsafe_loads(source)] == [
        "pickle.load", "pickle.loads", "torch.load without weights_only=True", "torch.load without weights_only=True",
        "np.load without allow_pickle=False", "np.load without allow_pickle=False"]


def test_no_unpickling_anywhere_in_the_source_tree():
    sources = _python_sources()
    assert len(sources) > 20
    problems = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in sources
                for line, what in unsafe_loads(path.read_text())]
    assert problems == [], "\n".join(problems)
