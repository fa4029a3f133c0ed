"""Write an index folder from embeddings, grow one in place, and embed a dataset for it.

``build_index`` and ``add_studies`` take precomputed embeddings (so they are testable with
any vectors); ``embed_into_head_space`` turns studies into embeddings with an encoder; the CLI in
``index/__main__.py`` only wires these to a trained run and a dataset folder.
Every write goes through ``manifest.staged_write``: the live folder is replaced whole or
not at all.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from data.dataset import studies_fingerprint
from data.records import Study
from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswIndex, normalise
from index.manifest import (
    FAMILIARITY,
    IMAGES,
    META,
    REPORTS,
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

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """What the index needs from a model (``model.retrieval_model.RetrievalModel`` is one)."""

    backbone_id: str
    head_checksum: str
    embed_dim: int

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def abnormal_probability(self, image_emb: np.ndarray) -> np.ndarray: ...


def encoder_identity(encoder: Encoder) -> dict[str, Any]:
    return {
        "backbone_id": str(encoder.backbone_id),
        "head_checksum": str(encoder.head_checksum),
        "embed_dim": int(encoder.embed_dim),
    }


def _check_embeddings(image_emb: np.ndarray, report_emb: np.ndarray, studies: Sequence[Study], dim: int) -> None:
    n = len(studies)
    for name, emb in (("image", image_emb), ("report", report_emb)):
        if emb.ndim != 2 or emb.shape != (n, dim):
            raise ValueError(f"{name} embeddings have shape {emb.shape}; expected ({n}, {dim}) for {n} studies")


def _write_graph(folder: Path, images: HnswIndex, reports: HnswIndex) -> None:
    images.save(folder / IMAGES)
    reports.save(folder / REPORTS)


def build_index(
    out_dir: Path | str,
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
    """Build both graphs and the metadata store, and publish them atomically as ``out_dir``.

    ``frozen_image_feats`` (the backbone's features before the head, row-aligned) are kept in
    the folder for the frozen-vs-fine-tuned view (``index.frozen``); ``familiarity`` (an
    ``index.familiarity.FamiliarityModel`` fitted on the same studies) is stored beside them.
    Both are covered by the manifest's checksums.

    ``identity`` is ``{"backbone_id", "head_checksum", "embed_dim"}`` of the encoder that
    produced the embeddings (see ``encoder_identity``). Image paths under ``data_root`` are
    stored relative to it so the folder pair can be moved together.
    """
    started = time.perf_counter()
    dim = int(identity.get("embed_dim") or np.asarray(image_emb).shape[1])
    identity = {**identity, "embed_dim": dim}
    image_emb, report_emb = normalise(image_emb), normalise(report_emb)
    _check_embeddings(image_emb, report_emb, studies, dim)
    # ef (and M, where a rebuild is cheap) from measured recall (index.ef_tuning); ef given: measured only
    images, reports, ef, tuning = tuned_graphs(image_emb, report_emb, M, ef_construction, ef)
    M = max(images.M, reports.M)
    with staged_write(Path(out_dir)) as staging:
        _write_graph(staging, images, reports)
        write_store(staging / META, studies, data_root=data_root)
        if familiarity is not None:
            familiarity.save(staging / FAMILIARITY)
        stamp = now_iso()
        manifest = Manifest(
            backbone_id=str(identity["backbone_id"]),
            head_checksum=str(identity["head_checksum"]),
            embed_dim=dim,
            count=len(studies),
            M=M,
            ef_construction=ef_construction,
            ef=ef,
            data_version=studies_fingerprint(studies),
            built_at=stamp,
            updated_at=stamp,
            build_seconds=round(time.perf_counter() - started, 3),
            data_root=str(Path(data_root).absolute()) if data_root is not None else None,
            run_dir=str(Path(run_dir).absolute()) if run_dir is not None else None,
            ef_tuning=tuning,
        )
        extra = ()
        if frozen_image_feats is not None:
            from index.frozen import write_frozen

            extra = (write_frozen(staging, frozen_image_feats, len(studies)),)
        write_manifest(staging, manifest, extra)
    log.info("built index %s: %d studies, dim %d", out_dir, len(studies), dim)
    return manifest


def tuned_graphs(image_emb: np.ndarray, report_emb: np.ndarray, M: int, ef_construction: int,
                 ef: int | None) -> tuple[HnswIndex, HnswIndex, int, dict[str, Any]]:
    """Both graphs with the ef (and M) ``index.ef_tuning`` chose; a given ``ef`` is kept, its recall measured."""
    from index.ef_tuning import EF_GRID, build_tuned, combine

    grid = (ef,) if ef else EF_GRID
    images, image_choice = build_tuned(image_emb, M, ef_construction, {"reports": report_emb}, grid=grid)
    reports, report_choice = build_tuned(report_emb, M, ef_construction, {"images": image_emb}, grid=grid)
    chosen, record = combine({IMAGES: image_choice, REPORTS: report_choice})
    record["chosen_by"] = "given (--ef): recall measured only" if ef else "measured recall (index.ef_tuning)"
    for graph in (images, reports):
        graph.set_ef(chosen)
    return images, reports, chosen, record


def grow_tuned(index_dir: Path, staging: Path, manifest: Manifest, image_emb: np.ndarray,
               report_emb: np.ndarray) -> tuple[int, dict[str, Any]]:
    """Both graphs grown by the new vectors into ``staging``, their ef chosen again from measured
    recall as they grow (``index.ef_tuning.insert_tuned``; their M stays: no rebuild)."""
    from index.ef_tuning import combine, insert_tuned

    new_count = manifest.count + len(image_emb)
    choices = {}
    for name, emb, other in ((IMAGES, image_emb, {"reports": report_emb}), (REPORTS, report_emb, {"images": image_emb})):
        graph = HnswIndex.load(index_dir / name, dim=manifest.embed_dim, ef=manifest.ef)
        old = graph.vectors()
        choices[name] = insert_tuned(graph, emb, np.arange(manifest.count, new_count), old, other)
        if len(graph) != new_count:
            raise RuntimeError(f"{name}: expected {new_count} items after adding, found {len(graph)}")
        graph.save(staging / name)
    chosen, record = combine(choices)
    record["chosen_by"] = "measured recall after index add (index.ef_tuning)"
    return chosen, record


def add_studies(
    index_dir: Path | str,
    image_emb: np.ndarray,
    report_emb: np.ndarray,
    studies: Sequence[Study],
    identity: dict[str, Any] | None = None,
    frozen_image_feats: np.ndarray | None = None,
) -> Manifest:
    """Append studies to an existing index without rebuilding it, then republish atomically.

    The graphs are grown with ``resize_index`` and the new vectors inserted; new rows take
    the next ids. ``identity`` (when given) must match the index's model. Study ids already
    in the index raise ``ValueError`` (use ``new_studies`` to drop them first). Image paths
    are stored relative to the index's own data root (so one root resolves every row);
    paths outside it are kept as given (absolute, from ``load_dataset``).
    ``frozen_image_feats`` of the new studies extend the folder's frozen vectors (``index.frozen``);
    without them the folder is republished without any (the side-by-side view then says so).
    """
    started = time.perf_counter()
    index_dir = Path(index_dir)
    recover_interrupted_swap(index_dir)
    manifest = read_manifest(index_dir)
    if identity is not None:
        check_identity(manifest, identity, where=index_dir)
    image_emb, report_emb = normalise(image_emb), normalise(report_emb)
    _check_embeddings(image_emb, report_emb, studies, manifest.embed_dim)
    if not studies:
        return manifest
    with staged_write(index_dir) as staging:
        manifest = read_manifest(index_dir)  # re-read under the writer lock
        verify_files(index_dir, manifest)  # never extend a damaged index
        new_count = manifest.count + len(studies)
        shutil.copyfile(index_dir / META, staging / META)
        if FAMILIARITY in manifest.files:  # kept as fitted: the added studies widen the index a little
            shutil.copyfile(index_dir / FAMILIARITY, staging / FAMILIARITY)
        append_to_store(staging / META, studies, data_root=manifest.data_root, start=manifest.count)
        manifest.ef, manifest.ef_tuning = grow_tuned(index_dir, staging, manifest, image_emb, report_emb)
        store = MetadataStore.load(staging / META)
        try:
            data_version = studies_fingerprint(item.study for item in store.all())
        finally:
            store.close()
        manifest.count = new_count
        manifest.data_version = data_version
        manifest.updated_at = now_iso()
        manifest.build_seconds = round(time.perf_counter() - started, 3)
        write_manifest(staging, manifest, _extend_frozen(index_dir, staging, manifest, frozen_image_feats))
    log.info("added %d studies to %s (now %d)", len(studies), index_dir, new_count)
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
    return (write_frozen(staging, np.concatenate([old, new_feats]), manifest.count),)


def new_studies(index_dir: Path | str, studies: Sequence[Study]) -> list[Study]:
    """The studies whose ids are not yet in the index (what ``index add`` embeds)."""
    store = MetadataStore.load(Path(index_dir) / META)
    try:
        known = store.study_ids()
    finally:
        store.close()
    return [s for s in studies if s.study_id not in known]


# --------------------------------------------------------------------------- embedding
def _open_image(path: str) -> Image.Image:
    """Decode like the app decodes uploads, so gallery and query images match."""
    from data.images import load_radiograph

    return load_radiograph(path).image


def with_images(studies: Sequence[Study]) -> tuple[list[Study], list[Study]]:
    """Split studies into (those with a readable image file, those without)."""
    usable, missing = [], []
    for study in studies:
        (usable if study.image_path and Path(study.image_path).is_file() else missing).append(study)
    return usable, missing


def embed_into_head_space(
    encoder: Encoder, studies: Sequence[Study], batch_size: int = 64, progress: bool = True,
    frozen_out: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image and report embeddings of ``studies`` in batches (bounded memory), with tqdm bars.

    ``frozen_out``: a list that receives the frozen image features of each batch too (same
    backbone pass), when the encoder can give them (``embed_images_with_features``): the
    familiarity model and the frozen-vs-fine-tuned view read them."""
    from tqdm.auto import tqdm

    dim = int(encoder.embed_dim)
    image_parts: list[np.ndarray] = []
    report_parts: list[np.ndarray] = []
    starts = range(0, len(studies), batch_size)
    both = frozen_out is not None and hasattr(encoder, "embed_images_with_features")
    for start in tqdm(starts, desc="embedding images", unit="batch", disable=not progress):
        images = [_open_image(s.image_path) for s in studies[start : start + batch_size]]
        if both:
            feats, emb = encoder.embed_images_with_features(images)
            frozen_out.append(np.asarray(feats, np.float32))
        else:
            emb = encoder.embed_images(images)
        image_parts.append(np.asarray(emb, np.float32))
    for start in tqdm(starts, desc="embedding reports", unit="batch", disable=not progress):
        batch = studies[start : start + batch_size]
        report_parts.append(np.asarray(encoder.embed_texts([s.report_text for s in batch]), np.float32))
    empty = np.zeros((0, dim), np.float32)
    return (
        np.concatenate(image_parts) if image_parts else empty,
        np.concatenate(report_parts) if report_parts else empty,
    )


def fit_familiarity(encoder: Encoder, studies: Sequence[Study], image_feats: np.ndarray | None = None) -> Any:
    """The familiarity model of an index of ``studies`` (None when the encoder exposes no frozen
    backbone). ``image_feats``: their frozen image features when already computed."""
    from index.familiarity import fit_for_studies

    backbone = getattr(encoder, "backbone", None)
    if backbone is None:
        return None
    if image_feats is None:
        image_feats = np.concatenate([
            np.asarray(backbone.encode_images([_open_image(s.image_path) for s in studies[i:i + 64]]), np.float32)
            for i in range(0, len(studies), 64)])
    return fit_for_studies(backbone, image_feats, [s.report_text for s in studies])


def head_space_embeddings(
    encoder: Encoder, studies: Sequence[Study], batch_size: int = 64, progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image, report) embeddings in the head's space, and the frozen image features (None when the
    encoder exposes no frozen backbone).

    A trained model (``model.retrieval_model.RetrievalModel``) reads its frozen features from the same
    on-disk cache as train.py (``model.features.cached_frozen_features``), so a collection is embedded
    once for training, the index CLI and the app's first start; other encoders embed batch by batch."""
    if all(hasattr(encoder, a) for a in ("backbone", "project_image_features", "project_text_features")):
        from model.features import cached_frozen_features

        image_feats, text_feats = cached_frozen_features(encoder.backbone, studies, batch_size=batch_size,
                                                         progress=progress)
        return (np.asarray(encoder.project_image_features(image_feats), np.float32),
                np.asarray(encoder.project_text_features(text_feats), np.float32), image_feats)
    frozen: list[np.ndarray] = []
    image_emb, report_emb = embed_into_head_space(encoder, studies, batch_size=batch_size, progress=progress,
                                                  frozen_out=frozen)
    return image_emb, report_emb, (np.concatenate(frozen) if frozen else None)


