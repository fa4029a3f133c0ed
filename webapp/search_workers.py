"""Text searches in worker processes, so the web layer and the search run on different cores.

Why (issue 26): gradio serves every request from one Python process, and a text search is
almost all Python (parse, fusion, SQLite reads, report cards): under one GIL at most one core
does that work, whatever the queue's concurrency. ``bench.serving`` measured it: even gradio's
own no-op endpoint reaches only 0.45 of its floor (cores / time per call) at 16 clients, and
``/search_text`` 0.28. A worker process holds its own copy of the service (model, index,
caches) and answers ``search_text`` while the web process does HTTP, pre- and postprocessing.

Same answers: the worker runs the very same ``SearchService.search_text`` on the same run and
index (``tests/test_search_workers.py`` compares them). Nothing is lost when a worker is not
there yet (start-up: in-process until the worker has loaded) or dies (in-process from then on,
logged once). Image queries stay in process: the image tower already releases the GIL.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

log = logging.getLogger(__name__)

_service: Any = None  # the worker's own SearchService (set by _start in each worker process)


def _start(loader: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """Worker initializer: exit with the app, one intra-op thread, then the service from the same args."""
    global _service
    import torch

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="exit-with-app", daemon=True).start()
    torch.set_num_threads(1)
    _service = loader(args)


def _exit_with_parent(parent: int) -> None:
    """A worker whose app is gone (killed, or exited without closing its pool) exits too: its queue's
    pipe never reports the parent's end closed, since the worker holds both ends."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _ready() -> bool:
    return _service is not None


def _search_text(*query: Any) -> tuple:
    return _service.search_text(*query)


class SearchWorkers:
    """``search_text`` answered by ``n`` worker processes, falling back to ``local`` (the web
    process's own service) until they are ready and if they break."""

    def __init__(self, local: Any, n: int, loader: Callable[[argparse.Namespace], Any], args: argparse.Namespace):
        self.local, self.n = local, n
        self._ready, self._settled = threading.Event(), threading.Event()
        log.info("search workers: starting %d process(es)", n)
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            n, mp_context=multiprocessing.get_context("spawn"), initializer=_start, initargs=(loader, args))
        threading.Thread(target=self._warm, name="search-workers-start", daemon=True).start()

    def _warm(self) -> None:
        """Start every worker (each loads the service) without holding up the app's start."""
        try:
            if all(f.result() for f in [self._pool.submit(_ready) for _ in range(self.n)]):
                self._ready.set()
                log.info("search workers: %d process(es) ready", self.n)
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start leaves the app in process
            self._give_up(exc)
        finally:
            self._settled.set()

    def _give_up(self, exc: BaseException) -> None:
        log.warning("search workers unavailable (%s); text search continues in the app process", exc)
        self.close()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the workers have started or failed to; True if they answer (tests and the bench
        wait for it; the app does not)."""
        self._settled.wait(timeout)
        return self._ready.is_set()

    @property
    def active(self) -> bool:
        """Whether searches go to the workers (False before they are ready and after they broke)."""
        return self._pool is not None and self._ready.is_set()

    def in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run by a worker (a picklable, module-level function): diagnostics and tests."""
        if self._pool is None:
            raise RuntimeError("no search worker is running")
        return self._pool.submit(fn, *args).result()

    def search_text(self, *query: Any) -> tuple:
        pool = self._pool
        if pool is None or not self._ready.is_set():
            return self.local.search_text(*query)
        try:
            return pool.submit(_search_text, *query).result()
        except BrokenProcessPool as exc:  # a worker died (killed, out of memory): answer here, from now on
            self._give_up(exc)
            return self.local.search_text(*query)
        except Exception:  # noqa: BLE001 - one query that failed there (e.g. an answer that would not pickle)
            log.exception("a search worker failed on one query; answered in the app process")
            return self.local.search_text(*query)

    def close(self) -> None:
        """Stop taking searches; idle workers exit now, a busy or still-loading one when its parent is
        gone (``_exit_with_parent``), so an app never waits on a worker to exit."""
        self._ready.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
