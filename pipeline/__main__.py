"""``python -m pipeline``: build the offline default (demo data, trained head, index) ahead of time."""
from __future__ import annotations

import logging

from pipeline.demo import ensure_demo

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print("offline demo ready: run %s, index %s" % ensure_demo())
