"""The app serves only what the page shows, bounds uploads, cleans its temp folder, and logs in.

Probed as an outsider would, over HTTP on loopback, against the real app on the small demo
index with a data root of its own (a copy of the demo images plus files that must stay private).
The app's TMPDIR is a separate folder, so nothing reaches the page merely by lying under /tmp.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.app_server import gradio_client, running_app
from tests.test_bad_inputs import ensure_small_demo
from tests.test_privacy import seed_example_films
from webapp import serving
from webapp.presenters import OK

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MB = 1  # a small --max-upload-mb keeps the oversize upload quick
LIMIT = LIMIT_MB * 1024 * 1024


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: bytes | Iterator[bytes], content_type: str) -> tuple[int, bytes]:
    """POST and read the answer, also when the server answers (413) and closes before the whole body is
    sent: the write then fails with a broken pipe while the answer waits in the socket (a race urllib loses)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        try:
            conn.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                         headers={"Content-Type": content_type})
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _multipart(name: str, payload: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + payload + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _file_url(base: str, path: Path | str) -> str:
    return f"{base}gradio_api/file={urllib.parse.quote(str(path))}"


def _call(base: str, api_name: str, data: list) -> list:
    """A named endpoint through gradio's two-step HTTP API (what curl users do)."""
    status, body = _post(f"{base}gradio_api/call/{api_name}", json.dumps({"data": data}).encode(), "application/json")
    assert status == 200, body
    event = json.loads(body)["event_id"]
    status, stream = _get(f"{base}gradio_api/call/{api_name}/{event}")
    assert status == 200 and b"event: complete" in stream, stream[-500:]
    return json.loads(stream.split(b"event: complete\ndata:", 1)[1].strip().splitlines()[0])


def _offered_examples(url: str) -> list[dict]:
    """What a click on each example upload loads into the upload box (gradio's FileData)."""
    samples = [c for c in json.loads(_get(f"{url}config")[1])["components"]
               if c["type"] == "dataset" and c["props"].get("samples") and str(c["props"]["samples"][0][0]).endswith(
                   (".png", ".jpeg", ".jpg", ".dcm"))]
    assert samples, "the page offers example uploads"
    values = []
    for i in range(len(samples[0]["props"]["samples"])):
        status, body = _post(f"{url}gradio_api/api/load_example", json.dumps({"data": [i]}).encode(), "application/json")
        assert status == 200, body
        values.append(json.loads(body)["data"][0]["value"])
    return values


def _app_temp_dirs(parent: Path, pid: int) -> list[Path]:
    return sorted(parent.glob(f"{serving.TEMP_PREFIX}{pid}-*"))


def _dead_process_stamp() -> tuple[int, int]:
    """(pid, start time) of a process that has exited: what a killed app leaves in its folder name."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = serving.process_start(child.pid) or 0
    child.kill()
    child.wait()
    return child.pid, start


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on the small demo, --data-root pointing at a copy of its data plus private files."""
    data, run, index = ensure_small_demo()
    tmp = tmp_path_factory.mktemp("served")
    root = tmp / "hospital-data"
    shutil.copytree(data, root)
    (root / "patients.csv").write_text("patient_id,name\n1,Doe^Jane\n")
    (root / "originals").mkdir()
    (root / "originals" / "study1.dcm").write_bytes(b"\0" * 128 + b"DICM")
    cache, parent, sys_tmp = tmp / "cache", tmp / "gradio", tmp / "sys-tmp"
    seed_example_films(cache)
    parent.mkdir()
    sys_tmp.mkdir()
    dead_pid, dead_start = _dead_process_stamp()
    stale = parent / f"{serving.TEMP_PREFIX}{dead_pid}-{dead_start}-left"
    (stale / "upload").mkdir(parents=True)
    (stale / "upload" / "big.bin").write_bytes(b"x" * 1000)
    others = parent / "someone-elses-folder"
    others.mkdir()
    env = {"CXR_CACHE": str(cache), "GRADIO_TEMP_DIR": str(parent), "TMPDIR": str(sys_tmp)}
    args = ["--run", str(run), "--index", str(index), "--data-root", str(root), "--max-upload-mb", str(LIMIT_MB)]
    with running_app(args, env=env, timeout=300) as (url, proc, seconds):
        print(f"\napp up in {seconds:.1f}s")
        (folder,) = _app_temp_dirs(parent, proc.pid)
        yield {"url": url, "proc": proc, "root": root, "run": run, "index": index, "cache": cache, "parent": parent,
               "folder": folder, "sys_tmp": sys_tmp, "stale": stale, "others": others}


def test_the_data_root_run_index_and_project_files_are_not_served(served):
    url, root = served["url"], served["root"]
    offered = {value["orig_name"] for value in _offered_examples(url)}
    image = next(p for p in sorted((root / "images").glob("*.png")) if p.name not in offered)
    private = [root / "studies.jsonl", root / "dataset.json", root / "patients.csv", root / "originals" / "study1.dcm",
               image, root, root / "images",
               served["run"] / "config.json", served["run"] / "head.safetensors", served["index"] / "manifest.json",
               served["index"] / "meta.sqlite", ROOT / "app.py", ROOT / "README.md", ROOT / "requirements.txt",
               served["cache"] / "pediatric", Path("/etc/passwd"),
               served["folder"] / ".." / ".." / "hospital-data" / "studies.jsonl"]  # a way out of the temp folder
    for path in private:
        assert Path(path).exists(), path
        for route in (_file_url(url, path), f"{url}gradio_api/file/{urllib.parse.quote(str(path).lstrip('/'))}"):
            status, body = _get(route)
            assert status in (403, 404), f"{route} -> {status}: {body[:200]!r}"
    assert b"Doe^Jane" not in _get(_file_url(url, root / "patients.csv"))[1]


def test_the_offered_examples_and_a_searched_gallery_image_are_served(served):
    url, folder = served["url"], served["folder"]
    examples = _offered_examples(url)
    assert len(examples) == 6  # 4 pediatric films + 2 phantoms from the data root
    for value in examples:
        assert Path(value["path"]).is_relative_to(folder), value["path"]  # gradio's copy, in the app's temp folder
        status, image = _get(value["url"])
        assert status == 200 and len(image) == value["size"] > 0
    offered = {value["orig_name"] for value in examples}

    # raw HTTP sends every input (gradio requires it; gradio_client fills the added side and mode itself)
    gallery, _, status_text, records, _ = _call(url, "search_text",
                                                ["small left pleural effusion", 3, "any", "any", "any", "any", "hybrid"])
    assert status_text.startswith(OK) and len(gallery) == len(records["hits"]) == 3
    for item in gallery:
        staged = Path(item["image"]["path"])
        assert staged.is_relative_to(folder), staged  # a copy: the data root itself stays unserved
        status, image = _get(item["image"]["url"])
        assert status == 200 and image == (served["root"] / "images" / staged.name).read_bytes()
        if staged.name not in offered:  # an offered example is served as-is too (allowed_paths)
            assert _get(_file_url(url, served["root"] / "images" / staged.name))[0] in (403, 404)


def _big_files(roots: list[Path], size: int) -> list[Path]:
    found = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            found += [Path(dirpath, n) for n in names if Path(dirpath, n).stat().st_size >= size]
    return found


def test_an_upload_over_the_limit_is_refused_and_nothing_of_its_size_is_kept(served):
    url = served["url"]
    places = [p for p in (served["parent"], served["sys_tmp"], ROOT / ".gradio") if p.is_dir()]
    before = set(_big_files(places, LIMIT))
    just_over, content_type = _multipart("too-big.dcm", os.urandom(LIMIT + 1))
    far_over, _ = _multipart("too-big.dcm", os.urandom(2 * LIMIT))
    gradio_says, guard_says = f"maximum allowed size of {LIMIT} bytes", "over this server's limit of 1 MB"
    cases = {  # what is sent -> who refuses it
        "just over, with a length": (just_over, gradio_says),  # gradio counts the bytes, deletes the part
        "just over, streamed without a length": (iter([just_over[i:i + 65536] for i in range(0, len(just_over), 65536)]),
                                                 gradio_says),
        "twice the limit, with a length": (far_over, guard_says),  # refused before a byte is read
    }
    for case, (body, message) in cases.items():
        status, answer = _post(f"{url}gradio_api/upload", body, content_type)
        assert status == 413 and message in answer.decode(), (case, status, answer)
    assert set(_big_files(places, LIMIT)) == before, "an oversize upload was stored"
    assert json.loads(_get(f"{url}config")[1])["max_file_size"] == LIMIT  # the page refuses it before sending

    body, content_type = _multipart("fits.dcm", os.urandom(LIMIT - 4096))
    status, answer = _post(f"{url}gradio_api/upload", body, content_type)
    assert status == 200, answer
    (stored,) = json.loads(answer)
    assert Path(stored).is_relative_to(served["folder"]) and Path(stored).stat().st_size == LIMIT - 4096


@pytest.mark.browser
def test_the_page_tells_the_user_an_upload_is_too_large(served, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (apt-get install chromium)")
    big = tmp_path / "film.dcm"
    big.write_bytes(os.urandom(LIMIT + 10))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(served["url"])
            page.get_by_text("Chest X-ray retrieval").first.wait_for(timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(str(big))
            message = page.get_by_text("exceed the maximum allowed size").first
            message.wait_for(timeout=30_000)
            assert "1.0 Mb" in message.inner_text() and "film.dcm" in message.inner_text()
        finally:
            browser.close()
    assert not list(served["parent"].rglob("film.dcm"))


def test_start_up_sweeps_only_its_own_dead_temp_folders(served):
    assert not served["stale"].exists(), "a temp folder of a dead app was left"
    assert served["others"].is_dir(), "a folder the app did not make was touched"
    assert served["folder"].is_dir()


def test_sigterm_removes_the_temp_folder(served):
    """Last test of the module: it stops the shared app."""
    proc, folder = served["proc"], served["folder"]
    assert any(p.is_file() for p in folder.rglob("*")), "the app stored files in its temp folder"
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(timeout=60) == 0
    print(f"exited {time.monotonic() - started:.1f}s after SIGTERM")
    assert not folder.exists(), f"temp folder left behind: {folder}"
    assert _app_temp_dirs(served["parent"], proc.pid) == []


# ----------------------------------------------------------------------------- login
def test_with_an_auth_file_unauthenticated_requests_are_refused(tmp_path):
    _, run, index = ensure_small_demo()
    cache = tmp_path / "cache"
    seed_example_films(cache)
    auth = tmp_path / "users.txt"
    auth.write_text("# who may use the app\nalice:s3cret:with-colon\n\nbob:hunter2\n")
    env = {"CXR_CACHE": str(cache), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    with running_app(["--run", str(run), "--index", str(index), "--auth-file", str(auth)], env=env,
                     timeout=300) as (url, _proc, _seconds):
        body, content_type = _multipart("query.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100)
        refused = {
            "upload": _post(f"{url}gradio_api/upload", body, content_type),
            "search_text": _post(f"{url}gradio_api/call/search_text",
                                 json.dumps({"data": ["effusion", 3, "any", "any", "any"]}).encode(), "application/json"),
            "search_image": _post(f"{url}gradio_api/call/search_image",
                                  json.dumps({"data": [None, 3, "any", "any", "any"]}).encode(), "application/json"),
            "queue": _post(f"{url}gradio_api/queue/join", json.dumps({"data": [], "fn_index": 4}).encode(),
                           "application/json"),
            "config": _get(f"{url}config"),
            "info": _get(f"{url}gradio_api/info"),
        }
        for what, (status, answer) in refused.items():
            assert status in (401, 403), f"{what} answered {status} without a login: {answer[:200]!r}"
        assert not list((tmp_path / "gradio").rglob("query.png"))

        with pytest.raises(Exception):
            gradio_client(url, auth=("alice", "wrong"))
        client = gradio_client(url, auth=("alice", "s3cret:with-colon"))
        status_text = client.predict("small left pleural effusion", 3, "any", "any", "any", api_name="/search_text")[2]
        assert status_text.startswith(OK), status_text


# ----------------------------------------------------------------------------- units
def test_auth_file_lines_and_errors(tmp_path):
    from data.errors import InputError

    good = tmp_path / "users"
    good.write_text("alice:pa:ss\n  # comment\n\nbob : x\n")
    assert serving.read_auth_file(good) == [("alice", "pa:ss"), ("bob", " x")]
    for text, says in [("alice\n", "line 1"), ("# only\n", "no 'user:password'"), (":pw\n", "line 1"),
                       ("ok:1\nbad:\n", "line 2")]:
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(InputError, match=says) as exc:
            serving.read_auth_file(bad)
        assert "pw" not in str(exc.value) and "ok:1" not in str(exc.value)  # no password echoed
    with pytest.raises(InputError, match="cannot read"):
        serving.read_auth_file(tmp_path / "missing")


def test_a_warning_line_when_reachable_beyond_this_machine(capsys):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert serving.exposure_warning(host, share=False, authenticated=False) is None
    warning = serving.exposure_warning("0.0.0.0", share=False, authenticated=False)
    assert "no authentication" in warning and "\n" not in warning
    assert "no authentication" in serving.exposure_warning("127.0.0.1", share=True, authenticated=False)
    assert "TLS" in serving.exposure_warning("10.0.0.5", share=False, authenticated=True)

    import app

    options = serving.launch_options(app.parse_args(["--host", "0.0.0.0"]))
    assert "no authentication" in capsys.readouterr().err
    assert options["share"] is False and options["auth"] is None
    assert options["max_file_size"] == serving.DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    serving.launch_options(app.parse_args([]))
    assert capsys.readouterr().err == ""
    from data.errors import InputError

    with pytest.raises(InputError, match="positive"):
        serving.launch_options(app.parse_args(["--max-upload-mb", "0"]))


def test_stale_sweep_keeps_live_and_foreign_folders(tmp_path):
    dead_pid, dead_start = _dead_process_stamp()
    me = os.getpid()
    dead = tmp_path / f"{serving.TEMP_PREFIX}{dead_pid}-{dead_start}-abc"
    reused = tmp_path / f"{serving.TEMP_PREFIX}{me}-{(serving.process_start(me) or 0) + 1}-abc"  # pid reused since
    alive = tmp_path / f"{serving.TEMP_PREFIX}{me}-{serving.process_start(me)}-abc"
    foreign = tmp_path / f"{serving.TEMP_PREFIX}oldstyle"
    for folder in (dead, reused, alive, foreign):
        (folder / "sub").mkdir(parents=True)
    removed = serving.remove_stale_temp_dirs(tmp_path)
    assert sorted(removed) == sorted([dead, reused])
    assert alive.is_dir() and foreign.is_dir() and not dead.exists() and not reused.exists()
