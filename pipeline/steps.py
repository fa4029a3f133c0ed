"""The build pipeline, step by step: data -> features -> head -> evaluation -> index -> maps.

One place that knows the order of the work and what each step hands to the next. It is used by
``python train.py`` (every step; the index with ``--index DIR``), ``python -m index build`` (the
index step for a run that exists) and the app's first start (``pipeline.demo``). Each step reads
the frozen features through one on-disk cache (``model.features.cached_frozen_features``), so a
collection is embedded once, whichever of the three comes first.

The work of each step lives where its job is: loaders in ``data``, the training loop in
``model.training``, the metrics in ``pipeline.run_report``, the one index builder in ``index.build``,
the t-SNE/UMAP export in ``model.embedding_map``. This module only wires them together.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from data.atomic_io import atomic_write_bytes, atomic_write_json
from data.dataset import studies_fingerprint
from data.findings_text import PARSER_VERSION
from data.paths import cache_root
from data.records import Study
from data.sources import DataSource, load_source
from data.split import load_or_create_split, split_hash, split_level
from model.checkpoint import run_option, save_checkpoint
from model.embedding_map import build_embedding_maps
from evaluation.tables import format_phrase_table, format_table
from pipeline.run_report import calibrate_head, evaluate_models, project
from model.factory import create_backbone
from model.features import cached_frozen_features
from model.findings_training import study_codes
from model.knowledge import text_inputs
from evaluation.phrase_benchmark import PHRASES, Phrase, phrase_texts
from evaluation.phrase_other_wording import OTHER_PHRASES
from runtime.option import apply_runtime_argument
from model.training import TrainedHead, train_head
from pipeline.options import PATH_ARGS
from pipeline.curves import plot_curves

log = logging.getLogger("train")

MAPS_FILE = "embedding_map.json"


# ---------------------------------------------------------------------------------------- 1. data
@dataclass
class Collection:
    """Step 1: the studies, their split, and the row-aligned arrays every later step reads."""

    source: DataSource
    split: dict[str, list[str]]  # study ids per part ("train", "val", "test")
    rows: dict[str, np.ndarray]  # the same parts as row numbers into ``studies``
    labels: np.ndarray  # 0 normal / 1 abnormal per study
    codes: np.ndarray  # finding x side profile codes (model.findings_training.study_codes)
    level: str  # "patient" when the data gives patient ids, else "study" (data.split.split_level)

    @property
    def studies(self) -> list[Study]:
        return self.source.studies


def load_collection(args: argparse.Namespace, seed: int = 0) -> Collection:
    """The studies named by the data options, with their (cached, shared) held-out split."""
    source = load_source(args)
    studies = source.studies
    split = load_or_create_split(source.split_path(seed), studies, seed=seed)
    index_of = {s.study_id: i for i, s in enumerate(studies)}
    rows = {part: np.array([index_of[i] for i in ids], dtype=np.int64) for part, ids in split.items()}
    labels = np.array([s.label for s in studies], dtype=np.int64)
    codes, _ = study_codes(studies)
    return Collection(source, split, rows, labels, codes, split_level(studies))


def data_root_for(args: argparse.Namespace, studies: Sequence[Study]) -> Path | None:
    """Folder that an index stores image paths relative to: the dataset folder (``--data``), the
    manifest's folder, the demo's folder, else the images' common parent."""
    if getattr(args, "data", None):
        return Path(args.data)
    if getattr(args, "manifest", None):
        return Path(args.manifest).parent
    if not any(getattr(args, a, None) for a in ("iu_reports", "mimic")):
        from data.demo import demo_dir

        return demo_dir(int(getattr(args, "demo_seed", 0) or 0))
    dirs = [os.path.dirname(os.path.abspath(s.image_path)) for s in studies if s.image_path]
    return Path(os.path.commonpath(dirs)) if dirs else None


def run_collection(run_dir: Path | str) -> tuple[list[Study], Path]:
    """The studies a demo run was trained on, rebuilt from the options its config.json recorded
    (demo seed and limit), and their folder. Other data is not named by a run folder (paths are
    left out of it): give it to ``python -m index build --data/--manifest/...``."""
    from data.demo import demo_dir, load_demo_dataset

    config = json.loads((Path(run_dir) / "config.json").read_text())
    if not str(config.get("data", "")).startswith("demo"):
        raise ValueError(f"run {run_dir} was trained on {config.get('data')!r}; build its index with "
                         "`python -m index build --run RUN --out DIR` and that run's data options")
    seed, limit = int(run_option(config, "demo_seed") or 0), run_option(config, "demo_limit")
    return load_demo_dataset(seed=seed, limit=limit), demo_dir(seed)


