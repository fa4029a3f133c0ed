"""Test-wide settings: no network, no analytics, one shared cache per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Set before anything imports huggingface_hub or gradio: offline lookups fail in
# milliseconds instead of ~30 s of retries, and gradio sends nothing out.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CLIs (app, train, index) default to --runtime auto; the suite tests runtimes in
# tests/test_runtime.py and runs everything else on torch, without per-test exports.
os.environ.setdefault("CXR_RUNTIME", "torch")
# The app's default is one text-search worker process on 2+ cores, which loads a second copy of the run and
# index. The apps the suite starts to query (session apps, bundle, security) search in the web process;
# tests/test_privacy.py starts its app with `--search-workers 1` (the worker's app test runs on it), bench.serving
# and bench.space start the app's own default, and the default itself is checked in test_search_workers.py.
os.environ.setdefault("CXR_SEARCH_WORKERS", "0")
# `make test`'s xdist workers are one per core: a worker's torch/BLAS pools of one thread each (as the Ray
# workers get) instead of a pool per core in every worker, whose threads wait on one another on a busy
# host. Set before torch or numpy is imported; code that sets its own thread counts still does.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402

from tests.xdist_plan import (  # noqa: E402,F401
    one_builder, pytest_runtest_logreport, pytest_terminal_summary, pytest_xdist_make_scheduler)


@pytest.fixture(scope="session")
def pediatric_films():
    """The 16 real pediatric films (fetched once from PyPI into the cache)."""
    from data.pediatric import fetch_pediatric_films

    with one_builder("pediatric"):
        return fetch_pediatric_films()


@pytest.fixture(scope="session")
def demo_built():
    """The offline default (demo data -> trained head -> index), built once like `python app.py` does."""
    from pipeline.demo import ensure_demo

    with one_builder("demo"):
        return ensure_demo()


@pytest.fixture(scope="session")
def demo_studies(demo_built):
    from data.demo import load_demo_dataset

    return load_demo_dataset()


@pytest.fixture(scope="session")
def small_demo():
    """A 40-study demo (data, run, index) for fast service/durability/privacy tests (built once per session)."""
    from tests.test_bad_inputs import ensure_small_demo

    return ensure_small_demo()  # under its file lock


@pytest.fixture(scope="session")
def small_demo_model(small_demo):
    """The small demo's RetrievalModel, loaded once per session (frozen towers + head; tests only query it)."""
    from model.retrieval_model import RetrievalModel

    return RetrievalModel.from_run(small_demo[1])


@pytest.fixture(scope="module")
def model(small_demo_model):
    """The small demo's RetrievalModel, on one torch thread like a serving worker (for this module's tests)."""
    from runtime.threads import torch_threads

    with torch_threads(1):
        yield small_demo_model


@pytest.fixture(scope="session")
def demo_app_url(demo_built):
    """One app on the full offline demo for every test that only queries it (e2e API and the browser path)."""
    from tests.app_server import running_app

    with running_app() as (url, _proc, seconds):
        print(f"\napp warm start to first page: {seconds:.1f}s")
        yield url