def build_from_encoder(
    out_dir: Path | str,
    encoder: Encoder,
    studies: Sequence[Study],
    data_root: Path | str | None = None,
    batch_size: int = 64,
    run_dir: Path | str | None = None,
    progress: bool = True,
    **hnsw: int,
) -> Manifest:
    """Embed ``studies`` that have an image and build an index of them."""
    usable, missing = with_images(studies)
    if missing:
        log.warning("skipping %d studies without a readable image (e.g. %s)", len(missing), missing[0].study_id)
    if not usable:
        raise ValueError("no study has a readable image; nothing to index")
    image_emb, report_emb, frozen_feats = head_space_embeddings(encoder, usable, batch_size=batch_size, progress=progress)
    return build_index(
        out_dir, image_emb, report_emb, usable, encoder_identity(encoder), data_root=data_root, run_dir=run_dir,
        frozen_image_feats=frozen_feats, familiarity=fit_familiarity(encoder, usable, frozen_feats), **hnsw
    )


def add_from_encoder(
    index_dir: Path | str,
    encoder: Encoder,
    studies: Sequence[Study],
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[Manifest, int]:
    """Embed the studies not yet indexed (frozen features through the shared cache) and add them;
    returns (manifest, number added)."""
    manifest = read_manifest(Path(index_dir))
    check_identity(manifest, encoder_identity(encoder), where=index_dir)  # fail before embedding
    fresh, _ = with_images(new_studies(index_dir, studies))
    if not fresh:
        return manifest, 0
    image_emb, report_emb, frozen_feats = head_space_embeddings(encoder, fresh, batch_size=batch_size, progress=progress)
    manifest = add_studies(index_dir, image_emb, report_emb, fresh, identity=encoder_identity(encoder),
                           frozen_image_feats=frozen_feats)
    return manifest, len(fresh)
