"""How the app is served: which files it may hand out, how big an upload may be, its own
temp folder (removed at exit, stale ones swept at start) and who may connect.

Gradio serves a file when it lies under ``allowed_paths`` or under the app's temp folder
(``GRADIO_TEMP_DIR``: uploads and the copies of everything the page shows). So the app
allows exactly the example files it offers, and copies each gallery image into its temp
folder itself (``gallery_outputs``): the data root, run and index folders are never served.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import inspect
import ipaddress
import logging
import os
import re
import shutil
import signal
import stat
import sys
import threading
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

from data.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 100  # generous for one DICOM radiograph (a CR/DX film is 5-50 MB)
MULTIPART_SLACK = 64 * 1024  # room for the multipart boundary and part headers around one file
TEMP_PREFIX = "cxr-gradio-"
_OWNED = re.compile(rf"^{re.escape(TEMP_PREFIX)}(\d+)-(\d+)-")  # cxr-gradio-<pid>-<process start>-<random>


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serving options of app.py."""
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                        help=f"largest upload accepted; larger ones are refused and not kept (default {DEFAULT_MAX_UPLOAD_MB})")
    parser.add_argument("--auth-file", metavar="FILE",
                        help="require a login: one 'user:password' per line (blank lines and # comments ignored)")


def max_upload_bytes(megabytes: float) -> int:
    if not megabytes > 0:
        raise InputError("--max-upload-mb must be a positive number")
    return int(megabytes * 1024 * 1024)


class UploadLimit:
    """ASGI middleware: a request declaring a body larger than one upload may be is answered 413
    before any of it is read. Gradio's own ``max_file_size`` check covers bodies sent without
    a length (chunked): it counts bytes as they arrive and deletes the part already written."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit + MULTIPART_SLACK:
                body = (f"Upload refused: {int(length):,} bytes is over this server's limit of "
                        f"{self.limit / 2**20:g} MB (app.py --max-upload-mb).").encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- who may connect
def read_auth_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``user:password`` lines -> gradio's ``auth=`` list. Errors name the line, never the password."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --auth-file {path}: {exc.__class__.__name__}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise InputError(f"--auth-file {path} line {number}: expected 'user:password'")
        pairs.append((user.strip(), password))
    if not pairs:
        raise InputError(f"--auth-file {path} holds no 'user:password' line")
    return pairs


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, share: bool, authenticated: bool) -> str | None:
    """One line for the console when the app is reachable from beyond this machine."""
    where = "a public gradio.live link" if share else (None if is_loopback(host) else f"{host}")
    if where is None:
        return None
    if authenticated:
        return (f"warning: serving on {where} with a login over plain HTTP; put it behind a TLS reverse proxy "
                "(docs/serving.md)")
    return (f"warning: serving on {where} with no authentication: anyone who reaches it can search the index; "
            "use --auth-file or a reverse proxy with a login (docs/serving.md)")


# ----------------------------------------------------------------------------- temp folder
def process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int) -> bool:
    """Is the process that made a folder still running? Same pid and same start time (pids are reused)."""
    now = process_start(pid)
    if now is not None and start:
        return now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(parent: str | os.PathLike) -> list[Path]:
    """Delete this app's temp folders under ``parent`` whose owning process is gone (a kill -9,
    a crash). Folders of live apps, of other users, and anything not named by this app stay."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not _alive(int(match.group(1)), int(match.group(2))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def make_temp_dir() -> Path:
    """A fresh temp folder owned by this process, set as GRADIO_TEMP_DIR (must precede importing
    gradio). A GRADIO_TEMP_DIR given by the user is the parent it is made in. It is removed at
    exit, SIGTERM included; stale folders of earlier runs are swept first."""
    parent = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temp_dirs(parent)
    if stale:
        log.info("removed %d stale temp folder(s) of earlier runs under %s", len(stale), parent)
    pid = os.getpid()
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{pid}-{process_start(pid) or 0}-", dir=parent))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder / "examples")  # gradio serves it too; default: ./.gradio
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    _exit_cleanly_on_sigterm()
    return folder


