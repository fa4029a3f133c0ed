"""Where does the app's time go under load? py-spy samples the server while 16 raw-HTTP clients
run one endpoint; prints ONE JSON document: the functions holding the most samples (inclusive,
by project/gradio frame) and the top self-time frames.

    python -m bench.serving_profile [--endpoint /search_text] [--seconds 15]

Needs ``py-spy`` (requirements-dev.txt) and permission to read the server's memory (ptrace).
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from bench.common import emit, log, machine, scratch_dir, setup_environment
from bench.serving import query_files, queries, running_app
from bench.serving_load import run_level


def folded_summary(folded: str, top: int = 25) -> dict[str, Any]:
    """Inclusive and self sample counts per frame from py-spy's folded ('raw') output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    share = lambda c: [{"frame": f, "share": round(n / max(total, 1), 3)} for f, n in c.most_common(top)]  # noqa: E731
    ours = collections.Counter({f: n for f, n in inclusive.items() if f.split("(")[-1].startswith(PROJECT)})
    return {"samples": total, "inclusive": share(inclusive), "self": share(own), "project_inclusive": share(ours)}


PROJECT = ("webapp/", "index/", "model/", "data/", "pipeline/")


def _frame(raw: str) -> str:
    """'function (folder/file.py)' from py-spy's 'function (/long/path/folder/file.py:123)'."""
    name, _, where = raw.partition(" (")
    return f"{name} ({'/'.join(where.split(':')[0].rsplit('/', 2)[-2:])})" if where else raw


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", default="/search_text")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args(argv)
    setup_environment()
    spy = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
    files = query_files(scratch_dir("bench-profile-files-"))
    out = scratch_dir("bench-profile-") / "profile.txt"
    report: dict[str, Any] = {"machine": machine(), "endpoint": args.endpoint}
    with running_app(None, None) as (port, pid):
        call = queries(port, files)[args.endpoint]
        run_level(port, pid, call, 2, 2, 20)  # warm
        rec = subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r", "100",
                                "-f", "raw", "-o", str(out), "--nonblocking", "--subprocesses"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        load = threading.Thread(target=lambda: report.setdefault(
            "load", run_level(port, pid, call, args.clients, args.seconds, 100_000).summary()))
        load.start()
        load.join()
        rec.wait(timeout=args.seconds + 60)
    if not out.is_file():
        raise SystemExit(f"py-spy wrote no profile: {rec.stderr.read()[-500:] if rec.stderr else ''}")
    report["profile"] = folded_summary(out.read_text())
    log(f"profile: {report['profile']['samples']} samples")
    emit(report)
    return report


if __name__ == "__main__":
    main()
