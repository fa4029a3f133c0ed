"""``--runtime`` for every CLI (train.py, python -m index, app.py): one option, one meaning.

Kept free of heavy imports so a CLI can build its parser before torch loads.
"""
from __future__ import annotations

import argparse
import logging
import os

RUNTIMES = ("torch", "openvino", "onnxruntime")
RUNTIME_CHOICES = ("auto", *RUNTIMES)
RUNTIME_ENV = "CXR_RUNTIME"  # the option's default, e.g. CXR_RUNTIME=torch to keep eager torch

log = logging.getLogger(__name__)


def add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    """``--runtime auto|torch|openvino|onnxruntime`` (default ``$CXR_RUNTIME``, else auto)."""
    default = os.environ.get(RUNTIME_ENV, "").strip().lower() or "auto"
    parser.add_argument(
        "--runtime", choices=RUNTIME_CHOICES, default=default,
        help="inference runtime of the frozen towers (auto: the fastest installed; same features as torch; "
             f"default ${RUNTIME_ENV} or auto)",
    )


def apply_runtime_argument(args: argparse.Namespace) -> str:
    """Make ``args.runtime`` the process default: every backbone created afterwards runs in it."""
    from model.runtime import set_default_runtime

    runtime = set_default_runtime(getattr(args, "runtime", None) or "torch")
    log.info("inference runtime: %s", runtime)
    return runtime
