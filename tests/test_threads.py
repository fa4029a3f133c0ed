"""The serving thread policy (runtime.threads.query_threads): every core for a lone query, a
share each for concurrent ones, set per OS thread, and used by every engine query."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.threads import QUERY_THREADS_ENV, QueryThreads, query_threads


def test_share_divides_the_cores_among_queries_in_flight():
    policy = QueryThreads(cores=4)
    assert [policy.share(n) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    assert QueryThreads(cores=4, cap=2).share(1) == 2


def test_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(QUERY_THREADS_ENV, "1")
    assert QueryThreads(cores=2).share(1) == 1
    monkeypatch.setenv(QUERY_THREADS_ENV, "lots")
    with pytest.raises(ValueError, match=QUERY_THREADS_ENV):
        QueryThreads(cores=2).share(1)


def test_lone_query_gets_every_core_and_two_at_once_one_each():
    policy = QueryThreads(cores=2, cap=2)

    def lone() -> int:
        with policy() as n:
            return n * 10 + torch.get_num_threads()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(lone).result() == 22  # granted 2 and torch runs 2 on that thread

    both_inside = threading.Barrier(2, timeout=10)

    def concurrent() -> tuple[int, int]:
        with policy() as n:
            both_inside.wait()  # the two queries overlap; the second one sees 2 in flight
            seen = torch.get_num_threads()
            both_inside.wait()
            return n, seen

    with ThreadPoolExecutor(2) as pool:
        results = sorted(pool.map(lambda _: concurrent(), range(2)))
    assert results[0] == (1, 1)  # the later arrival gets one core
    assert results[1][0] in (1, 2) and results[1][0] == results[1][1]  # the first keeps what it was given
    assert policy.in_flight == 0


def test_pinned_overrides_the_policy_and_restores_it():
    policy = QueryThreads(cores=2, cap=2)
    with policy.pinned(1):
        with policy() as n:
            assert n == 1 and torch.get_num_threads() == 1
    with policy() as n:
        assert n == 2


def test_engine_queries_run_under_the_policy(tmp_path):
    from index.build import build_index, encoder_identity
    from index.engine import SearchEngine
    from tests.test_index import DIM, FakeEncoder, make_studies

    class RecordingEncoder(FakeEncoder):
        def __init__(self):
            super().__init__()
            self.threads_seen: list[tuple[int, int]] = []

        def embed_images(self, images):
            self.threads_seen.append((query_threads.in_flight, torch.get_num_threads()))
            return super().embed_images(images)

        def embed_texts(self, texts):
            self.threads_seen.append((query_threads.in_flight, torch.get_num_threads()))
            return super().embed_texts(texts)

    encoder = RecordingEncoder()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, 50, DIM)).astype(np.float32)
    build_index(tmp_path / "idx", vectors[0], vectors[1], make_studies(50), encoder_identity(encoder))
    engine = SearchEngine.load(tmp_path / "idx", encoder)
    image = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8))
    with ThreadPoolExecutor(1) as pool:  # a fresh OS thread, like a web-server worker
        pool.submit(engine.search_by_image, image, 5).result()
        pool.submit(engine.search_by_text, "left pleural effusion", 5).result()
    expected = query_threads.share(1)
    assert encoder.threads_seen == [(1, expected), (1, expected)]
    assert query_threads.in_flight == 0
    engine.store.close()
