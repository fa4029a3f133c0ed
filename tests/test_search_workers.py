"""Issue 26: text searches answered by a worker process give the very answers of the app process,
and nothing is lost while the worker starts or after it dies. The app started with a worker, answering through it
and stopping it on SIGTERM, is tests/test_privacy.py's audited app (one app start for both)."""
from __future__ import annotations

import argparse
import os
import random
import signal

import pytest

from webapp.search_workers import SearchWorkers

PHRASES = ["large right pleural effusion", "small left pleural effusion", "cardiomegaly", "no pneumothorax",
           "right upper lobe opacity", "bilateral pleural effusions", "left basilar opacity", "heart is enlarged",
           "no acute cardiopulmonary abnormality", "xyzzy plugh", ""]


def worker_args(run_dir, index_dir) -> argparse.Namespace:
    return argparse.Namespace(run=str(run_dir), index=str(index_dir), bundle=None, data_root=None, backbone_path=None,
                              keep_uploads=False, text_mode=None, runtime="torch")


@pytest.fixture(scope="module")
def local_service(demo_built):
    """The in-process service the workers' answers are compared with, its queries on one thread as a
    worker's are (a float sum's last bits depend on how many threads share it)."""
    from runtime.threads import QUERY_THREADS_ENV
    from webapp.loading import load_service

    run_dir, index_dir = demo_built
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(QUERY_THREADS_ENV, "1")
        yield load_service(worker_args(run_dir, index_dir), with_maps=False)


@pytest.fixture(scope="module")
def workers(local_service, demo_built):
    from webapp.loading import load_worker_service

    pool = SearchWorkers(local_service, 1, load_worker_service, worker_args(*demo_built))
    assert pool.wait_ready(300), "the search worker did not start"
    yield pool
    pool.close()


def test_fifty_text_queries_answer_the_same_in_the_worker(local_service, workers):
    rng = random.Random(26)
    for i in range(50):
        query = (PHRASES[i % len(PHRASES)], rng.choice([3, 5, 8]), rng.choice(["any", "abnormal"]), "any", "any",
                 rng.choice(["any", "left", "right"]), rng.choice([None, "dense", "hybrid"]))
        here, there = local_service.search_text(*query), workers.search_text(*query)
        assert there == here, f"query {query!r} answered differently in the worker"
    # and the answers are real results, not an error status repeated
    gallery, _, status, records, _ = workers.search_text("small left pleural effusion", 8, "any", "any", "any")
    assert len(gallery) == 8 and len(records["hits"]) == 8, status


def test_the_worker_runs_in_another_process(workers):
    pids = {workers.in_worker(os.getpid) for _ in range(3)}
    assert pids and os.getpid() not in pids


def test_a_worker_gives_each_query_one_thread(workers, monkeypatch):
    """Two workers beside the web process on 2 cores: a query "alone" in a worker still takes one thread
    (runtime.threads would give it every core), where the web process's own lone query takes them all."""
    from runtime.threads import QUERY_THREADS_ENV, query_thread_cap

    monkeypatch.delenv(QUERY_THREADS_ENV, raising=False)
    assert workers.in_worker(query_thread_cap, 4) == 1
    assert query_thread_cap(4) == 4


def test_searches_continue_in_process_before_the_worker_is_ready_and_after_it_dies(local_service, demo_built):
    from webapp.loading import load_worker_service

    pool = SearchWorkers(local_service, 1, load_worker_service, worker_args(*demo_built))
    try:
        query = ("right pneumothorax", 5, "any", "any", "any")
        expected = local_service.search_text(*query)
        assert pool.search_text(*query) == expected  # answered whether or not the worker is up yet
        assert pool.wait_ready(300)
        pid = pool.in_worker(os.getpid)
        os.kill(pid, signal.SIGKILL)  # the worker dies (out of memory, killed by an operator)
        assert pool.search_text(*query) == expected  # answered here instead, no error shown
        assert not pool.wait_ready(0) and not pool.active
        assert pool.search_text(*query) == expected  # and from then on
    finally:
        pool.close()


def test_a_worker_that_cannot_load_leaves_search_in_process(local_service, tmp_path):
    from webapp.loading import load_worker_service

    broken = worker_args(tmp_path / "no-run", tmp_path / "no-index")
    pool = SearchWorkers(local_service, 1, load_worker_service, broken)
    try:
        assert not pool.wait_ready(120)
        query = ("cardiomegaly", 4, "any", "any", "any")
        assert pool.search_text(*query) == local_service.search_text(*query)
    finally:
        pool.close()


