"""``--runtime`` for every CLI (train.py, python -m index, app.py): one option, one meaning,
and the process-wide default runtime it sets (read by ``model.factory.create_backbone``).

Kept free of heavy imports so a CLI can build its parser before torch loads; ``runtime.inference``
(export and compile, with torch) builds on this module, never the other way round.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os

RUNTIMES = ("torch", "openvino", "onnxruntime")
RUNTIME_CHOICES = ("auto", *RUNTIMES)
RUNTIME_ENV = "CXR_RUNTIME"  # the option's default, e.g. CXR_RUNTIME=torch to keep eager torch
AUTO_ORDER = ("openvino", "onnxruntime")  # fastest first, by measurement (runtime.inference's docstring)
RUNTIME_MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}  # runtime -> Python package

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
    runtime = set_default_runtime(getattr(args, "runtime", None) or "torch")
    log.info("inference runtime: %s", runtime)
    return runtime


_default_runtime = "torch"


def set_default_runtime(name: str) -> str:
    """The runtime :func:`model.factory.create_backbone` uses when not told (process-wide);
    ``auto`` is resolved now. Returns the resolved name."""
    global _default_runtime
    _default_runtime = resolve_runtime(name)
    return _default_runtime


def default_runtime() -> str:
    """The runtime backbones get unless told (``torch`` until :func:`set_default_runtime`)."""
    return _default_runtime


def runtime_installed(name: str) -> bool:
    """True when the runtime's Python package imports."""
    if name == "torch":
        return True
    try:
        importlib.import_module(RUNTIME_MODULES[name])
    except Exception:  # ImportError, or a broken install raising anything at import
        return False
    return True


def resolve_runtime(name: str | None) -> str:
    """``auto`` -> the fastest installed runtime; a named one is returned as is (a missing one
    falls back to torch when the towers are compiled, with a log line)."""
    name = (name or "torch").strip().lower()
    if name not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    if name != "auto":
        return name
    return next((r for r in AUTO_ORDER if runtime_installed(r)), "torch")