# ------------------------------------------------------------------------------------ 2. features
def frozen_features(backbone: Any, studies: Sequence[Study], shards: str | None = None, batch_size: int = 32,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: (image, report) features of the frozen backbone, row-aligned with ``studies``.

    From the shared on-disk cache (resumable), or from the Parquet shards of ``python -m index
    embed`` (Ray Data ingest) when ``shards`` names them."""
    if shards:
        from index.shards import features_for

        return features_for(shards, backbone, studies)
    return cached_frozen_features(backbone, studies, batch_size=batch_size, progress=progress)


# ---------------------------------------------------------------------------------- 4. evaluation
def evaluate(backbone: Any, trained: TrainedHead, Xi: torch.Tensor, Xt: torch.Tensor, data: Collection,
             n_bootstrap: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 4: eval.json's report on the held-out test split (frozen baselines vs the head, chance
    and ceiling, the findings-phrase benchmark, calibration), and the calibration for config.json."""
    phrase_feats = backbone.encode_texts(phrase_texts()).numpy().astype(np.float32)
    other_feats = backbone.encode_texts([p.text for p in OTHER_PHRASES]).numpy().astype(np.float32)
    report = evaluate_models(backbone, trained.head, Xi, Xt, data.labels, data.rows, data.codes,
                             [s.structured_findings for s in data.studies], n_bootstrap, phrase_feats=phrase_feats,
                             other_phrase_feats=other_feats, report_texts=[s.report_text for s in data.studies])
    report["phrase_benchmark"].update(hybrid_phrase_rows(trained, Xi, phrase_feats, data))
    report["phrase_benchmark_other_wording"].update(hybrid_phrase_rows(trained, Xi, other_feats, data, OTHER_PHRASES))
    calibration, report["calibration"] = calibrate_head(trained.head, Xi, data.labels, data.rows)
    report.update({"n_test": int(len(data.rows["test"])), "split_hash": split_hash(data.split),
                   "split_level": data.level, "data": data.source.name, "best_epoch": trained.best_epoch})
    return report, calibration


def training_text_inputs(args: argparse.Namespace, backbone: Any, studies: Sequence[Study], train_rows: np.ndarray,
                         text_feats: np.ndarray) -> tuple[torch.Tensor, tuple[torch.Tensor, np.ndarray] | None, Any]:
    """The head's text inputs for training: the reports' (row-aligned with ``studies``), the side-swapped
    reports' with their mask (``--w-side``) and the training studies' phrase views with their features
    (``--w-phrase``); the last two cached beside the studies' features, None for a term that is off. With
    ``--knowledge`` each gets its texts' parsed findings beside its frozen features (model.knowledge).
    train.py, ``bench.train_head`` and ``bench.ablation`` train through this one function."""
    from model.knowledge import with_knowledge

    scale = float(getattr(args, "knowledge", 0.0) or 0.0)
    reports = torch.from_numpy(with_knowledge(text_feats, [s.report_text for s in studies], scale))
    swapped = None
    if args.w_side > 0 or flip_pairs(args):
        from model.side_swap import swap_sides, swapped_text_features

        feats, mask = swapped_text_features(backbone, studies)
        feats = with_knowledge(feats, [swap_sides(s.report_text) if m else "" for s, m in zip(studies, mask)], scale)
        swapped = (torch.from_numpy(feats), mask)
    views = None
    if args.w_phrase > 0:
        from model.phrase_views import PhraseViews, phrase_view_features

        t1 = time.time()
        views = PhraseViews.build(studies, train_rows)
        views.features = with_knowledge(phrase_view_features(backbone, views, studies), views.texts, scale)
        log.info("phrase views: %d distinct phrases (%.1fs)", len(views.texts), time.time() - t1)
    return reports, swapped, views


def flip_pairs(args: argparse.Namespace) -> bool:
    """Whether the flip-twin term pairs mirrored films with side-swapped reports (it then needs their features)."""
    return float(getattr(args, "w_flip", 0.0) or 0.0) > 0 and bool(getattr(args, "flip_pairs", False))


def training_image_inputs(args: argparse.Namespace, backbone: Any, studies: Sequence[Study],
                          progress: bool = True) -> tuple[torch.Tensor, np.ndarray] | None:
    """The mirrored films' frozen features with their mask for the flip-twin term (``--w-flip``; cached
    beside the studies' features, ``model.flip_twins``), None when the term is off."""
    if float(getattr(args, "w_flip", 0.0) or 0.0) <= 0:
        return None
    from model.flip_twins import flipped_image_features

    t1 = time.time()
    feats, mask = flipped_image_features(backbone, studies, batch_size=args.embed_batch_size, progress=progress)
    log.info("flip twins: %d mirrored films (%.1fs)", int(mask.sum()), time.time() - t1)
    return torch.from_numpy(feats), mask


def hybrid_phrase_rows(trained: TrainedHead, Xi: torch.Tensor, phrase_feats: np.ndarray,
                       data: Collection, phrases: Sequence[Phrase] = PHRASES) -> dict[str, Any]:
    """eval.json's ``phrase_benchmark["hybrid"]`` and ``["reports only"]`` (index.hybrid_benchmark): the
    head's phrase and test-image embeddings fused with the test studies' own reports."""
    from index.hybrid_benchmark import hybrid_rows

    test = data.rows["test"]
    head_input = text_inputs(trained.head, phrase_feats, [p.text for p in phrases])
    return hybrid_rows(project(trained.head, torch.from_numpy(head_input), "text"),
                       project(trained.head, Xi[test], "image"), [data.studies[i] for i in test], phrases)


def run_config(args: argparse.Namespace, backbone: Any, trained: TrainedHead, data: Collection,
               calibration: dict[str, Any]) -> dict[str, Any]:
    """config.json: what rebuilds the model (backbone identity, head shape via the checkpoint) and
    every option of the run except paths (``pipeline.options.PATH_ARGS``), once, under ``args``: read
    them with ``model.checkpoint.run_option`` (which also reads runs written before)."""
    return {
        "backbone_name": backbone.name, "backbone_id": backbone.backbone_id, "preprocess_id": backbone.preprocess_id,
        "image_dim": backbone.image_dim, "text_dim": backbone.text_dim, "shared_space": backbone.shared_space,
        "loss_weights": trained.loss_weights,  # derived from args.loss and the w_* options
        "args": {k: v for k, v in vars(args).items() if k not in PATH_ARGS},  # every option, once (run_option)
        "best_epoch": trained.best_epoch, "data": data.source.name, "calibration": calibration,
        "data_version": studies_fingerprint(data.studies), "split_hash": split_hash(data.split),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "phrase_parser": PARSER_VERSION},
    }


