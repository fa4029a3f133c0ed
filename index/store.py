"""Per-item metadata of an index, in SQLite: row id -> study, label, view, findings, report.

SQLite rather than pickle because the index folder may come from elsewhere (a shared
drive, a Space) and unpickling runs code; SQLite is also queryable, so filters
(label / view / finding) are indexed SQL instead of Python loops over every study.

Row ids are the hnswlib labels: item ``i`` of both graphs is row ``i`` here. A loaded
store is copied into memory, so it answers fast and is unaffected when a newer index
is swapped in on disk under it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from data.records import LABEL_NAMES, Study

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row_id        INTEGER PRIMARY KEY,
    study_id      TEXT NOT NULL UNIQUE,
    patient_id    TEXT NOT NULL,
    label         INTEGER NOT NULL,
    view          TEXT NOT NULL,
    tags          TEXT NOT NULL,   -- JSON list, verbatim structured tags
    finding_names TEXT NOT NULL,   -- JSON list, bare lower-case names
    findings      TEXT NOT NULL,
    impression    TEXT NOT NULL,
    image_path    TEXT NOT NULL,   -- relative to the data root where possible
    image_paths   TEXT NOT NULL    -- JSON list, same convention
);
CREATE TABLE IF NOT EXISTS item_findings (
    row_id  INTEGER NOT NULL REFERENCES items(row_id),
    finding TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_items_label ON items(label);
CREATE INDEX IF NOT EXISTS idx_items_view ON items(view);
CREATE INDEX IF NOT EXISTS idx_findings ON item_findings(finding, row_id);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = (
    "row_id, study_id, patient_id, label, view, tags, finding_names, findings, impression, image_path, image_paths"
)


@dataclass(frozen=True)
class ItemMeta:
    """What a search hit shows about a stored study."""

    row_id: int
    study_id: str
    patient_id: str
    label: int
    view: str
    tags: tuple[str, ...]
    finding_names: tuple[str, ...]
    findings: str
    impression: str
    image_path: str
    image_paths: tuple[str, ...]

    @property
    def label_name(self) -> str:
        return LABEL_NAMES[self.label]

    def to_study(self) -> Study:
        return Study(
            study_id=self.study_id,
            patient_id=self.patient_id,
            image_paths=self.image_paths,
            findings=self.findings,
            impression=self.impression,
            label=self.label,
            tags=self.tags,
            view=self.view,
        )


def relative_path(path: str, data_root: Path | str | None) -> str:
    """``path`` relative to ``data_root`` when it lies under it (portable indexes), else unchanged."""
    if not path or data_root is None:
        return path
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(data_root))
    except ValueError:  # different drives on Windows
        return path
    return path if rel.startswith("..") else rel


def _row(row_id: int, study: Study, data_root: Path | str | None) -> tuple:
    paths = [relative_path(p, data_root) for p in study.image_paths]
    return (
        row_id,
        study.study_id,
        study.patient_id,
        int(study.label),
        study.view or "",
        json.dumps(list(study.tags)),
        json.dumps(list(study.finding_names)),
        study.findings or "",
        study.impression or "",
        paths[0] if paths else "",
        json.dumps(paths),
    )


def _meta(row: Sequence) -> ItemMeta:
    return ItemMeta(
        row_id=int(row[0]),
        study_id=row[1],
        patient_id=row[2],
        label=int(row[3]),
        view=row[4],
        tags=tuple(json.loads(row[5])),
        finding_names=tuple(json.loads(row[6])),
        findings=row[7],
        impression=row[8],
        image_path=row[9],
        image_paths=tuple(json.loads(row[10])),
    )


def write_store(path: Path, studies: Sequence[Study], data_root: Path | str | None = None) -> None:
    """Create a new store file holding ``studies`` as rows ``0..n-1``."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; stores are written into fresh folders")
    append_to_store(path, studies, data_root=data_root, start=0)


def append_to_store(path: Path, studies: Sequence[Study], data_root: Path | str | None = None, start: int | None = None) -> None:
    """Append ``studies`` with the next row ids in one transaction (all or nothing).

    Raises ``ValueError`` for a study id already stored: a study has exactly one row.
    """
    conn = sqlite3.connect(str(path))
    try:
        conn.executescript(_SCHEMA)
        with conn:  # one transaction
            conn.execute("INSERT OR REPLACE INTO info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            current = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            if start is not None and start != current:
                raise ValueError(f"store has {current} rows, expected {start}")
            ids = [s.study_id for s in studies]
            if len(set(ids)) != len(ids):
                raise ValueError("duplicate study ids in the studies to add")
            try:
                conn.executemany(
                    f"INSERT INTO items ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [_row(current + i, s, data_root) for i, s in enumerate(studies)],
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"study id already in the index: {exc}") from exc
            conn.executemany(
                "INSERT INTO item_findings VALUES (?, ?)",
                [(current + i, name) for i, s in enumerate(studies) for name in s.finding_names],
            )
    finally:
        conn.close()


class MetadataStore:
    """Read side of ``meta.sqlite``, held in memory and safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._lock = threading.Lock()
        self._count = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        self._filter_cache: dict[tuple, np.ndarray] = {}

    @classmethod
    def load(cls, path: Path) -> "MetadataStore":
        """Copy the file into an in-memory database (a few ms for thousands of rows)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        memory = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            source.backup(memory)
        finally:
            source.close()
        return cls(memory)

    def close(self) -> None:
        self._conn.close()

    def __len__(self) -> int:
        return self._count

    def _query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def get(self, row_ids: Iterable[int]) -> list[ItemMeta]:
        """Metadata of ``row_ids``, in the order given."""
        ids = [int(i) for i in row_ids]
        if not ids:
            return []
        rows = self._query(
            f"SELECT {_COLUMNS} FROM items WHERE row_id IN ({','.join('?' * len(ids))})", ids
        )
        by_id = {int(r[0]): r for r in rows}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"row ids not in the metadata store: {missing[:5]}")
        return [_meta(by_id[i]) for i in ids]

    def all(self) -> list[ItemMeta]:
        return [_meta(r) for r in self._query(f"SELECT {_COLUMNS} FROM items ORDER BY row_id")]

    def study_ids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT study_id FROM items")}

    def views(self) -> list[str]:
        return [r[0] for r in self._query("SELECT DISTINCT view FROM items WHERE view != '' ORDER BY view")]

    def finding_counts(self) -> dict[str, int]:
        rows = self._query("SELECT finding, COUNT(*) FROM item_findings GROUP BY finding ORDER BY 2 DESC, 1")
        return {name: int(n) for name, n in rows}

    def matching_ids(self, label: int | None = None, view: str | None = None, finding: str | None = None) -> np.ndarray:
        """Sorted row ids passing every given filter (``None`` means no constraint).

        View and finding match case-insensitively. Results are cached: the app offers a
        handful of filter combinations and the store never changes once loaded.
        """
        key = (label, view.upper() if view else None, finding.lower() if finding else None)
        cached = self._filter_cache.get(key)
        if cached is not None:
            return cached
        sql = "SELECT row_id FROM items WHERE 1=1"
        params: list = []
        if key[0] is not None:
            sql += " AND label = ?"
            params.append(int(key[0]))
        if key[1] is not None:
            sql += " AND UPPER(view) = ?"
            params.append(key[1])
        if key[2] is not None:
            sql += " AND row_id IN (SELECT row_id FROM item_findings WHERE finding = ?)"
            params.append(key[2])
        ids = np.array([r[0] for r in self._query(sql + " ORDER BY row_id", params)], dtype=np.int64)
        self._filter_cache[key] = ids
        return ids
