"""How `make test` splits the suite over two pytest-xdist workers (``-n 2 --dist loadscope``).

A work unit is a test module (its module fixtures, a loaded model or a running app, are set up once),
except: modules that share a session app go to one worker together (one app start, not two), and the
modules listed in ``ONE_TEST_A_UNIT`` hand out each test alone (independent commands of minutes each).
Units start longest first (``LONGEST_FIRST``, from ``--durations`` of a whole run: the slowest test files
and tests of bench/results/suite_time.json), so the two workers finish close together instead of one
running a long test alone at the end. Session fixtures that build a cache take a file lock
(``one_builder``): one worker builds, the other waits and finds it built. The run's summary ends with each
worker's busy seconds and when its last test ended (``WorkerClock``): an idle worker at the end is time lost.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

# Modules whose tests share one session app (conftest's demo_app_url): one unit.
SAME_UNIT = {"tests/test_browser.py": "tests/test_app_e2e.py", "tests/test_hybrid_app.py": "tests/test_app_e2e.py",
             "tests/test_load.py": "tests/test_app_e2e.py", "tests/test_browser_compose.py": "tests/test_app_e2e.py"}
ONE_TEST_A_UNIT = ("tests/test_documented_commands.py",)
# The first two units start together: the Space and the search-worker tests need only the full demo (built by
# `make test`'s `python -m pipeline` before pytest), so the other worker is not left waiting on the small demo's
# build lock while the Ray module builds it (~20-30 s in a fresh clone).
LONGEST_FIRST = (
    "tests/test_ray_ingest.py",
    "tests/test_space.py",
    "tests/test_search_workers.py",
    "tests/test_privacy.py",
    "tests/test_quantize.py",
    "tests/test_documented_commands.py::test_training_bench_commands_at_tiny_size",
    "tests/test_serving_security.py",
    "tests/test_documented_commands.py::test_bench_entry_point_runs_a_part_as_a_subprocess",
    "tests/test_runtime.py",
    "tests/test_pipeline.py",
    "tests/test_documented_commands.py::test_train_index_bundle_commands",
    "tests/test_documented_commands.py::test_bench_part_at_quick_size",
    "tests/test_familiarity.py",
    "tests/test_app_e2e.py",
)


@contextmanager
def one_builder(name: str) -> Iterator[None]:
    """Hold ``<cache>/tests/NAME.lock`` while building a cached artefact two workers may both ask for."""
    from filelock import FileLock

    from data.paths import cache_root

    lock = cache_root() / "tests" / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        yield


def unit_of(nodeid: str) -> str:
    """The work unit of a test: its module, its module's partner, or (ONE_TEST_A_UNIT) the test itself."""
    module = nodeid.split("::", 1)[0]
    if module in ONE_TEST_A_UNIT:
        return nodeid
    return SAME_UNIT.get(module, module)


def rank(unit: str) -> int:
    """Position in LONGEST_FIRST (a prefix match, parametrised tests included); the rest after, in order."""
    return next((i for i, prefix in enumerate(LONGEST_FIRST) if unit.startswith(prefix)), len(LONGEST_FIRST))


def longest_first(queue: dict[str, Any]) -> OrderedDict[str, Any]:
    """The work queue (unit -> its tests) in LONGEST_FIRST order; the other units keep their order (stable)."""
    return OrderedDict(sorted(queue.items(), key=lambda unit: rank(unit[0])))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadscope``: the units above, longest first (other --dist modes are left as they are)."""
    if config.getoption("dist", "no") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirst(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the queue is full the first time: sort it once
                self.workqueue = longest_first(self.workqueue)
                self.ordered = True
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


class WorkerClock:
    """Per xdist worker: seconds spent in its tests (setup + call + teardown) and when its last test ended,
    counted from the session's start in the controller. The gap between the workers' ends is the idle tail."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def add(self, worker: str, seconds: float, now: float | None = None) -> None:
        self.busy[worker] = self.busy.get(worker, 0.0) + seconds
        self.ended[worker] = (time.monotonic() if now is None else now) - self.started

    def summary(self) -> str:
        """``gw0 busy 500 s, last test ended at 530 s; gw1 ...; idle tail 25 s`` ('' without xdist workers)."""
        if len(self.ended) < 2:
            return ""
        parts = [f"{w} busy {self.busy[w]:.0f} s, last test ended at {self.ended[w]:.0f} s" for w in sorted(self.ended)]
        return "; ".join(parts) + f"; idle tail {max(self.ended.values()) - min(self.ended.values()):.0f} s"


CLOCK = WorkerClock()


def pytest_runtest_logreport(report) -> None:
    """In the controller, each worker's reports arrive with ``report.node`` (its gateway id names it)."""
    node = getattr(report, "node", None)
    if node is not None:
        CLOCK.add(node.gateway.id, report.duration)


def pytest_terminal_summary(terminalreporter) -> None:
    if line := CLOCK.summary():
        terminalreporter.write_line(f"xdist workers: {line}")
