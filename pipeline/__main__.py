"""``python -m pipeline``: build the offline default (demo data, trained head, index) ahead of time."""
from __future__ import annotations

import argparse
import logging

from pipeline.demo import ensure_demo

if __name__ == "__main__":
    argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Build whatever of the offline demo is missing (phantom films of the real IU reports, the "
                    "trained head, the index) into .cache/; a no-op when it is built. An index written by older code "
                    "is rebuilt from the cached features.").parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print("offline demo ready: run %s, index %s" % ensure_demo())