def write_run(out: Path, trained: TrainedHead, config: dict[str, Any], report: dict[str, Any],
              split: dict[str, list[str]]) -> None:
    """The run folder: head.safetensors + config.json, eval.json/.md, split.json, history.json, curves.png."""
    save_checkpoint(out, trained.head, config)
    atomic_write_json(out / "eval.json", report)
    atomic_write_bytes(out / "eval.md", (format_table(report) + "\n\n" + format_phrase_table(report) + "\n\n"
                                         + format_phrase_table(report, "phrase_benchmark_other_wording") + "\n").encode())
    atomic_write_json(out / "split.json", split)
    atomic_write_json(out / "history.json", trained.history)
    plot_curves(trained.history, out / "curves.png")


# --------------------------------------------------------------------------------------- 5. index
def index_run(run_dir: Path | str, index: Path | str, studies: Sequence[Study],
              data_root: Path | str | None = None, batch_size: int = 64, progress: bool = True,
              encoder: Any = None, shards: Path | str | None = None, **hnsw: int):
    """Step 5: index ``studies`` with the run's model through the one builder (``index.build``): frozen
    features from the shared cache (or the Ray ingest's ``shards``), then the head, with their familiarity
    model and frozen vectors, to an hnswlib folder or ``milvus://``; published atomically. Returns the manifest.

    ``encoder``: the run's model when the caller has it loaded already (default: loaded from ``run_dir``)."""
    from index.build import build_from_encoder
    from model.retrieval_model import RetrievalModel

    log.info("building the search index -> %s", index)
    model = encoder if encoder is not None else RetrievalModel.from_run(run_dir)
    return build_from_encoder(index, model, studies, data_root=data_root, batch_size=batch_size,
                              run_dir=run_dir, progress=progress, shards=shards, **hnsw)


