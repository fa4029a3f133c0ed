"""Start the real app in a subprocess on a free loopback port, for end-to-end tests.

The app removes its temp folder when stopped (SIGTERM); if it has to be killed, the folder
it leaves is swept here, so a test run leaves no ``cxr-gradio-*`` folders behind. The app's
log (``<cache>/app-<port>.log``) is kept only when the app did not stop cleanly."""
from __future__ import annotations

import functools
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from webapp.serving import remove_stale_temp_dirs

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def gradio_client(url: str, **kwargs: Any):
    """A ``gradio_client.Client`` for an app this suite started. gradio_client opens a new httpx client for every
    request (each predict, its event stream, each file it downloads) and httpx loads the CA bundle into a new SSL
    context each time, ~16 ms of CPU even for an http:// URL (~2,000 of them in a run: 35 s, py-spy): here one
    context serves them all (``ssl_verify`` goes to httpx's ``verify``, which takes a ready context; verification is
    unchanged)."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=_tls_context(), **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_log(url: str) -> Path:
    """The log file of the app ``running_app`` started at ``url`` (it lives while the app runs)."""
    port = url.rstrip("/").rsplit(":", 1)[1]
    return Path(os.environ.get("CXR_CACHE", ROOT / ".cache")) / f"app-{port}.log"


def wait_for_log_line(url: str, proc: subprocess.Popen, text: str, timeout: float = 300) -> None:
    """Poll the app's log until a line holds ``text``: a condition, where a fixed sleep would guess a time."""
    deadline = time.monotonic() + timeout
    while text not in app_log(url).read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the app's log (exit {proc.poll()}):\n{app_log(url).read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def running_app(extra_args: list[str] | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """Yields (base url, process, seconds to first served page); stops the app afterwards."""
    port = free_port()
    log = open(Path(os.environ.get("CXR_CACHE", ROOT / ".cache")) / f"app-{port}.log", "w")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *(extra_args or [])],
                            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                log.flush()
                raise RuntimeError(f"app exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"app did not serve {url} within {timeout}s")
            time.sleep(0.5)
        yield url, proc, time.monotonic() - started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode == 0:  # a clean stop: nothing to look into, so the log goes too
            Path(log.name).unlink(missing_ok=True)
        remove_stale_temp_dirs(full_env.get("GRADIO_TEMP_DIR") or full_env.get("TMPDIR") or tempfile.gettempdir())