def serve(demo: Any, on_exit: Sequence[Callable[[], Any]] = (), **launch_kwargs: Any) -> None:
    """``demo.launch`` until Ctrl-C or SIGTERM, then run ``on_exit`` (stop the search workers), remove
    the temp folder and exit at once: the interpreter's own teardown (garbage-collecting the model and
    the page) takes ~10 s on 2 busy cores, long enough for a supervisor to give up and SIGKILL."""
    try:
        demo.launch(**launch_kwargs)  # returns once gradio has closed its server
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while gradio was still starting: stop as cleanly
        log.info("stopped while starting")
    for stop in on_exit:
        try:
            stop()
        except Exception:  # noqa: BLE001 - exiting anyway: the temp folder must still go
            log.exception("stopping %s", stop)
    shutil.rmtree(os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM ends the app like Ctrl-C: gradio closes its server and atexit handlers run."""
    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, interrupt)


# ----------------------------------------------------------------------------- what is served
def served_examples(paths: Sequence[str]) -> list[str]:
    """allowed_paths: exactly the example files the page offers (absolute), nothing around them."""
    return sorted({str(Path(p).resolve()) for p in paths if Path(p).is_file()})


GALLERY_DIR = "gallery"  # under the app's temp folder: the staged copies of result images, and nothing else
staged_copies: OrderedDict[tuple[str, int, int], str] = OrderedDict()  # (source, mtime_ns, size) -> staged copy
_staged_lock = threading.Lock()
STAGED_MAX = 5_000  # copies kept (a few hundred MB of films at most); the least recently shown go first


def gallery_dir() -> Path:
    """``<temp folder>/gallery``, registered with gradio as static: gradio serves its files as they
    are instead of re-checking and re-copying every result image on every query (issue 26: that
    postprocessing was a third of the server's time under load). Only staged copies live there."""
    from gradio import utils

    folder = Path(utils.get_upload_folder()) / GALLERY_DIR
    with _staged_lock:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
        import gradio as gr
        from gradio.data_classes import _StaticFiles

        if folder.resolve() not in _StaticFiles.all_paths:
            gr.set_static_paths([folder])
            # first: gradio checks each result file against the static paths in order (two
            # realpath calls per path tried); every gallery file is found at the first try
            _StaticFiles.all_paths.insert(0, _StaticFiles.all_paths.pop())
    return folder


def stage_file(path: str) -> str:
    """A copy of ``path`` in the app's gallery folder (gradio's own content-addressed cache layout),
    so gradio serves the copy and never needs the folder it came from. Each source is copied
    once and found again by (path, mtime, size) while its copy exists (the temp folder's
    cleaner may remove it; it is then copied again)."""
    from gradio import processing_utils

    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        return path
    key = (str(path), st.st_mtime_ns, st.st_size)
    staged = staged_copies.get(key)
    if staged and os.path.exists(staged):
        with _staged_lock:
            if key in staged_copies:
                staged_copies.move_to_end(key)
        return staged
    folder = gallery_dir()
    if Path(path).resolve().is_relative_to(folder.resolve()):
        return path
    staged = processing_utils.save_file_to_cache(path, cache_dir=str(folder))
    with _staged_lock:
        staged_copies[key] = staged
        while len(staged_copies) > STAGED_MAX:  # bounded disk: the copy shown longest ago is removed
            _, old = staged_copies.popitem(last=False)
            if old not in staged_copies.values():
                Path(old).unlink(missing_ok=True)
    return staged


def _is_gallery(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (str, os.PathLike)) for item in value)


def then(fn: Callable[..., Any], after: Callable[[Any, tuple], Any]) -> Callable[..., Any]:
    """``fn`` followed by ``after(result, args)``, of the same kind as ``fn``: a coroutine function when
    ``fn`` is one. Why: gradio awaits a coroutine handler on its event loop but hands a plain one to a
    thread (issue 26: the text search's worker is awaited, so its wrappers must not turn it back
    into a plain function)."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def awaited(*args: Any, **kwargs: Any) -> Any:
            return after(await fn(*args, **kwargs), args)
        return awaited

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return after(fn(*args, **kwargs), args)
    return wrapper


def before(fn: Callable[..., Any], convert: Callable[[tuple], tuple]) -> Callable[..., Any]:
    """``fn(*convert(args))``, of the same kind as ``fn`` (see ``then``)."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def awaited(*args: Any) -> Any:
            return await fn(*convert(args))
        return awaited

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*convert(args))
    return wrapper


def _staged(out: Any) -> Any:
    if isinstance(out, tuple):
        return tuple([(stage_file(str(p)), c) for p, c in v] if _is_gallery(v) else v for v in out)
    return [(stage_file(str(p)), c) for p, c in out] if _is_gallery(out) else out


