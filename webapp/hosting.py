"""Where the app listens, and the start-up mistakes a newcomer makes, each answered in one line.

Why: a Hugging Face Space runs ``python app.py`` with ``SPACE_ID`` set and expects the page on
0.0.0.0:``GRADIO_SERVER_PORT`` (7860); anywhere else the app stays on loopback unless asked. And a
port already taken or ``--run`` without ``--index`` should say what to do before the slow
imports, not after them with a traceback.
"""
from __future__ import annotations

import errno
import os
import socket
from typing import Mapping

LOOPBACK = "127.0.0.1"
SPACE_HOST = "0.0.0.0"
DEFAULT_PORT = 7860


def on_space(env: Mapping[str, str] | None = None) -> bool:
    """True inside a Hugging Face Space (the platform sets ``SPACE_ID`` to ``owner/name``)."""
    return bool((env if env is not None else os.environ).get("SPACE_ID"))


def default_host(env: Mapping[str, str] | None = None) -> str:
    """``$CXR_HOST``, else 0.0.0.0 on a Space (its proxy reaches the container from outside), else loopback."""
    env = env if env is not None else os.environ
    return env.get("CXR_HOST") or (SPACE_HOST if on_space(env) else LOOPBACK)


def default_port(env: Mapping[str, str] | None = None) -> int:
    """``$CXR_PORT``, else ``$GRADIO_SERVER_PORT`` (what Spaces set), else 7860."""
    env = env if env is not None else os.environ
    value = env.get("CXR_PORT") or env.get("GRADIO_SERVER_PORT") or DEFAULT_PORT
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"port {value!r} (from $CXR_PORT / $GRADIO_SERVER_PORT) is not a number") from None


def run_index_problem(run: str | None, index: str | None, bundle: str | None) -> str | None:
    """``--run`` and ``--index`` go together (or neither: the offline demo); one line saying how to get
    the missing one, else None."""
    if bundle:
        return None
    if run and not index:
        return (f"--run {run} needs --index DIR: build one with `python -m index build --run {run} --out DIR "
                "--manifest CSV`, or give neither for the offline demo")
    if index and not run:
        return "--index needs the --run it was built for (--run DIR), or give neither for the offline demo"
    return None


def port_problem(host: str, port: int) -> str | None:
    """One line saying what to do when ``host:port`` cannot be listened on (a second ``make run``), else None.

    Checked in milliseconds, before the progress page or the model load would meet it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is not "in use"
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another app.py?): "
                        "stop that process or pass --port N")
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine: pass --host 127.0.0.1 (or 0.0.0.0 for every interface)"
            return f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port or --host"
    return None
