"""A trained head on disk: ``head.safetensors`` + ``config.json`` in one run folder.

Weights are safetensors (no pickle: a run folder from elsewhere cannot execute code).
``config.json`` records which backbone produced the features the head was trained on and
the SHA-256 of the weights file; it is written LAST, so a folder with a config is complete,
and loading refuses a head meant for another backbone or a file that changed since.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from data.errors import CheckpointError  # noqa: F401 (defined in data.errors, re-exported)
from data.atomic_io import atomic_write_bytes, atomic_write_json
from model.head import RetrievalHead

HEAD_FILE = "head.safetensors"
PENDING_SUFFIX = ".pending"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def _sha256_bytes(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def head_checksum(run_dir: Path | str) -> str:
    """SHA-256 (hex) of the run's ``head.safetensors``."""
    path = Path(run_dir) / HEAD_FILE
    if not path.is_file():
        raise CheckpointError(f"no {HEAD_FILE} in {run_dir}")
    return _sha256_bytes(path.read_bytes())


def save_checkpoint(run_dir: Path | str, head: RetrievalHead, config: dict[str, Any], backbone: Any = None) -> None:
    """Write the head weights (atomically) then ``config.json`` (atomically, last).

    ``config`` must name the backbone (``backbone_id`` and ``backbone_name``) unless
    ``backbone`` is given, whose ids then fill (and must agree with) those keys.
    """
    run_dir = Path(run_dir)
    info = dict(config)
    if backbone is not None:
        for key, value in (("backbone_id", backbone.backbone_id), ("backbone_name", backbone.name)):
            if info.get(key, value) != value:
                raise ValueError(f"config {key}={info[key]!r} disagrees with the backbone's {value!r}")
            info[key] = value
    missing = [k for k in ("backbone_id", "backbone_name") if not info.get(k)]
    if missing:
        raise ValueError(f"config lacks {missing}: a head is only meaningful with the backbone it was trained on")

    state = {k: v.detach().to("cpu").contiguous() for k, v in head.state_dict().items()}
    payload = save_safetensors_bytes(state, metadata={"format_version": str(FORMAT_VERSION)})
    # Commit protocol: new weights go to a pending file, config.json (naming their sha256) is
    # the single commit point, then the pending file is renamed over head.safetensors. A kill
    # before the config rename leaves the previous run intact; a kill after it is completed by
    # the next load (see _recover_pending_head).
    pending = run_dir / (HEAD_FILE + PENDING_SUFFIX)
    atomic_write_bytes(pending, payload)
    info.update({
        "head": dict(head.config),
        "head_sha256": _sha256_bytes(payload),
        "format_version": FORMAT_VERSION,
    })
    atomic_write_json(run_dir / CONFIG_FILE, info)
    os.replace(pending, run_dir / HEAD_FILE)


def _recover_pending_head(run_dir: Path, expected_sha256: str) -> bytes | None:
    """The weights of a save killed after its commit point, moved into place; else None."""
    pending = run_dir / (HEAD_FILE + PENDING_SUFFIX)
    if not pending.is_file():
        return None
    payload = pending.read_bytes()
    if _sha256_bytes(payload) != expected_sha256:
        return None
    try:
        os.replace(pending, run_dir / HEAD_FILE)
    except OSError:  # read-only run folder: use the pending weights as they are
        pass
    return payload


def run_option(config: dict[str, Any], name: str, default: Any = None) -> Any:
    """An option the run was trained with. A run's ``config.json`` keeps each option once, under
    ``args`` (``pipeline.steps.run_config``); runs written before kept some at the top level (and the
    optimiser's under ``optim``) too, and still load through here."""
    for where in (config.get("args") or {}, config.get("optim") or {}, config):
        if name in where:
            return where[name]
    return default


def read_checkpoint_config(run_dir: Path | str) -> dict[str, Any]:
    """The run's ``config.json`` (checked for the keys a loader needs)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        what = "does not exist" if not run_dir.exists() else f"has no {CONFIG_FILE} (training not finished?)"
        raise CheckpointError(f"checkpoint folder {run_dir} {what}")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this code reads version {FORMAT_VERSION}")
    missing = [k for k in ("backbone_id", "backbone_name", "head", "head_sha256") if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    return config


def load_checkpoint(run_dir: Path | str, expected_backbone_id: str | None = None) -> tuple[RetrievalHead, dict[str, Any]]:
    """Rebuild the head saved in ``run_dir`` (in eval mode) and return it with its config.

    Raises :class:`CheckpointError` when the folder or a file is missing, the weights are
    corrupt/truncated or differ from the recorded checksum, or (with
    ``expected_backbone_id``) the head was trained on another backbone's features.
    """
    run_dir = Path(run_dir)
    config = read_checkpoint_config(run_dir)
    if expected_backbone_id is not None and config["backbone_id"] != expected_backbone_id:
        raise CheckpointError(
            f"checkpoint {run_dir} was trained on backbone '{config['backbone_id']}' but the loaded "
            f"backbone is '{expected_backbone_id}'; load the matching backbone (--backbone "
            f"{config['backbone_name']}) or retrain"
        )
    path = run_dir / HEAD_FILE
    payload = path.read_bytes() if path.is_file() else None
    if payload is None or _sha256_bytes(payload) != config["head_sha256"]:
        payload = _recover_pending_head(run_dir, str(config["head_sha256"])) or payload
    if payload is None:
        raise CheckpointError(f"checkpoint folder {run_dir} has {CONFIG_FILE} but no {HEAD_FILE}")
    try:
        state = load_safetensors_bytes(payload)
    except Exception as exc:  # safetensors raises its own error types for bad headers/lengths
        raise CheckpointError(f"{HEAD_FILE} is corrupt or truncated: {exc} ({path})") from exc
    digest = _sha256_bytes(payload)
    if digest != config["head_sha256"]:
        raise CheckpointError(
            f"{HEAD_FILE} is corrupt or truncated: its sha256 {digest[:16]}... differs from "
            f"head_sha256 {str(config['head_sha256'])[:16]}... recorded in {CONFIG_FILE} ({path})"
        )
    try:
        head = RetrievalHead(**config["head"])
        head.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match the head described in {CONFIG_FILE}: {exc}") from exc
    head.eval()
    return head, config

