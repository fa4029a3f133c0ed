"""Text searches in worker processes, so the web layer and the search run on different cores.

Why (issue 26): gradio serves every request from one Python process, and a text search is
almost all Python (parse, fusion, SQLite reads, report cards): under one GIL at most one core
does that work, whatever the queue's concurrency. ``bench.serving`` measured it: even gradio's
own no-op endpoint reaches only 0.45 of its floor (cores / time per call) at 16 clients, and
``/search_text`` 0.28. A worker process holds its own copy of the service (model, index,
caches) and answers ``search_text`` while the web process does HTTP, pre- and postprocessing.

Why a pipe per worker, awaited on the event loop (``search_text_async``), and not a
``ProcessPoolExecutor``: the executor hands each call through a feeder thread and a result thread
in the web process, and gradio hands a plain handler to a thread of its own; each hand-over is a
GIL switch against the busy event loop. Measured under 16 clients (py-spy ``--gil``), the web
process held its GIL 7.1 ms per text query (2.3 for gradio's no-op), the hand-overs the largest
single share; awaited, 5.1 ms (docs/performance.md). Here
the event loop writes the query down the worker's pipe and is woken by the answer (``add_reader``):
no thread in the web process takes part. ``search_text`` (blocking, for threads and tests) uses the
same pipes.

Same answers: the worker runs the very same ``SearchService.search_text`` on the same run and
index (``tests/test_search_workers.py`` compares them). Nothing is lost when a worker is not
there yet (start-up: in-process until the worker has loaded) or dies (in-process from then on,
logged once). Image queries stay in process: the image tower already releases the GIL.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, Callable

log = logging.getLogger(__name__)

_service: Any = None  # the worker's own SearchService (set by _serve in each worker process)
READY, FAILED, OK, ERROR = "ready", "failed", "ok", "error"


def _serve(conn: Connection, loader: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """A worker's life: exit with the app, one intra-op thread, load the service from the same args,
    then answer ``(fn, args)`` calls until the app closes its end of the pipe.

    One thread per query too (``$CXR_QUERY_THREADS``, read by ``runtime.threads.query_threads``): a
    worker answers one query at a time beside the other workers and the web process, so a query that
    runs "alone" in it must not take every core (two workers at two threads each on 2 cores spent
    ~30% more CPU per text query waiting at OpenMP barriers, python -m bench.serving --sweep)."""
    global _service
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="exit-with-app", daemon=True).start()
    try:
        import torch

        from runtime.threads import QUERY_THREADS_ENV

        os.environ[QUERY_THREADS_ENV] = "1"
        torch.set_num_threads(1)
        _service = loader(args)
        conn.send((READY, None))
    except BaseException as exc:  # noqa: BLE001 - told to the app, which then searches in process
        conn.send((FAILED, f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            fn, call_args = conn.recv()
        except (EOFError, OSError):  # the app closed the pipe or is gone
            return
        try:
            try:
                conn.send((OK, fn(*call_args)))  # pickled before anything is written: one that will not fails whole
            except (OSError, ValueError):  # the app closed its end meanwhile
                raise
            except Exception as exc:  # noqa: BLE001 - one query's failure; the app answers it itself
                conn.send((ERROR, f"{type(exc).__name__}: {exc}"))
        except (OSError, ValueError):
            return


def _exit_with_parent(parent: int) -> None:
    """A worker whose app is gone (killed, or exited without closing its pipe) exits too, even while
    it is still loading or busy with a query."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _search_text(*query: Any) -> tuple:
    return _service.search_text(*query)


class WorkerGone(RuntimeError):
    """The worker process died or its pipe closed."""