# ---------------------------------------------------------------------------------------- 6. maps
def write_maps(run_dir: Path, frozen_image: np.ndarray, finetuned_image: np.ndarray, studies: Sequence[Study],
               seed: int) -> Path:
    """Step 6: the t-SNE/UMAP maps of the frozen and the fine-tuned image spaces (the Plots tab)."""
    t0 = time.time()
    spaces = {"frozen": frozen_image, "finetuned": finetuned_image}
    maps = build_embedding_maps(spaces, [s.study_id for s in studies], [s.label for s in studies], seed=seed)
    atomic_write_json(Path(run_dir) / MAPS_FILE, maps)
    log.info("embedding maps: %.1fs", time.time() - t0)
    return Path(run_dir) / MAPS_FILE


def maps_for_run(run_dir: Path | str) -> Path:
    """Step 6 for a demo run trained without its maps (the app's first start draws them after search is up)."""
    from model.retrieval_model import RetrievalModel

    run_dir = Path(run_dir)
    studies, _ = run_collection(run_dir)
    model = RetrievalModel.from_run(run_dir)
    image_feats, _ = cached_frozen_features(model.backbone, studies, progress=False)  # cached by train.py
    return write_maps(run_dir, image_feats, model.project_image_features(image_feats), studies,
                      int(run_option(model.config, "seed", 0)))


# ---------------------------------------------------------------------------------- all the steps
def train_run(args: argparse.Namespace) -> Path:
    """``python train.py``: every step in order, for the options of ``pipeline.options``; returns the run folder."""
    apply_runtime_argument(args)
    t_start = time.time()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    data = load_collection(args, args.seed)
    log.info("data: %s, %d studies (%s-level split: train %d / val %d / test %d)", data.source.name,
             len(data.studies), data.level, *(len(data.rows[k]) for k in ("train", "val", "test")))
    out = Path(args.out) if args.out else cache_root() / "runs" / f"{args.backbone.replace(':', '-')}-{data.source.name}"
    out.mkdir(parents=True, exist_ok=True)

    backbone = create_backbone(args.backbone, path=args.backbone_path, cache_dir=args.cache_dir)
    t0 = time.time()
    image_feats, text_feats = frozen_features(backbone, data.studies, shards=args.features,
                                              batch_size=args.embed_batch_size, progress=not args.quiet)
    t_embed = time.time() - t0
    log.info("features: image %s, text %s (%.1fs)", image_feats.shape, text_feats.shape, t_embed)
    Xi, Xt = torch.from_numpy(image_feats), torch.from_numpy(text_feats)
    Xt_head, swapped, views = training_text_inputs(args, backbone, data.studies, data.rows["train"], text_feats)
    flipped = training_image_inputs(args, backbone, data.studies, progress=not args.quiet)
    trained = train_head(args, backbone.image_dim, backbone.text_dim, Xi, Xt_head, torch.from_numpy(data.labels).float(),
                         data.rows, data.labels, data.codes, swapped=swapped, views=views, flipped=flipped)

    report, calibration = evaluate(backbone, trained, Xi, Xt, data, args.bootstrap)
    report["timings_s"] = {"embed": round(t_embed, 1), "train_head": round(trained.seconds, 1)}
    write_run(out, trained, run_config(args, backbone, trained, data, calibration), report, data.split)

    if args.index:  # the saved run, verified by its checksum, on the backbone already loaded (and its --backbone-path)
        from model.retrieval_model import RetrievalModel

        index_run(out, args.index, data.studies, data_root=data_root_for(args, data.studies), progress=not args.quiet,
                  encoder=RetrievalModel.from_run(out, backbone=backbone), shards=args.features)
    if not args.no_maps:
        write_maps(out, image_feats, project(trained.head, Xi, "image"), data.studies, args.seed)
    log.info("\n%s\n\nrun folder: %s  (%.0fs in all)", format_table(report), out, time.time() - t_start)
    return out
