"""How many CPU threads torch may use, decided in ONE place.

Two kinds of work run on the same (typically 2-core) machine:

* **serving**: one query = one image or one phrase through the towers. The app answers
  ``concurrency`` queries at once (gradio), so each query gets ``cores // concurrency``
  intra-op threads (1 on 2 cores with concurrency 2). Never more: an OpenMP parallel region
  waits for its slowest thread, and a thread whose core is busy (the other query, the web
  server, another process) stalls every small op. ``python -m bench.query`` measured one
  offline-backbone image query at ~40 ms with 1 thread and 1.7-1.9 s with 2 threads while the
  other core was busy, and two concurrent 1-thread queries finishing far sooner than two
  2-thread ones.
* **bulk**: embedding a dataset or training the head, a few large ops per batch, nothing
  else running. It uses every core by default (``CXR_BULK_THREADS`` overrides, e.g. 1 on a
  machine shared with other jobs, where ``python -m bench.embed`` shows 2 threads losing).

``configure_serving`` is called once at app start-up; ``bulk_threads`` wraps the bulk loops
(``model.features.embed_studies``), raising the thread count for their duration only and
restoring the serving setting afterwards, so a cold start that builds the demo inside the
app does not embed 3,955 images on one core.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

BULK_THREADS_ENV = "CXR_BULK_THREADS"
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


def bulk_thread_count() -> int:
    """Threads for bulk work: ``$CXR_BULK_THREADS`` if set, else every available core."""
    value = os.environ.get(BULK_THREADS_ENV, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"{BULK_THREADS_ENV} must be a whole number, not {value!r}") from None
    return available_cores()


def configure_serving(concurrency: int = 2) -> int:
    """Set torch's thread pools for answering queries; returns the intra-op thread count.

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


@contextmanager
def bulk_threads() -> Iterator[int]:
    """Run a bulk block (dataset embedding, head training) on :func:`bulk_thread_count` threads."""
    with torch_threads(bulk_thread_count()) as n:
        yield n
