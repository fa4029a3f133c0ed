"""A Hugging Face Space as pushed (bench/space.py): the repository's files without the Makefile, a fresh
venv from requirements.txt alone, ``SPACE_ID=test python app.py``. The app must listen on 0.0.0.0 at the
Space's port, serve its progress page first, then answer ``/search_text``.

The Space's empty cache gets the demo's phantoms and frozen features (built by ``make test``'s
``python -m pipeline``), so its first start trains the head, evaluates and indexes, as a Space does, without
rendering and embedding 3,955 studies again; ``python -m bench.space`` times the full first start.
"""
from __future__ import annotations

import shutil
import socket

import pytest

from bench import space

FIRST_START_BUDGET_S = 1500  # a timeout, not a measurement: the figures come from `python -m bench.space`

# pip install (about a minute on a quiet host, ~19 min at load average 15) + the first start
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
    report = space.run(reuse="features", python=shutil.which("python3.11"), timeout=FIRST_START_BUDGET_S,
                       port=_port())
    assert report["makefile_present"] is False
    assert len(report["reused"]) == 2, report["reused"]
    assert report["first_page_s"] is not None, report["log_tail"]
    assert report["first_page_was_progress"], "the first page served must be the progress page"
    assert report["bound_to"] == ["0.0.0.0"], report["bound_to"]  # not loopback: the Space's proxy must reach it
    assert report["search_ready_s"] is not None, f"no /search_text within {FIRST_START_BUDGET_S}s:\n{report['log_tail']}"
    assert report["bound_to_when_ready"] == ["0.0.0.0"]
    assert report["search_text"]["n_hits"] == 8, report["search_text"]
    assert report["exit_code_before_stop"] is None  # still serving when stopped
    print(f"space: install {report.get('install_s')}s, first page {report['first_page_s']}s, "
          f"search ready {report['search_ready_s']}s, peak {report['peak_rss_mb']} MB")
