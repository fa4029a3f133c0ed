"""The benches' /proc readings of a server and its children (bench.serving_load): what the serving
and Space benches report as memory and CPU of the app with its search workers."""
from __future__ import annotations

import subprocess
import sys
import time

from bench.serving_load import child_pids, rss_mb, tree_rss_mb

PARENT = """
import subprocess, sys, time
held = bytearray(150 * 2**20)
child = subprocess.Popen([sys.executable, "-c", "import time; held = bytearray(120 * 2**20); print('up', flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(60)
"""


def test_tree_memory_counts_the_children_and_survives_their_exit():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        assert child_pids(proc.pid) == [child]
        own, total = rss_mb(proc.pid), tree_rss_mb(proc.pid)
        assert own >= 150 and total >= own + 120 - 5  # the child's 120 MB are counted (bytearray pages touched)
        subprocess.run(["kill", "-9", str(child)], check=True)
        deadline = time.monotonic() + 30
        while tree_rss_mb(proc.pid) > own + 60 and time.monotonic() < deadline:  # a zombie child counts 0
            time.sleep(0.1)
        assert tree_rss_mb(proc.pid) < own + 60
    finally:
        proc.kill()
        proc.wait()