def gallery_outputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so every gallery it returns ((path, caption) lists) points at staged copies."""
    return then(fn, lambda out, args: _staged(out))


def postprocessed(fn: Callable[..., Any], outputs: Sequence[Any]) -> Callable[..., Any]:
    """Wrap a handler for an event registered with ``postprocess=False``: the handler (in its thread, or on
    the event loop for a coroutine) turns each output into what the component's ``postprocess`` would send.

    Why (issue 26): gradio otherwise postprocesses each output in a thread hop of its own (seven for
    an image search), the gallery through a new thread pool per query, and walks every output
    twice for files; on 2 cores that was more CPU than the text search itself."""
    def serialised(out: Any, args: tuple) -> Any:
        values = out if len(outputs) > 1 else (out,)
        done = tuple(serialise(component, value) for component, value in zip(outputs, values, strict=True))
        return done if len(outputs) > 1 else done[0]
    return then(fn, serialised)


def preprocessed(fn: Callable[..., Any], inputs: Sequence[Any]) -> Callable[..., Any]:
    """Wrap a handler for an event registered with ``preprocess=False``: the handler (as ``postprocessed``)
    turns each input payload into what the component's ``preprocess`` would give (the same values, the same
    ``gr.Error`` for a value out of range or not among the choices).

    Why (issue 26): gradio otherwise preprocesses each input in a thread hop of its own: seven per
    text search, each a GIL hand-over between the event loop and a worker thread under load. Gradio
    still validates each payload and moves uploaded files into its cache before the handler runs."""
    return before(fn, lambda payloads: tuple(deserialise(component, value)
                                            for component, value in zip(inputs, payloads, strict=True)))


def deserialise(component: Any, value: Any) -> Any:
    """``component.preprocess`` of the payload gradio passes with ``preprocess=False`` (a data model's
    dump, validated again here; a State's value untouched, as gradio gives it either way)."""
    if getattr(component, "stateful", False):
        return value
    model = getattr(component, "data_model", None)
    if model is not None and value is not None:
        value = model.model_validate(value, context={"validate_meta": True})
    return component.preprocess(value)


def on(trigger: Callable[..., Any], fn: Callable[..., Any], inputs: Sequence[Any], outputs: Sequence[Any],
       **event_kwargs: Any) -> Any:
    """Register ``fn`` on a gradio event ``trigger`` (e.g. ``button.click``), its inputs and outputs processed in
    its own thread (``preprocessed`` / ``postprocessed``): the wrappers and ``preprocess=False,
    postprocess=False`` always go together, so a search event never converts its values twice."""
    return trigger(postprocessed(preprocessed(fn, inputs), outputs), inputs, outputs, preprocess=False,
                   postprocess=False, **event_kwargs)


def with_extra_outputs(fn: Callable[..., Any], *extras: Callable[[tuple, tuple], Any]) -> Callable[..., Any]:
    """``fn``'s outputs followed by ``extra(args, outputs)`` for each extra: what chained ``.then``
    events computed from them, answered in the same event (one queue round trip instead of several)."""
    def extended(out: Any, args: tuple) -> tuple:
        out = tuple(out)
        return (*out, *(extra(args, out) for extra in extras))
    return then(fn, extended)


def serialise(component: Any, value: Any) -> Any:
    """``component.postprocess(value)`` as sent to the page (a State's value is kept as it is)."""
    from gradio.data_classes import GradioModel, GradioRootModel

    if getattr(component, "stateful", False) or (isinstance(value, dict) and value.get("__type__") == "update"):
        return value
    data = gallery_data(value) if type(component).__name__ == "Gallery" else None
    if data is None:
        data = component.postprocess(value)
    return data.model_dump() if isinstance(data, (GradioModel, GradioRootModel)) else data


def gallery_data(value: Any) -> Any:
    """``gr.Gallery.postprocess`` of a list of (local image path, caption), without the thread
    pool it starts per call; ``None`` for anything else (arrays, URLs, SVG, video: gradio's own)."""
    from gradio.components.gallery import GalleryData, GalleryImage
    from gradio.data_classes import ImageData
    from gradio_client import utils as client_utils

    items = []
    for item in value or []:
        path, caption = item if isinstance(item, (tuple, list)) else (item, None)
        if not isinstance(path, str) or path.lower().endswith(".svg") or client_utils.is_http_url_like(path):
            return None
        mime = client_utils.get_mimetype(path)
        if mime is not None and "video" in mime:
            return None
        items.append(GalleryImage(image=ImageData(path=path, url=None, orig_name=Path(path).name, mime_type=mime),
                                  caption=caption))
    return GalleryData(root=items)


def noop() -> str:
    """Does nothing: ``bench.serving`` times this endpoint to learn gradio's own cost per call."""
    return ""


def add_noop_endpoint() -> None:
    """``/noop`` through the same queue as the searches, callable but not in the page or the API
    docs (call it inside the ``gr.Blocks`` context)."""
    import gradio as gr

    gr.api(noop, api_name="noop", api_visibility="undocumented")


def launch_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` from the command line, checked before the slow
    start-up (a bad --auth-file fails in milliseconds): address, upload limit, login."""
    auth = read_auth_file(args.auth_file) if args.auth_file else None
    from starlette.middleware import Middleware

    limit = max_upload_bytes(args.max_upload_mb)
    options = {"server_name": args.host, "server_port": args.port, "share": args.share, "max_file_size": limit,
               "app_kwargs": {"middleware": [Middleware(UploadLimit, limit=limit)]}, "auth": auth, "show_error": False}
    warning = exposure_warning(args.host, args.share, auth is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return options
