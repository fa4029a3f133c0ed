"""Index a PACS over DICOMweb, and keep that index in step with it (``python -m index build|sync --dicomweb``).

Why here: ``data.dicomweb`` turns each PACS study into a de-identified ``Study`` and its decoded image;
this module saves those images (pixels only, PNG) in a folder beside the index, the index's data root,
and hands the records to the shared builders (``build_from_encoder``, ``add_from_encoder``), so a
PACS-sourced index is written, checked and served exactly like any other.

A sync lists the PACS, drops the StudyInstanceUIDs already indexed, and adds the rest in chunks; each
chunk is published with the builders' staged write, so a sync killed mid-way leaves the last
published index whole and serving, and the next sync resumes with what is still missing (no
duplicates: the index is keyed by StudyInstanceUID).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.atomic_io import atomic_write_bytes
from data.dicomweb import MAX_IN_FLIGHT, PacsSource
from data.errors import PacsError
from data.records import Study
from index.build import Encoder, add_from_encoder, build_from_encoder
from index.manifest import META, Manifest, read_manifest
from index.store import MetadataStore

log = logging.getLogger(__name__)
SYNC_CHUNK = 256  # studies published at once by a sync: what a killed sync can lose


@dataclass
class SyncReport:
    """What a build or sync did: studies listed, already indexed, fetched, skipped (with why), indexed."""

    listed: int = 0
    known: int = 0
    fetched: int = 0
    indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (StudyInstanceUID, reason)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (StudyInstanceUID, note) of indexed studies

    def counts(self) -> dict[str, int]:
        return {"listed": self.listed, "known": self.known, "fetched": self.fetched,
                "skipped": len(self.skipped), "indexed": self.indexed}

    def lines(self) -> list[str]:
        """One line per skipped study, then the totals."""
        out = [f"skipped {uid}: {why}" for uid, why in self.skipped]
        out += [f"note {uid}: {why}" for uid, why in self.notes]
        out.append(", ".join(f"{k} {v}" for k, v in self.counts().items()))
        return out


def image_dir_for(index_dir: Path | str) -> Path:
    """Where a PACS-sourced index keeps its de-identified images: ``<index>.images`` beside it (the index
    folder itself is replaced whole on every publish)."""
    index_dir = Path(index_dir)
    return index_dir.parent / f"{index_dir.name}.images"


def fetch_studies(source: PacsSource, uids: Sequence[str], image_dir: Path, report: SyncReport,
                  in_flight: int = MAX_IN_FLIGHT, bar: Any = None) -> list[Study]:
    """Fetch ``uids`` (bounded in flight), save each usable image as ``<uid>.png`` and return its record.

    Only decoded pixels are written (PNG, no metadata): nothing identifying reaches the disk."""
    studies: list[Study] = []
    for fetched in source.fetch_many(uids, in_flight=in_flight):
        if fetched.skipped or fetched.study is None or fetched.image is None:
            report.skipped.append((fetched.study_uid, fetched.skipped))
            _say(bar, f"skipped {fetched.study_uid}: {fetched.skipped}")
        else:
            report.fetched += 1
            path = image_dir / f"{fetched.study_uid}.png"
            atomic_write_bytes(path, _png(fetched.image.image))
            studies.append(replace(fetched.study, image_paths=(str(path.absolute()),)))
            if fetched.note:
                report.notes.append((fetched.study_uid, fetched.note))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(report.counts(), refresh=False)
    return studies


def build_from_pacs(out_dir: Path | str, encoder: Encoder, source: PacsSource, run_dir: Path | str | None = None,
                    since: str | None = None, study_uids: Iterable[str] | None = None,
                    in_flight: int = MAX_IN_FLIGHT, batch_size: int = 64, progress: bool = True,
                    **hnsw: int) -> tuple[Manifest, SyncReport]:
    """An index of the PACS's frontal CR/DX studies, published whole as ``out_dir`` (images beside it)."""
    report = SyncReport()
    uids = source.list_studies(since=since, study_uids=study_uids)
    report.listed = len(uids)
    image_dir = image_dir_for(out_dir)
    with _bar(len(uids), progress) as bar:
        studies = fetch_studies(source, uids, image_dir, report, in_flight, bar)
    if not studies:
        raise PacsError(f"no frontal CR/DX study to index at {source.url} "
                        f"({report.listed} listed, {len(report.skipped)} skipped)")
    manifest = build_from_encoder(out_dir, encoder, studies, data_root=image_dir, batch_size=batch_size,
                                  run_dir=run_dir, progress=progress, **hnsw)
    report.indexed = manifest.count
    return manifest, report


def sync_from_pacs(index_dir: Path | str, encoder: Encoder, source: PacsSource, since: str | None = None,
                   study_uids: Iterable[str] | None = None, in_flight: int = MAX_IN_FLIGHT, batch_size: int = 64,
                   progress: bool = True, chunk: int = SYNC_CHUNK) -> tuple[Manifest, SyncReport]:
    """Add the PACS's studies not yet in ``index_dir``; idempotent, and resumable after a crash."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    image_dir = Path(manifest.data_root) if manifest.data_root else image_dir_for(index_dir)
    report = SyncReport()
    uids = source.list_studies(since=since, study_uids=study_uids)
    report.listed = len(uids)
    known = indexed_study_ids(index_dir)
    fresh = [u for u in uids if u not in known]
    report.known = report.listed - len(fresh)
    with _bar(len(fresh), progress) as bar:
        for start in range(0, len(fresh), chunk):
            studies = fetch_studies(source, fresh[start:start + chunk], image_dir, report, in_flight, bar)
            if studies:
                manifest, added = add_from_encoder(index_dir, encoder, studies, batch_size=batch_size,
                                                   progress=progress)
                report.indexed += added
                bar.set_postfix(report.counts())
    return manifest, report


def indexed_study_ids(index_dir: Path | str) -> set[str]:
    store = MetadataStore.load(Path(index_dir) / META)
    try:
        return set(store.study_ids())
    finally:
        store.close()


def _png(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="PACS studies", unit="study", disable=not progress)


def _say(bar: Any, line: str) -> None:
    if bar is not None and not bar.disable:
        bar.write(line, file=sys.stderr)  # beside the bar; stdout gets the final report once
    else:
        log.info(line)