class _Worker:
    """One spawned worker process and the app's end of its pipe (used by one thread at a time)."""

    def __init__(self, ctx: Any, loader: Callable[[argparse.Namespace], Any], args: argparse.Namespace):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, loader, args), name="cxr-search-worker", daemon=True)
        self.process.start()
        child.close()  # the worker holds the only other end: its exit shows here as EOF
        self._pending: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None  # an awaited call in flight

    def started(self) -> None:
        """Wait until the worker has loaded its service; ``RuntimeError`` if it could not."""
        status, detail = self._receive()
        if status != READY:
            raise RuntimeError(detail)

    def call(self, fn: Callable[..., Any], args: tuple) -> Any:
        """``fn(*args)`` in the worker: its value, ``RuntimeError`` if it raised there, ``WorkerGone``."""
        try:
            self.conn.send((fn, args))
        except (OSError, ValueError) as exc:  # broken pipe; closed
            raise WorkerGone(str(exc)) from exc
        status, value = self._receive()
        if status != OK:
            raise RuntimeError(value)
        return value

    def call_async(self, fn: Callable[..., Any], args: tuple, done: Callable[["_Worker"], None]) -> asyncio.Future:
        """``fn(*args)`` in the worker, answered on the running event loop: a future of its value
        (``RuntimeError`` if it raised there, ``WorkerGone``). ``done(self)`` runs once the answer is
        read, even when the future was cancelled meanwhile (the answer is drained, never left in the
        pipe for the next query); it is not called when the worker is gone."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        try:
            self.conn.send((fn, args))  # a few hundred bytes: the pipe's buffer takes them at once
        except (OSError, ValueError) as exc:
            answer.set_exception(WorkerGone(str(exc)))
            return answer
        fd = self.conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            self._pending = None
            try:
                status, value = self._receive()
            except WorkerGone as exc:
                if not answer.done():
                    answer.set_exception(exc)
                return
            done(self)
            if not answer.done():
                answer.set_result(value) if status == OK else answer.set_exception(RuntimeError(value))

        loop.add_reader(fd, readable)
        self._pending = (loop, answer)
        return answer

    def _receive(self) -> tuple[str, Any]:
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerGone(f"search worker {self.process.pid} exited") from exc

    def close(self) -> None:
        """Close the app's end (an idle worker sees EOF and exits; a busy one when it answers or its app is
        gone); an awaited call in flight fails with ``WorkerGone`` instead of waiting on a closed pipe."""
        pending = self._pending
        if pending is None:
            self.conn.close()
            return
        loop, answer = pending

        def abandon() -> None:
            if self._pending is not None:
                self._pending = None
                loop.remove_reader(self.conn.fileno())
                if not answer.done():
                    answer.set_exception(WorkerGone("the search workers were closed"))
            self.conn.close()

        try:
            loop.call_soon_threadsafe(abandon)
        except RuntimeError:  # the loop is closed: nothing waits any more
            self.conn.close()


class IdleWorkers:
    """The idle workers, each handed to one caller at a time: threads wait on a condition,
    coroutines on a future; ``close`` wakes every waiter with ``WorkerGone``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: deque[_Worker] = deque()
        self._freed = threading.Condition(self._lock)
        self._waiters: deque[asyncio.Future] = deque()
        self.closed = False

    def put(self, worker: _Worker) -> None:
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.get_loop().call_soon_threadsafe(self._hand, waiter, worker)
                    return
            self._free.append(worker)
            self._freed.notify()

    def _hand(self, waiter: asyncio.Future, worker: _Worker) -> None:
        if waiter.done():  # cancelled meanwhile: the next caller gets it
            self.put(worker)
        else:
            waiter.set_result(worker)

    def get(self) -> _Worker:
        with self._lock:
            while not self._free:
                if self.closed:
                    raise WorkerGone("no search worker is running")
                self._freed.wait()
            return self._free.popleft()

    async def get_async(self) -> _Worker:
        with self._lock:
            if self.closed:
                raise WorkerGone("no search worker is running")
            if self._free:
                return self._free.popleft()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:  # cancelled just after a worker was handed over: give it back
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.put(waiter.result())
            raise

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._freed.notify_all()
            for waiter in self._waiters:
                waiter.get_loop().call_soon_threadsafe(
                    lambda w=waiter: w.done() or w.set_exception(WorkerGone("no search worker is running")))
            self._waiters.clear()


