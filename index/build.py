"""The one index builder: frozen features -> the run's head -> a vector store + the index's folder.

Every way to build goes through ``build_from_features`` (``train.py --index``, ``python -m index
build`` with any ``--engine`` and any ``--out``, the app's first start via ``pipeline.steps.index_run``),
and ``index add`` through ``add_studies``:

    frozen features      the shared on-disk cache (``model.features``) or Ray's Parquet shards (``index.shards``)
      -> head            ``encoder.project_*_features`` (nothing is embedded twice)
      -> vectors         an hnswlib folder or ``milvus://`` (``index.vector_store``)
      -> the folder      ``meta.sqlite``, ``familiarity.safetensors``, ``frozen_images.npy`` and
                         ``manifest.json`` with their sha256 (for Milvus, a sidecar folder keyed by the URI)

``build_index`` and ``add_studies`` take precomputed embeddings (so they are testable with any
vectors). Every write goes through ``manifest.staged_write``: the folder is replaced whole or not at all.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from data.dataset import studies_fingerprint, with_images
from data.records import Study
from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, normalise
from index.encoder import Encoder, encoder_identity
from index.manifest import (
    FAMILIARITY,
    META,
    Manifest,
    check_identity,
    now_iso,
    read_manifest,
    recover_interrupted_swap,
    staged_write,
    verify_files,
    write_manifest,
)
from index.store import MetadataStore, append_to_store, write_store
from index.vector_store import append_vectors, artifacts_dir, store_kind, write_vectors

__all__ = ["Encoder", "encoder_identity", "build_index", "add_studies", "build_from_features", "build_from_encoder",
           "add_from_encoder", "new_studies", "with_images", "embed_into_head_space", "frozen_features"]
log = logging.getLogger(__name__)


def _check_embeddings(image_emb: np.ndarray, report_emb: np.ndarray, studies: Sequence[Study], dim: int) -> None:
    n = len(studies)
    for name, emb in (("image", image_emb), ("report", report_emb)):
        if emb.ndim != 2 or emb.shape != (n, dim):
            raise ValueError(f"{name} embeddings have shape {emb.shape}; expected ({n}, {dim}) for {n} studies")


def build_index(
    out: Path | str,
    image_emb: np.ndarray,
    report_emb: np.ndarray,
    studies: Sequence[Study],
    identity: dict[str, Any],
    M: int = DEFAULT_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    ef: int | None = None,
    data_root: Path | str | None = None,
    run_dir: Path | str | None = None,
    frozen_image_feats: np.ndarray | None = None,
    familiarity: Any = None,
) -> Manifest:
    """Write the vectors (an hnswlib folder or ``milvus://``, as ``out`` says) and the index's folder,
    published atomically.

    ``frozen_image_feats`` (the backbone's features before the head, row-aligned) are kept in
    the folder for the frozen-vs-fine-tuned view (``index.frozen``); ``familiarity`` (an
    ``trust.familiarity.FamiliarityModel`` fitted on the same studies) is stored beside them.
    Both are covered by the manifest's checksums.

    ``identity`` is ``{"backbone_id", "head_checksum", "embed_dim"}`` of the encoder that
    produced the embeddings (see ``encoder_identity``). Image paths under ``data_root`` are
    stored relative to it so the folder pair can be moved together.
    """
    started = time.perf_counter()
    dim = int(identity.get("embed_dim") or np.asarray(image_emb).shape[1])
    image_emb, report_emb = normalise(image_emb), normalise(report_emb)
    _check_embeddings(image_emb, report_emb, studies, dim)
    stamp = now_iso()
    manifest = Manifest(
        backbone_id=str(identity["backbone_id"]), head_checksum=str(identity["head_checksum"]), embed_dim=dim,
        count=len(studies), M=M, ef_construction=ef_construction, ef=ef or DEFAULT_EF, data_version=studies_fingerprint(studies),
        built_at=stamp, updated_at=stamp, build_seconds=0.0, store=store_kind(out),
        data_root=str(Path(data_root).absolute()) if data_root is not None else None,
        run_dir=str(Path(run_dir).absolute()) if run_dir is not None else None,
    )
    with staged_write(artifacts_dir(out)) as staging:
        write_vectors(out, staging, image_emb, report_emb, studies, manifest, ef_given=ef is not None)
        write_store(staging / META, studies, data_root=data_root)
        if familiarity is not None:
            familiarity.save(staging / FAMILIARITY)
        extra = ()
        if frozen_image_feats is not None:
            from index.frozen import write_frozen

            extra = (write_frozen(staging, frozen_image_feats, len(studies)),)
        manifest.build_seconds = round(time.perf_counter() - started, 3)
        write_manifest(staging, manifest, extra)
    log.info("built index %s: %d studies, dim %d", out, len(studies), dim)
    return manifest


def add_studies(
    index: Path | str,
    image_emb: np.ndarray,
    report_emb: np.ndarray,
    studies: Sequence[Study],
    identity: dict[str, Any] | None = None,
    frozen_image_feats: np.ndarray | None = None,
) -> Manifest:
    """Append studies to an existing index (a folder or ``milvus://``) without rebuilding it.

    The graphs are grown with ``resize_index`` (Milvus: rows inserted); new rows take the next ids.
    ``identity`` (when given) must match the index's model. Study ids already in the index raise
    ``ValueError`` (use ``new_studies`` to drop them first). Image paths are stored relative to the
    index's own data root (so one root resolves every row); paths outside it are kept as given.
    ``frozen_image_feats`` of the new studies extend the folder's frozen vectors (``index.frozen``);
    without them the folder is republished without any (the side-by-side view then says so).
    """
    started = time.perf_counter()
    folder = artifacts_dir(index)
    recover_interrupted_swap(folder)
    manifest = read_manifest(folder)
    if identity is not None:
        check_identity(manifest, identity, where=index)
    image_emb, report_emb = normalise(image_emb), normalise(report_emb)
    _check_embeddings(image_emb, report_emb, studies, manifest.embed_dim)
    if not studies:
        return manifest
    with staged_write(folder) as staging:
        manifest = read_manifest(folder)  # re-read under the writer lock
        verify_files(folder, manifest)  # never extend a damaged index
        old = Manifest.from_dict(manifest.to_dict())
        shutil.copyfile(folder / META, staging / META)
        if FAMILIARITY in manifest.files:  # kept as fitted: the added studies widen the index a little
            shutil.copyfile(folder / FAMILIARITY, staging / FAMILIARITY)
        append_to_store(staging / META, studies, data_root=manifest.data_root, start=manifest.count)
        store = MetadataStore.load(staging / META)
        try:
            manifest.data_version = studies_fingerprint(item.study for item in store.all())
        finally:
            store.close()
        manifest.count = old.count + len(studies)
        manifest.updated_at = now_iso()
        append_vectors(index, staging, old, image_emb, report_emb, studies, manifest)
        manifest.build_seconds = round(time.perf_counter() - started, 3)
        write_manifest(staging, manifest, _extend_frozen(folder, staging, old, frozen_image_feats))
    log.info("added %d studies to %s (now %d)", len(studies), index, manifest.count)
    return manifest


def _extend_frozen(index_dir: Path, staging: Path, manifest: Manifest, new_feats: np.ndarray | None) -> tuple[str, ...]:
    """Old frozen vectors + the new rows' into ``staging``; () when either is missing."""
    from index.frozen import FROZEN_IMAGES, write_frozen

    if new_feats is None or FROZEN_IMAGES not in manifest.files:
        return ()
    old = np.load(index_dir / FROZEN_IMAGES, allow_pickle=False).astype(np.float32)
    new_feats = np.asarray(new_feats, np.float32)
    if old.shape[1] != new_feats.shape[1]:
        return ()
    return (write_frozen(staging, np.concatenate([old, new_feats]), len(old) + len(new_feats)),)


def new_studies(index: Path | str, studies: Sequence[Study]) -> list[Study]:
    """The studies whose ids are not yet in the index (what ``index add`` embeds)."""
    store = MetadataStore.load(artifacts_dir(index) / META)
    try:
        known = store.study_ids()
    finally:
        store.close()
    return [s for s in studies if s.study_id not in known]


# --------------------------------------------------------------------------- features -> index
def _open_image(path: str) -> Image.Image:
    """Decode like the app decodes uploads, so gallery and query images match."""
    from data.images import load_radiograph

    return load_radiograph(path).image


def frozen_features(encoder: Encoder, studies: Sequence[Study], shards: Path | str | None = None,
                    batch_size: int = 64, progress: bool = True) -> tuple[list[Study], np.ndarray, np.ndarray]:
    """(studies that have features, their frozen image features, their report features), row-aligned.

    From the shared on-disk cache that train.py fills (``model.features.cached_frozen_features``), or
    from the Parquet shards of the Ray ingest (``index.shards``) when ``shards`` names a folder: there
    the studies whose image could not be decoded have no row and are left out."""
    if shards is None:
        from model.features import cached_frozen_features

        image, text = cached_frozen_features(encoder.backbone, studies, batch_size=batch_size, progress=progress)
        return list(studies), image, text
    from index.shards import features_for, read_shards

    present = set(read_shards(shards).study_ids)
    kept = [s for s in studies if s.study_id in present]
    image, text = features_for(shards, encoder.backbone, kept)
    return kept, image, text


SENTENCE_CACHE = "sentence-features"  # under the cache root: the report sentences' features, by backbone and sentences


def fit_familiarity(encoder: Encoder, studies: Sequence[Study], image_feats: np.ndarray) -> Any:
    """The familiarity model of an index of ``studies`` from their frozen image features (the
    report sentences are the only texts it embeds: ``trust.familiarity.fit_for_studies``, kept in
    ``SENTENCE_CACHE`` for the next build over the same reports)."""
    from data.paths import cache_root
    from trust.familiarity import fit_for_studies
    from trust.report import attach  # calibration report; refuses an index its own films fail

    familiarity = fit_for_studies(encoder.backbone, image_feats, [s.report_text for s in studies],
                                  cache_dir=cache_root() / SENTENCE_CACHE)
    return attach(familiarity, encoder.backbone, studies, image_feats)


def report_texts(studies: Sequence[Study]) -> list[str]:
    """The texts the report features were embedded from (``model.features``), for a head that also reads them."""
    return [s.report_text for s in studies]


def build_from_features(
    out: Path | str,
    encoder: Encoder,
    studies: Sequence[Study],
    image_feats: np.ndarray,
    text_feats: np.ndarray,
    data_root: Path | str | None = None,
    run_dir: Path | str | None = None,
    familiarity: bool = True,
    **hnsw: int,
) -> Manifest:
    """THE builder: frozen features of ``studies`` -> the head's vectors, the familiarity model and the
    frozen vectors -> ``out`` (a folder or ``milvus://``). ``familiarity=False`` leaves the model out
    (tests with synthetic images only)."""
    return build_index(
        out, encoder.project_image_features(image_feats), encoder.project_text_features(text_feats, report_texts(studies)), studies,
        encoder_identity(encoder), data_root=data_root, run_dir=run_dir, frozen_image_feats=image_feats,
        familiarity=fit_familiarity(encoder, studies, image_feats) if familiarity else None, **hnsw)


def build_from_encoder(
    out: Path | str,
    encoder: Encoder,
    studies: Sequence[Study],
    data_root: Path | str | None = None,
    batch_size: int = 64,
    run_dir: Path | str | None = None,
    progress: bool = True,
    shards: Path | str | None = None,
    familiarity: bool = True,
    **hnsw: int,
) -> Manifest:
    """Index the ``studies`` that have an image: features from the cache (or ``shards``), then
    ``build_from_features``."""
    usable, missing = with_images(studies)
    if missing:
        log.warning("skipping %d studies without a readable image (e.g. %s)", len(missing), missing[0].study_id)
    usable, image_feats, text_feats = frozen_features(encoder, usable, shards, batch_size, progress)
    if not usable:
        raise ValueError("no study has a readable image; nothing to index")
    return build_from_features(out, encoder, usable, image_feats, text_feats, data_root=data_root, run_dir=run_dir,
                               familiarity=familiarity, **hnsw)


def add_from_encoder(
    index: Path | str,
    encoder: Encoder,
    studies: Sequence[Study],
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[Manifest, int]:
    """Embed the studies not yet indexed (frozen features through the shared cache) and add them;
    returns (manifest, number added)."""
    manifest = read_manifest(artifacts_dir(index))
    check_identity(manifest, encoder_identity(encoder), where=index)  # fail before embedding
    fresh, _ = with_images(new_studies(index, studies))
    if not fresh:
        return manifest, 0
    fresh, image_feats, text_feats = frozen_features(encoder, fresh, None, batch_size, progress)
    manifest = add_studies(index, encoder.project_image_features(image_feats),
                           encoder.project_text_features(text_feats, report_texts(fresh)), fresh, identity=encoder_identity(encoder),
                           frozen_image_feats=image_feats)
    return manifest, len(fresh)


def embed_into_head_space(encoder: Encoder, studies: Sequence[Study], batch_size: int = 64,
                          progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Image and report embeddings of ``studies`` straight from their files, batch by batch, without
    the cache: the reference the cached and the Ray paths are checked against."""
    from tqdm.auto import tqdm

    images, reports = [], []
    for start in tqdm(range(0, len(studies), batch_size), desc="embedding", unit="batch", disable=not progress):
        batch = studies[start:start + batch_size]
        images.append(np.asarray(encoder.embed_images([_open_image(s.image_path) for s in batch]), np.float32))
        reports.append(np.asarray(encoder.embed_texts([s.report_text for s in batch]), np.float32))
    empty = np.zeros((0, int(encoder.embed_dim)), np.float32)
    return (np.concatenate(images) if images else empty, np.concatenate(reports) if reports else empty)
