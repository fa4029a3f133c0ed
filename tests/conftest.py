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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pediatric_films():
    """The 16 real pediatric films (fetched once from PyPI into the cache)."""
    from data.pediatric import fetch_pediatric_films

    return fetch_pediatric_films()


@pytest.fixture(scope="session")
def demo_built():
    """The offline default (demo data -> trained head -> index), built once like `python app.py` does."""
    from pipeline.demo import ensure_demo

    return ensure_demo()


@pytest.fixture(scope="session")
def demo_studies(demo_built):
    from data.demo import load_demo_dataset

    return load_demo_dataset()


@pytest.fixture(scope="module")
def small_demo():
    """A 40-study demo (data, run, index) for fast service/durability/privacy tests."""
    from tests.test_bad_inputs import ensure_small_demo

    return ensure_small_demo()


@pytest.fixture(scope="module")
def model(small_demo):
    """The small demo's RetrievalModel, on one torch thread like a serving worker."""
    from model.retrieval_model import RetrievalModel
    from model.threads import torch_threads

    with torch_threads(1):
        yield RetrievalModel.from_run(small_demo[1])