def test_a_worker_exits_when_its_app_is_killed(tmp_path):
    """SIGKILL of the app runs no clean-up: the worker notices its parent is gone and exits."""
    import subprocess
    import sys
    import time

    from tests.app_server import ROOT

    script = tmp_path / "owner.py"
    script.write_text(
        "import argparse, os, sys, time\n"
        "from webapp.search_workers import SearchWorkers\n"
        "if __name__ == '__main__':  # spawned workers import this file as a module\n"
        "    pool = SearchWorkers(None, 1, vars, argparse.Namespace())  # vars: a loader that loads nothing\n"
        "    assert pool.wait_ready(120)\n"
        "    print(pool.in_worker(os.getpid), flush=True)\n"
        "    time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        worker = int(owner.stdout.readline())
        assert os.path.exists(f"/proc/{worker}")
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{worker}"):
            assert time.monotonic() < deadline, "the worker outlived its killed app"
            time.sleep(0.2)
    finally:
        owner.kill()


def test_no_worker_for_a_milvus_index_or_when_asked_for_none(monkeypatch):
    """A Milvus index is searched by Milvus itself (and Milvus Lite's file takes one client): no worker."""
    import types

    import app

    service = types.SimpleNamespace(loaded_from=("runs/x", "milvus://demo.db#cxr"))
    assert app.search_workers(service, app.parse_args(["--search-workers", "1"])) is None
    plain = types.SimpleNamespace(loaded_from=("runs/x", "indexes/x"))
    assert app.search_workers(plain, app.parse_args(["--search-workers", "0"])) is None
    monkeypatch.setenv("CXR_SEARCH_WORKERS", "0")
    assert app.parse_args([]).search_workers == 0


def test_the_default_is_two_workers_on_two_cores_and_none_on_one(monkeypatch):
    """Without --search-workers or $CXR_SEARCH_WORKERS (the suite sets 0 for the apps it only queries: see
    conftest), the app starts two workers on 2+ cores (bench.serving --sweep) and searches in the web process
    on one core."""
    import types

    import app
    import runtime.threads
    import webapp.search_workers

    started = []
    monkeypatch.setattr(webapp.search_workers, "SearchWorkers", lambda service, n, load, args: started.append(
        (n, args.run, args.index)) or "pool")
    monkeypatch.delenv("CXR_SEARCH_WORKERS", raising=False)
    plain = types.SimpleNamespace(loaded_from=("runs/x", "indexes/x"))
    args = app.parse_args([])
    assert args.search_workers is None
    for cores, expected in ((2, "pool"), (16, "pool"), (1, None)):
        monkeypatch.setattr(runtime.threads, "available_cores", lambda: cores)
        assert app.search_workers(plain, args) == expected, cores
    assert started == [(2, "runs/x", "indexes/x")] * 2 and app.DEFAULT_SEARCH_WORKERS == 2
    assert args.concurrency == 4


def test_a_query_that_fails_in_the_worker_is_answered_in_process():
    """The worker raises (here: its 'service' has no search_text): the user still gets the app's answer."""
    import argparse
    import types

    local = types.SimpleNamespace(search_text=lambda *q: ("answered here", q))
    pool = SearchWorkers(local, 1, vars, argparse.Namespace())  # vars: a loader whose service cannot search
    try:
        assert pool.wait_ready(120)
        assert pool.search_text("cardiomegaly", 3) == ("answered here", ("cardiomegaly", 3))
        assert pool.active  # one failed query does not stop the workers
    finally:
        pool.close()


def test_awaited_searches_answer_the_same_and_a_cancelled_one_leaves_nothing_behind(local_service, workers):
    """The app's handler awaits the worker on the event loop (``search_text_async``): concurrent queries
    share the one worker and each gets its own answer; a query cancelled while the worker is busy with it
    (a client gone) is drained, so the next query never reads its answer."""
    import asyncio

    rng = random.Random(27)
    queries = [(PHRASES[i % len(PHRASES)], rng.choice([3, 5, 8]), "any", "any", "any", rng.choice(["any", "left"]),
                rng.choice(["dense", "hybrid"])) for i in range(12)]
    expected = [local_service.search_text(*q) for q in queries]

    async def scenario():
        answers = await asyncio.gather(*(workers.search_text_async(*q) for q in queries))
        first = asyncio.ensure_future(workers.search_text_async("large right pleural effusion", 8, "any", "any", "any"))
        await asyncio.sleep(0)  # sent: the worker is searching it
        first.cancel()
        after = await workers.search_text_async("cardiomegaly", 3, "any", "any", "any")
        return answers, first, after

    answers, first, after = asyncio.run(scenario())
    assert answers == expected
    assert first.cancelled()
    assert after == local_service.search_text("cardiomegaly", 3, "any", "any", "any")
    assert workers.active and workers.search_text("no pneumothorax", 4, "any", "any", "any") == \
        local_service.search_text("no pneumothorax", 4, "any", "any", "any")  # the blocking path shares the pipe


def test_the_page_handler_awaits_the_worker_and_answers_as_the_app_process(local_service, workers):
    """build_ui with the worker's coroutine: the text events are coroutine functions (gradio runs them on
    its event loop, no thread hop), through every wrapper, and give the payload of the in-process search."""
    import asyncio
    import inspect

    import app
    from gradio.state_holder import SessionState

    def payloads(text_search):
        demo = app.build_ui(local_service, [], [], text_search=text_search)
        api = next(fn for fn in demo.fns.values() if fn.api_name == "search_text")

        async def run():
            out = await demo.process_api(api, ["left pleural effusion", 5, "any", "any", "any", "any", "hybrid"],
                                         state=SessionState(demo), session_hash="t")
            return out["data"]
        return inspect.iscoroutinefunction(api.fn), asyncio.run(run())

    awaited, remote = payloads(workers.search_text_async)
    threaded, here = payloads(None)
    assert awaited and not threaded
    assert remote == here


class _SlowService:
    """A worker's service that answers after a pause, so a query sent to it is certainly still waiting."""

    def search_text(self, *query):
        import time

        time.sleep(3)
        return ("answered by the slow worker", query)


def slow_service(args: argparse.Namespace) -> _SlowService:
    """A loader (picklable: a module function) whose worker starts in a second, without the model: the tests
    below are about the worker's pipe and death, and compare with the in-process answers."""
    return _SlowService()


def test_an_awaited_search_is_answered_in_process_when_the_worker_dies(local_service):
    import asyncio

    pool = SearchWorkers(local_service, 1, slow_service, argparse.Namespace())
    try:
        assert pool.wait_ready(300)
        os.kill(pool.in_worker(os.getpid), signal.SIGKILL)
        query = ("right pneumothorax", 5, "any", "any", "any")
        assert asyncio.run(pool.search_text_async(*query)) == local_service.search_text(*query)
        assert not pool.active
        assert asyncio.run(pool.search_text_async(*query)) == local_service.search_text(*query)
    finally:
        pool.close()


def test_closing_the_workers_during_an_awaited_search_answers_it_in_process(local_service):
    """close() (the app stopping, or another worker found dead) while a query waits on a worker (one that takes
    3 s to answer): the query is answered in process, it does not wait on a closed pipe."""
    import asyncio
    import threading

    pool = SearchWorkers(local_service, 1, slow_service, argparse.Namespace())
    query = ("left lower lobe pneumonia", 6, "any", "any", "any")
    try:
        assert pool.wait_ready(300)

        async def scenario():
            pending = asyncio.ensure_future(pool.search_text_async(*query))
            await asyncio.sleep(0.2)  # sent: waiting on the worker's answer
            threading.Thread(target=pool.close).start()
            return await asyncio.wait_for(pending, 60)

        assert asyncio.run(scenario()) == local_service.search_text(*query)
        assert not pool.active
    finally:
        pool.close()


@pytest.mark.parametrize("turns", [0, 1, 2])
def test_a_worker_handed_to_a_query_cancelled_meanwhile_is_given_back(turns):
    """A waiting query cancelled (its client gone) around the moment a worker is handed to it: before the
    hand-over, between the hand-over and its resumption, or after: the worker is never lost (one lost
    worker would leave every later query waiting)."""
    import asyncio

    from webapp.search_workers import IdleWorkers

    idle = IdleWorkers()

    async def scenario():
        waiting = asyncio.ensure_future(idle.get_async())
        await asyncio.sleep(0)  # no worker free: it waits
        idle.put("worker")
        for _ in range(turns):
            await asyncio.sleep(0)
        waiting.cancel()
        try:
            got = await waiting
        except asyncio.CancelledError:
            got = None
        if got is not None:  # it resumed with the worker before the cancel: it gives it back itself
            idle.put(got)
        return await asyncio.wait_for(idle.get_async(), 5)

    assert asyncio.run(scenario()) == "worker"
