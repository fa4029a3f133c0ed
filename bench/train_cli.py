"""Wall time of the default ``python train.py`` in a fresh cache (what a fresh checkout runs). Prints ONE JSON.

    python -m bench.train_cli                     # fresh cache; phantoms reused from the default cache if built
    python -m bench.train_cli --reuse-features    # also reuse the frozen features: step 2 + 3 only
    python -m bench.train_cli --fresh-phantoms    # render the 3,955 phantoms too (the true first run)

Runs train.py in a subprocess with ``CXR_CACHE`` pointing at a temporary folder, so nothing
already trained, split or evaluated is reused. The target is < 15 min on 2 cores from a fresh
checkout (phantoms + embedding + training + evaluation + embedding maps).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, emit, log, machine, setup_environment, target


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reuse-features", action="store_true", help="link the cached frozen features in")
    p.add_argument("--fresh-phantoms", action="store_true", help="do not link the rendered phantoms in")
    p.add_argument("--train-args", default="", help="extra train.py arguments (quoted)")
    args = p.parse_args(argv)
    setup_environment()
    from data.paths import cache_root

    src = cache_root()
    with tempfile.TemporaryDirectory(prefix="cxr-train-bench-") as tmp:
        cache = Path(tmp)
        reused = []
        for name, wanted in (("demo-v1-s0-256px", not args.fresh_phantoms), ("features", args.reuse_features)):
            if wanted and (src / name).is_dir():
                shutil.copytree(src / name, cache / name) if name == "features" else os.symlink(src / name, cache / name)
                reused.append(name)
        env = {**os.environ, "CXR_CACHE": str(cache)}
        cmd = [sys.executable, str(ROOT / "train.py"), "--quiet", *args.train_args.split()]
        log(f"train_cli: {' '.join(cmd)} (reused: {', '.join(reused) or 'nothing'})")
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        run = cache / "runs" / "offline-demo"
        report = json.loads((run / "eval.json").read_text())
    out = {"machine": machine(), "reused": reused, "train_py_wall_s": round(wall, 1),
           "train_py_s": target(round(wall, 1), 900, "max", " s"), "timings_s": report.get("timings_s"),
           "best_epoch": report.get("best_epoch")}
    emit(out, save_as="train_cli.json")
    return out


if __name__ == "__main__":
    main()
