"""A Hugging Face Space as pushed (bench/space.py): the repository's files without the Makefile, a fresh
venv from requirements.txt alone, ``SPACE_ID=test python app.py``. The app must listen on 0.0.0.0 at the
Space's port, serve its progress page first, then answer ``/search_text``.

The fresh venv holds requirements.txt alone, installed by uv from its cache of unpacked wheels (the same
requirements and package sources as pip, in seconds instead of pip's minutes of unpacking ~7 GB; ``python -m
bench.space`` times pip, as a Space runs it). Every module of the app's layers, ``train`` and ``app`` must
import in it, so a dependency missing from requirements.txt fails here even on the code paths the first start
below does not reach.

The Space's empty cache gets the demo's phantoms, frozen features (with its report sentences') and trained run
(built by ``make test``'s ``python -m pipeline``, which trains through the same ``pipeline.demo.ensure_demo``), but
not its index: the first start serves its progress page, builds the index and then the app, without rendering,
embedding and training on 3,955 studies again; ``python -m bench.space`` times the full first start.
"""
from __future__ import annotations

import shutil
import socket

import pytest

from bench import space

FIRST_START_BUDGET_S = 1500  # a timeout, not a measurement: the figures come from `python -m bench.space`
SCALE_ONLY = {"index.shards"}  # pyarrow: requirements-scale.txt (the Ray ingest's shards), not a Space's

# uv install (about a minute with a cold uv cache) + the imports + the first start
pytestmark = [pytest.mark.slow, pytest.mark.space, pytest.mark.timeout(3600)]


def _port() -> int:
    """7860 when free (what a Space uses); another free port when a developer's app holds it."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", space.SPACE_PORT))
            return space.SPACE_PORT
        except OSError:
            s.bind(("0.0.0.0", 0))
            return s.getsockname()[1]


@pytest.mark.skipif(not shutil.which("python3.11"), reason="a Space runs Python 3.11 (front matter)")
def test_space_as_pushed_starts_and_answers(demo_built):
    report = space.run(reuse="run", python=shutil.which("python3.11"), timeout=FIRST_START_BUDGET_S,
                       port=_port(), installer="uv", check_imports=True)
    assert report["makefile_present"] is False
    assert len(report["reused"]) == 3, report["reused"]
    assert report["imports"]["n_modules"] > 100 and set(report["imports"]["failed"]) <= SCALE_ONLY, report["imports"]
    assert report["first_page_s"] is not None, report["log_tail"]
    assert report["first_page_was_progress"], "the first page served must be the progress page"
    assert report["bound_to"] == ["0.0.0.0"], report["bound_to"]  # not loopback: the Space's proxy must reach it
    assert report["search_ready_s"] is not None, f"no /search_text within {FIRST_START_BUDGET_S}s:\n{report['log_tail']}"
    assert report["bound_to_when_ready"] == ["0.0.0.0"]
    assert report["search_text"]["n_hits"] == 8, report["search_text"]
    assert report["exit_code_before_stop"] is None  # still serving when stopped
    print(f"space: uv install {report.get('install_s')}s, first page {report['first_page_s']}s, "
          f"search ready {report['search_ready_s']}s, peak {report['peak_rss_mb']} MB")
