"""The errors a newcomer meets first, each run for real and answered in one line that says what to do.

`make run` without Python 3.11, `make test` without the rights to install Chromium, a port already in
use, `python app.py --run X` without `--index`; plus where the app listens (a Space: 0.0.0.0:7860).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from webapp import hosting

ROOT = Path(__file__).resolve().parent.parent


# make's own "Error 1" line, also from a nested make (make[1]: *** ... when the suite runs under `make test`)
MAKE_FAILED = re.compile(r"make(\[\d+\])?: \*\*\*")


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _app(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_host_and_port_follow_a_space_and_keep_loopback_elsewhere():
    assert (hosting.default_host({}), hosting.default_port({})) == ("127.0.0.1", 7860)
    space = {"SPACE_ID": "owner/cxr"}
    assert (hosting.default_host(space), hosting.default_port(space)) == ("0.0.0.0", 7860)
    assert hosting.default_port({**space, "GRADIO_SERVER_PORT": "7861"}) == 7861
    assert hosting.default_host({**space, "CXR_HOST": "127.0.0.1"}) == "127.0.0.1"  # an explicit choice wins
    assert hosting.default_port({"CXR_PORT": "8000", "GRADIO_SERVER_PORT": "7861"}) == 8000
    with pytest.raises(ValueError, match="not a number"):
        hosting.default_port({"GRADIO_SERVER_PORT": "http"})


def test_app_parses_the_space_defaults():
    import app

    saved = {k: os.environ.pop(k, None) for k in ("SPACE_ID", "CXR_HOST", "CXR_PORT", "GRADIO_SERVER_PORT")}
    try:
        args = app.parse_args([])
        assert (args.host, args.port) == ("127.0.0.1", 7860)
        os.environ["SPACE_ID"] = "test"
        args = app.parse_args([])
        assert (args.host, args.port) == ("0.0.0.0", 7860)
        assert app.parse_args(["--host", "127.0.0.1", "--port", "9000"]).host == "127.0.0.1"
    finally:
        os.environ.pop("SPACE_ID", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def test_run_without_index_says_how_to_build_one():
    done = _app("--run", "runs/mine")
    line = _one_line(done.stderr)
    assert done.returncode != 0
    assert "--run runs/mine needs --index DIR" in line and "python -m index build --run runs/mine" in line
    assert "needs the --run it was built for" in _one_line(_app("--index", "indexes/mine").stderr)


def test_port_in_use_is_one_line_before_anything_loads():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert "already in use" in hosting.port_problem("127.0.0.1", port)
        done = _app("--port", str(port), env={"CXR_CACHE": "/nonexistent-cache"})  # fails before the cache is read
    assert done.returncode != 0
    assert _one_line(done.stderr) == (f"app.py: port {port} on 127.0.0.1 is already in use (another app.py?): "
                                      "stop that process or pass --port N")
    assert hosting.port_problem("127.0.0.1", port) is None  # released: free again
    assert "not an address of this machine" in hosting.port_problem("203.0.113.7", port)


@pytest.mark.skipif(not shutil.which("make"), reason="needs GNU make")
def test_make_without_python_311_says_what_to_install(tmp_path):
    old = _script(tmp_path / "python3.10", 'case "$1" in --version) echo "Python 3.10.12";; *) exit 1;; esac\n')
    done = subprocess.run(["make", "-s", "setup", f"VENV={tmp_path / 'venv'}", f"PYTHON={old}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and not (tmp_path / "venv").exists()
    ours = [line for line in done.stderr.splitlines() if not MAKE_FAILED.match(line)]
    line = _one_line("\n".join(ours))
    assert "needs Python 3.11 (found: Python 3.10.12)" in line and "PYTHON=/path/to/python3.11" in line


@pytest.mark.skipif(not shutil.which("make"), reason="needs GNU make")
def test_make_test_without_apt_rights_says_what_to_do(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with no chromium, where `id -u` is an ordinary user
    bin_dir.mkdir()
    _script(bin_dir / "id", "echo 1000\n")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    make = shutil.which("make")
    done = subprocess.run([make, "-s", "browser"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if not MAKE_FAILED.match(line)]
    line = _one_line("\n".join(ours))
    assert "needs root" in line and "sudo apt-get install -y chromium" in line and "NO_BROWSER=1" in line
    skipped = subprocess.run([make, "-s", "browser", "NO_BROWSER=1"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env=env)
    assert skipped.returncode == 0, skipped.stderr
