"""How many CPU threads torch may use, decided in ONE place.

Three kinds of work run on the same (typically 2-core) machine:

* **serving**: one query = one image or one phrase through the towers. :data:`query_threads`
  gives a query that runs alone every core and, while ``n`` queries run at once, each a
  ``1/n`` share (1 thread each on 2 cores with gradio concurrency 2): a lone ViT-B/16 image
  query needs both cores to answer in < 300 ms, and two queries at once on 2 threads each
  would fight over the cores (an OpenMP parallel region waits for its slowest thread).
  ``python -m bench.query`` compares fixed 1, fixed 2 and this adaptive policy side by side.
  On a machine shared with other heavy jobs, 2 threads can stall badly (measured: an
  offline-backbone query 38 ms on 1 thread vs 1.5 s on 2); ``CXR_QUERY_THREADS=1`` caps it.
* **bulk**: embedding a dataset. :func:`map_bulk` runs independent batches on one worker per
  core, each with ONE intra-op thread, instead of one batch at a time on all cores: no thread
  waits at a barrier for a descheduled one, so it degrades gracefully on a shared machine.
  ``python -m bench.embed`` (images/s; 1 thread / 2 intra-op threads / 2 workers x 1 thread):
  shared machine 17 / 12-14 / 18-20, quiet machine 19 / 32 / 29. ``CXR_BULK_THREADS`` sets
  the worker count.
* **training** the head: one sequential loop of mid-sized matrix products, on ONE thread
  (``CXR_TRAIN_THREADS`` to change). ``python -m bench.train_head`` (s per epoch, 1 / 2
  threads): shared machine 2.0 / 4.7, quiet machine 1.8 / 1.3: two threads win a little when
  nothing else runs and lose badly when something does.

torch keeps the intra-op thread count per OS thread (OpenMP/MKL thread-local settings,
initialised from the last ``torch.set_num_threads`` when a thread first runs an op), so
``configure_serving`` must run at start-up before the web server's worker threads exist.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

BULK_THREADS_ENV = "CXR_BULK_THREADS"
TRAIN_THREADS_ENV = "CXR_TRAIN_THREADS"
QUERY_THREADS_ENV = "CXR_QUERY_THREADS"
_lock = threading.Lock()


def available_cores() -> int:
    """Cores this process may run on (respects taskset / cgroup CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def serving_threads(concurrency: int) -> int:
    """Intra-op threads per query when ``concurrency`` queries run at once."""
    return max(1, available_cores() // max(1, int(concurrency)))


def query_thread_cap(cores: int | None = None) -> int:
    """Most intra-op threads one query may use: ``$CXR_QUERY_THREADS`` if set, else every core."""
    return _env_count(QUERY_THREADS_ENV, cores or available_cores())


def bulk_thread_count() -> int:
    """Workers for bulk embedding: ``$CXR_BULK_THREADS`` if set, else every available core."""
    return _env_count(BULK_THREADS_ENV, available_cores())


def training_threads() -> int:
    """Intra-op threads for the head's training loop: ``$CXR_TRAIN_THREADS`` if set, else 1."""
    return _env_count(TRAIN_THREADS_ENV, 1)


def _env_count(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return max(1, int(value))
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None


def configure_serving(concurrency: int = 2) -> int:
    """Set torch's thread pools for answering queries; returns the default intra-op count
    (each query then sets its own through :data:`query_threads`).

    Call once at start-up, before the first model call (torch fixes the inter-op pool size
    once it has been used; one inter-op thread is enough since the app parallelises by
    query, not inside one).
    """
    threads = serving_threads(concurrency)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # inter-op pool already started: keep it, the intra-op setting matters
        pass
    return threads


class QueryThreads:
    """Intra-op threads for each query: all of ``cap`` when it runs alone, an equal share of the
    cores while several run at once.

    ``with query_threads() as n:`` around a query's model call. The count is set on the
    calling thread only (torch's OpenMP setting is per OS thread), so one query's setting
    never changes another's mid-flight; a query that started alone keeps its threads when a
    second one arrives, for the rest of that call.
    """

    def __init__(self, cap: int | None = None, cores: int | None = None) -> None:
        self._cap = cap
        self._cores = cores
        self._in_flight = 0
        self._pinned: int | None = None
        self._count_lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def share(self, in_flight: int) -> int:
        """Threads for one of ``in_flight`` concurrent queries."""
        if self._pinned is not None:
            return self._pinned
        cores = self._cores or available_cores()
        cap = self._cap or query_thread_cap(cores)
        return max(1, min(cap, cores // max(1, in_flight)))

    @contextmanager
    def __call__(self) -> Iterator[int]:
        with self._count_lock:
            self._in_flight += 1
            n = self.share(self._in_flight)
        if torch.get_num_threads() != n:  # per thread; skip the call (it resets oneDNN caches) when unchanged
            torch.set_num_threads(n)
        try:
            yield n
        finally:
            with self._count_lock:
                self._in_flight -= 1


    @contextmanager
    def pinned(self, n: int) -> Iterator[None]:
        """Every query gets exactly ``n`` threads inside this block (for side-by-side timings)."""
        previous, self._pinned = self._pinned, max(1, int(n))
        try:
            yield
        finally:
            self._pinned = previous


query_threads = QueryThreads()  # the process's one policy: every query through SearchEngine uses it


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run a block with ``n`` intra-op threads, restoring the previous count afterwards."""
    with _lock:
        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, int(n)))
    try:
        yield torch.get_num_threads()
    finally:
        with _lock:
            torch.set_num_threads(previous)


def map_bulk(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads (default :func:`bulk_thread_count`),
    each running torch with one intra-op thread; results in the order of ``items``.

    Give the longest jobs first: workers take jobs in order as they free up.
    """
    n = max(1, int(workers or bulk_thread_count()))
    previous = torch.get_num_threads()

    def run(item: T) -> R:
        torch.set_num_threads(1)  # this worker thread only (see the module docstring)
        return fn(item)

    try:
        if n == 1 or len(items) <= 1:
            return [run(x) for x in items]
        with ThreadPoolExecutor(min(n, len(items)), thread_name_prefix="cxr-bulk") as pool:
            return list(pool.map(run, items))
    finally:
        with _lock:
            torch.set_num_threads(previous)  # the process-wide default new threads start from