class SearchWorkers:
    """``search_text`` answered by ``n`` worker processes, falling back to ``local`` (the web
    process's own service) until they are ready and if they break."""

    def __init__(self, local: Any, n: int, loader: Callable[[argparse.Namespace], Any], args: argparse.Namespace):
        self.local, self.n = local, n
        self._ready, self._settled = threading.Event(), threading.Event()
        self._idle = IdleWorkers()
        log.info("search workers: starting %d process(es)", n)
        ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] | None = [_Worker(ctx, loader, args) for _ in range(n)]
        threading.Thread(target=self._warm, name="search-workers-start", daemon=True).start()

    def _warm(self) -> None:
        """Wait for every worker to load (each loads the service) without holding up the app's start."""
        try:
            for worker in list(self._workers or []):
                worker.started()
                self._idle.put(worker)
            if self._workers is not None:
                self._ready.set()
                log.info("search workers: %d process(es) ready", self.n)
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start leaves the app in process
            self._give_up(exc)
        finally:
            self._settled.set()

    def _give_up(self, exc: BaseException) -> None:
        if self._workers is not None:
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
        return self._workers is not None and self._ready.is_set()

    def _call(self, fn: Callable[..., Any], args: tuple) -> Any:
        """``fn(*args)`` on the next idle worker, blocking (waiting for one if all are busy)."""
        worker = self._idle.get()
        try:
            value = worker.call(fn, args)
        except WorkerGone:  # not given back: it is gone
            raise
        except BaseException:  # the call failed there; the worker is fine
            self._idle.put(worker)
            raise
        self._idle.put(worker)
        return value

    async def _call_async(self, fn: Callable[..., Any], args: tuple) -> Any:
        """``fn(*args)`` on the next idle worker, awaited on the event loop."""
        worker = await self._idle.get_async()
        return await worker.call_async(fn, args, self._idle.put)

    def in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run by a worker (a picklable, module-level function): diagnostics and tests."""
        if self._workers is None:
            raise RuntimeError("no search worker is running")
        return self._call(fn, args)  # waits for a worker still loading

    def search_text(self, *query: Any) -> tuple:
        """``SearchService.search_text`` in a worker, blocking the calling thread."""
        if not self.active:
            return self.local.search_text(*query)
        try:
            return self._call(_search_text, query)
        except WorkerGone as exc:  # a worker died (killed, out of memory): answer here, from now on
            self._give_up(exc)
            return self.local.search_text(*query)
        except Exception:  # noqa: BLE001 - one query that failed there (e.g. an answer that would not pickle)
            log.exception("a search worker failed on one query; answered in the app process")
            return self.local.search_text(*query)

    async def search_text_async(self, *query: Any) -> tuple:
        """``SearchService.search_text`` in a worker, awaited on the event loop (the app's handler: gradio
        awaits it without a thread); in the app process, in a thread, when no worker answers."""
        if self.active:
            try:
                return await self._call_async(_search_text, query)
            except WorkerGone as exc:  # a worker died (killed, out of memory): answer here, from now on
                self._give_up(exc)
            except Exception:  # noqa: BLE001 - one query that failed there
                log.exception("a search worker failed on one query; answered in the app process")
        import anyio

        return await anyio.to_thread.run_sync(lambda: self.local.search_text(*query))

    def close(self) -> None:
        """Stop taking searches; idle workers exit now, a busy or still-loading one when it is done or
        its parent is gone (``_exit_with_parent``), so an app never waits on a worker to exit."""
        self._ready.clear()
        workers, self._workers = self._workers, None
        self._idle.close()
        for worker in workers or []:
            worker.close()
