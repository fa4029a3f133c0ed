"""The test suite's wall time (issue 28): one pytest run, its counts, its slowest tests and the load it ran at,
added to ``bench/results/suite_time.json`` under a label. Prints the run's JSON.

    python -m bench.suite_time --label after          # runs the whole suite (pytest --durations=60), 20-35 min here
    python -m bench.suite_time --label before --from-log pytest.txt --load-log load.txt --commit 796023e
    python -m bench.suite_time --label after -- -n 2 --dist loadscope   # as `make test` runs it (two workers)

``--from-log`` reads a run made by hand (``pytest -q --durations=60 -p no:cacheprovider > pytest.txt``) and
``--load-log`` the load averages sampled during it (lines ``HH:MM:SS 1min 5min 15min``). Timings on a shared
2-core host are upper bounds: the JSON keeps the load samples, and ``bench.report`` marks runs above load 2.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, emit, machine

RESULT = ROOT / "bench" / "results" / "suite_time.json"
PYTEST = ["-m", "pytest", "-q", "--durations=60", "-p", "no:cacheprovider"]
_SUMMARY = re.compile(r"^=*\s*(?P<counts>\d+ \w+.*) in (?P<seconds>[\d.]+)s")
_DURATION = re.compile(r"^(?P<seconds>[\d.]+)s (?P<phase>call|setup|teardown)\s+(?P<test>\S+)")
_WORKER = re.compile(r"(?P<worker>gw\d+) busy (?P<busy>[\d.]+) s, last test ended at (?P<ended>[\d.]+) s")
_IDLE_TAIL = re.compile(r"idle tail (?P<seconds>[\d.]+) s")


def parse_log(text: str, top: int = 8) -> dict[str, Any]:
    """Counts (passed, failed, ...), pytest's own wall time, the ``top`` slowest phases of a -q log and, from
    two xdist workers' summary line (tests/xdist_plan.py), each worker's busy seconds, its end and the idle tail."""
    out: dict[str, Any] = {"pytest_wall_s": None, "counts": {}, "slowest": []}
    for line in text.splitlines():
        if line.startswith("xdist workers: ") and (tail := _IDLE_TAIL.search(line)):
            out["workers"] = {m["worker"]: {"busy_s": float(m["busy"]), "last_test_ended_s": float(m["ended"])}
                              for m in _WORKER.finditer(line)}
            out["idle_tail_s"] = float(tail["seconds"])
        elif m := _DURATION.match(line):
            if len(out["slowest"]) < top:
                out["slowest"].append({"test": m["test"], "phase": m["phase"], "seconds": float(m["seconds"])})
        elif m := _SUMMARY.match(line.strip()):
            out["pytest_wall_s"] = float(m["seconds"])
            out["counts"] = {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", m["counts"])}
    return out


def parse_load_log(text: str) -> list[list[Any]]:
    """``HH:MM:SS 1min 5min 15min`` lines -> [[time, 1min, 5min, 15min], ...]."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            rows.append([parts[0], *(float(x) for x in parts[1:4])])
    return rows


def run_suite(pytest_args: list[str]) -> tuple[str, list[list[Any]]]:
    """The suite as a subprocess, the load average sampled every 30 s meanwhile."""
    samples: list[list[Any]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append([time.strftime("%H:%M:%S"), *(round(x, 2) for x in os.getloadavg())])
            done.wait(30)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc = subprocess.run([sys.executable, *PYTEST, *pytest_args], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    done.set()
    thread.join()
    return proc.stdout + proc.stderr, samples


def record(label: str, log_text: str, load: list[list[Any]], commit: str, note: str,
           result: Path = RESULT, command: str = " ".join(["python", *PYTEST])) -> dict[str, Any]:
    run = {"commit": commit, "command": command, **parse_log(log_text),
           "load_1min_during": [min(r[1] for r in load), max(r[1] for r in load)] if load else None,
           "load_samples": load, "note": note}
    doc = json.loads(result.read_text()) if result.is_file() else {"runs": {}}
    doc["runs"][label] = run
    # the report quotes the highest load any run of the file saw (bench.report_core.run_load)
    highest = max((max(r[1:3]) for one in doc["runs"].values() for r in one.get("load_samples") or []), default=None)
    doc["machine"] = {**machine(), "load_average": [highest] if highest is not None else machine()["load_average"]}
    result.write_text(json.dumps(doc, indent=1) + "\n")
    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", required=True, help="the run's name in the JSON (e.g. before, after)")
    p.add_argument("--from-log", type=Path, help="a pytest -q --durations log of a run made by hand")
    p.add_argument("--load-log", type=Path, help="load samples taken during that run (HH:MM:SS 1min 5min 15min)")
    p.add_argument("--commit", help="the commit the run tested (default: HEAD)")
    p.add_argument("--note", default="", help="what else the reader should know about the run")
    p.add_argument("--command", help="the pytest command line of a --from-log run (default: this script's)")
    p.add_argument("--out", type=Path, default=RESULT, help="the JSON the run is added to")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (a new run only)")
    args = p.parse_args(argv)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True, check=False).stdout.strip()
    if args.from_log:
        text = args.from_log.read_text()
        load = parse_load_log(args.load_log.read_text()) if args.load_log else []
    else:
        text, load = run_suite(args.pytest_args)
    command = args.command or " ".join(["python", *PYTEST, *args.pytest_args])
    report = {"suite_time": record(args.label, text, load, commit, args.note, args.out, command)}
    emit(report)
    return report


if __name__ == "__main__":
    main()
