"""The suite-time record (``python -m bench.suite_time``) and pip's sources as uv flags (``python -m
bench.pip_sources``, what ``make setup`` and the Space test hand to uv)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.pip_sources import uv_source_args
from bench.suite_time import main, parse_log

ROOT = Path(__file__).resolve().parent.parent

LOG = """\
........................................................................ [ 50%]
.....F.............................................................s.... [100%]
============================= slowest 60 durations =============================
566.02s call     tests/test_documented_commands.py::test_bench_commands_at_tiny_size
359.50s call     tests/test_space.py::test_space_as_pushed_starts_and_answers
24.08s setup    tests/test_milvus_store.py::test_recall_at_10_against_exact
5.23s teardown tests/test_privacy.py::test_no_unpickling_anywhere_in_the_source_tree
=========================== short test summary info ============================
FAILED tests/test_x.py::test_y - AssertionError
1 failed, 142 passed, 1 skipped, 6 warnings in 2028.37s (0:33:48)
"""


def test_a_pytest_log_gives_its_counts_wall_time_and_slowest_phases():
    parsed = parse_log(LOG, top=3)
    assert parsed["pytest_wall_s"] == 2028.37
    assert parsed["counts"] == {"failed": 1, "passed": 142, "skipped": 1, "warnings": 6}
    assert [(t["phase"], t["seconds"]) for t in parsed["slowest"]] == [("call", 566.02), ("call", 359.5),
                                                                         ("setup", 24.08)]
    assert parsed["slowest"][1]["test"] == "tests/test_space.py::test_space_as_pushed_starts_and_answers"
    assert "workers" not in parsed  # a one-process run has no workers' line


def test_a_two_worker_log_gives_each_workers_busy_time_and_the_idle_tail():
    line = "xdist workers: gw0 busy 512 s, last test ended at 530 s; gw1 busy 470 s, last test ended at 505 s; idle tail 25 s"
    parsed = parse_log(LOG.replace("1 failed, 142 passed", line + "\n1 failed, 142 passed"))
    assert parsed["workers"] == {"gw0": {"busy_s": 512.0, "last_test_ended_s": 530.0},
                                 "gw1": {"busy_s": 470.0, "last_test_ended_s": 505.0}}
    assert parsed["idle_tail_s"] == 25.0 and parsed["pytest_wall_s"] == 2028.37


def test_the_command_adds_a_labelled_run_and_keeps_the_others(tmp_path, capsys):
    (tmp_path / "pytest.txt").write_text(LOG)
    (tmp_path / "load.txt").write_text("02:04:25 0.10 0.10 0.58\n02:09:21 6.14 3.72 2.00\n")
    out = tmp_path / "suite_time.json"
    out.write_text(json.dumps({"runs": {"earlier": {"load_samples": [["01:00:00", 11.5, 3.0, 1.0]]}}}))
    main(["--label", "before", "--from-log", str(tmp_path / "pytest.txt"), "--load-log", str(tmp_path / "load.txt"),
          "--commit", "abc1234", "--out", str(out), "--command", "python -m pytest -n 2 --dist loadscope"])
    printed = json.loads(capsys.readouterr().out)["suite_time"]
    doc = json.loads(out.read_text())
    assert set(doc["runs"]) == {"earlier", "before"} and doc["runs"]["before"] == printed
    assert printed["commit"] == "abc1234" and printed["load_1min_during"] == [0.1, 6.14]
    assert printed["command"] == "python -m pytest -n 2 --dist loadscope"  # the run's own command line
    assert doc["machine"]["load_average"] == [11.5]  # the highest any run saw: what bench.report quotes


def test_pip_sources_turn_pips_configuration_into_uv_flags(tmp_path):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nfind-links = /srv/wheels\nextra-index-url = file:///a/simple file:///b/simple\n"
                      "timeout = 60\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(config), "PIP_CONSTRAINT": str(tmp_path / "c.txt")}
    env.pop("PIP_FIND_LINKS", None)
    printed = subprocess.run([sys.executable, "-m", "bench.pip_sources"], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout.split()
    pairs = list(zip(printed[::2], printed[1::2]))
    assert pairs[0] == ("--index-strategy", "unsafe-best-match")  # pip takes the best version from every index
    assert set(pairs[1:]) == {("--find-links", "/srv/wheels"), ("--extra-index-url", "file:///a/simple"),
                              ("--extra-index-url", "file:///b/simple"), ("--constraint", str(tmp_path / "c.txt"))}
    assert "60" not in printed  # settings that do not choose files are not passed
    assert uv_source_args()[:2] == ["--index-strategy", "unsafe-best-match"]  # in-process, this machine's config


def test_the_two_workers_get_whole_modules_in_units_longest_first():
    """tests/xdist_plan.py: a module is one unit (its module fixtures once), modules sharing a session app are
    one unit, the documented commands are one unit each; the listed units lead, the others keep their order."""
    from tests.xdist_plan import LONGEST_FIRST, longest_first, unit_of

    assert unit_of("tests/test_index.py::test_cli_build_and_add") == "tests/test_index.py"
    assert unit_of("tests/test_browser.py::test_x") == unit_of("tests/test_app_e2e.py::test_y") == "tests/test_app_e2e.py"
    assert unit_of("tests/test_hybrid_app.py::test_z") == "tests/test_app_e2e.py"  # it queries the same session app
    part = "tests/test_documented_commands.py::test_bench_part_at_quick_size[embed]"
    assert unit_of(part) == part
    queue = {"tests/test_index.py": 1, part: 2, "tests/test_split.py": 3, "tests/test_space.py": 4}
    assert list(longest_first(queue)) == ["tests/test_space.py", part, "tests/test_index.py", "tests/test_split.py"]
    for entry in LONGEST_FIRST:  # every entry names a test module (and test) that exists: a rename shows here
        module, _, test = entry.partition("::")
        test = test.split("[", 1)[0]  # a parametrised case: its function
        assert (ROOT / module).is_file() and (not test or f"def {test}(" in (ROOT / module).read_text()), entry
    # the second and third units start beside the first (which builds the small demo): neither waits on that build
    assert all("small_demo" not in (ROOT / unit).read_text() for unit in LONGEST_FIRST[1:3])
    assert "small_demo" in (ROOT / LONGEST_FIRST[0]).read_text()


def test_the_run_summary_gives_each_workers_busy_time_and_the_idle_tail():
    """tests/xdist_plan.py's clock: the controller's reports of gw0 and gw1 add up per worker; the summary line
    (printed at the end of `make test`) names when each worker's last test ended and the gap between them."""
    import types

    import tests.xdist_plan as plan

    clock = plan.WorkerClock()
    start = clock.started
    for worker, seconds, at in (("gw0", 10.0, 11), ("gw1", 4.0, 5), ("gw0", 2.5, 14), ("gw1", 30.0, 40)):
        clock.add(worker, seconds, now=start + at)
    assert clock.busy == {"gw0": 12.5, "gw1": 34.0}
    assert clock.summary() == ("gw0 busy 12 s, last test ended at 14 s; gw1 busy 34 s, last test ended at 40 s; "
                               "idle tail 26 s")
    one = plan.WorkerClock()
    one.add("gw0", 1.0)
    assert one.summary() == ""  # one worker (or none: -p no:xdist): no line
    report = types.SimpleNamespace(duration=3.0, node=types.SimpleNamespace(gateway=types.SimpleNamespace(id="gw7")))
    saved, plan.CLOCK = plan.CLOCK, plan.WorkerClock()
    try:
        plan.pytest_runtest_logreport(report)
        plan.pytest_runtest_logreport(types.SimpleNamespace(duration=5.0))  # a worker's own report: no node
        assert plan.CLOCK.busy == {"gw7": 3.0}
    finally:
        plan.CLOCK = saved
