"""Per-item metadata of an index, in SQLite: row id -> the Study (report, tags, structured findings).

SQLite rather than pickle because the index folder may come from elsewhere (a shared
drive, a Space) and unpickling runs code; SQLite is also queryable, so filters
(label / view / finding and its side) are indexed SQL instead of Python loops over every study.
Each row keeps the whole Study as one JSON record, so a new Study field needs no schema change.

Row ids are the hnswlib labels: item ``i`` of both graphs is row ``i`` here. A loaded
store is copied into memory, so it answers fast and is unaffected when a newer index
is swapped in on disk under it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from data.errors import StoreSchemaError  # noqa: F401 (defined in data.errors, re-exported)
from data.findings import BILATERAL, LEFT, RIGHT, canonical_name, profile
from data.records import Study
from data.report_findings import READER_VERSION
from index.report_findings import write_reports

# 2: one JSON ``record`` per study (Study.to_dict, with structured findings) instead of a column per
# field; item_findings keyed by finding AND side. 3: the findings and lexical text each report states
# (index.report_findings), for the hybrid text search. Older stores are refused with "rebuild the index".
SCHEMA_VERSION = 3
SIDES = (LEFT, RIGHT, BILATERAL)
READ_MEMO = 512  # statements whose answers MetadataStore.read(memo=True) keeps

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row_id        INTEGER PRIMARY KEY,
    study_id      TEXT NOT NULL UNIQUE,
    label         INTEGER NOT NULL,
    view          TEXT NOT NULL,
    record        TEXT NOT NULL    -- JSON: Study.to_dict() (image paths relative to the data root
                                   -- where possible) + "structured_findings": [Finding.to_dict()]
);
CREATE TABLE IF NOT EXISTS item_findings (
    row_id  INTEGER NOT NULL REFERENCES items(row_id),
    finding TEXT NOT NULL,         -- vocabulary name of a positive finding (data.findings)
    side    TEXT NOT NULL          -- 'left' | 'right' | 'bilateral' | '' (union over the study's tags)
);
CREATE INDEX IF NOT EXISTS idx_items_label ON items(label);
CREATE INDEX IF NOT EXISTS idx_items_view ON items(view);
CREATE INDEX IF NOT EXISTS idx_findings ON item_findings(finding, side, row_id);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StudyFields:
    """Read a held ``study``'s fields and properties (``study_id``, ``findings``, ``image_path``,
    ``structured_findings`` ...) on the holder itself, so one Study carries them from loader to hit."""

    study: Study

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "study":
            raise AttributeError(name)
        return getattr(self.study, name)


@dataclass(frozen=True)
class ItemMeta(StudyFields):
    """One stored study: its row id (= hnswlib label) and the Study, image paths as stored."""

    row_id: int
    study: Study


def relative_path(path: str, data_root: Path | str | None) -> str:
    """``path`` relative to ``data_root`` when it lies under it (portable indexes), else unchanged."""
    if not path or data_root is None:
        return path
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(data_root))
    except ValueError:  # different drives on Windows
        return path
    return path if rel.startswith("..") else rel


def _record(study: Study) -> str:
    return json.dumps({**study.to_dict(), "structured_findings": [f.to_dict() for f in study.structured_findings]})


def _row(row_id: int, study: Study, data_root: Path | str | None) -> tuple:
    stored = replace(study, image_paths=tuple(relative_path(p, data_root) for p in study.image_paths))
    return (row_id, study.study_id, int(study.label), study.view or "", _record(stored))


def finding_rows(row_id: int, study: Study) -> list[tuple[int, str, str]]:
    """(row_id, finding, side) per positive finding name; side is the union of its tags' sides."""
    out = []
    for name, sides in profile(study.structured_findings).items():
        side = BILATERAL if {LEFT, RIGHT} <= sides else next(iter(sides), "")
        out.append((row_id, name, side))
    return out


def check_side(side: str | None, finding: str | None) -> str | None:
    """A side filter, lower-cased; ``ValueError`` unless it is left/right/bilateral with a finding."""
    if side is None:
        return None
    if side.lower() not in SIDES:
        raise ValueError(f"side filter must be one of {', '.join(SIDES)}, not {side!r}")
    if finding is None:
        raise ValueError("a side filter needs a finding (e.g. finding 'pleural effusion', side 'left')")
    return side.lower()


def _meta(row: Sequence) -> ItemMeta:
    # The structured findings are re-derived from the verbatim tags by Study; the JSON copy is for
    # readers of the file that have no data.findings (e.g. sqlite3 on the command line).
    return ItemMeta(row_id=int(row[0]), study=Study.from_dict(json.loads(row[1])))


def schema_version(path: Path | str) -> int | None:
    """The schema version a store file was written with (``None`` when unreadable / not a store)."""
    return _info_number(path, "schema_version")


def report_reader_version(path: Path | str) -> int | None:
    """The version of the report reader (``data.report_findings.READER_VERSION``) that read the store's
    reports: 1 for a store written before it was recorded, ``None`` when unreadable / not a store."""
    if schema_version(path) is None:
        return None
    return _info_number(path, "report_reader") or 1


def _info_number(path: Path | str, key: str) -> int | None:
    try:
        conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else None
    except (sqlite3.Error, ValueError):
        return None
    finally:
        conn.close()


def _check_schema(conn: sqlite3.Connection, where: Path | str) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "info" not in tables:
        return  # a fresh file
    row = conn.execute("SELECT value FROM info WHERE key = 'schema_version'").fetchone()
    found = row[0] if row else None
    if found != str(SCHEMA_VERSION):
        raise StoreSchemaError(
            f"{where} holds index metadata of schema version {found}; this code reads version {SCHEMA_VERSION} "
            "(structured findings with their side, and the findings each report states). Rebuild the index: `python -m index build --run RUN --out DIR ...` "
            "(the offline demo's index is rebuilt automatically by `python app.py`)."
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
        _check_schema(conn, path)
        conn.executescript(_SCHEMA)
        with conn:  # one transaction
            conn.execute("INSERT OR REPLACE INTO info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            current = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            if current == 0:  # rows appended later keep the version of the reader that read the first ones
                conn.execute("INSERT OR REPLACE INTO info VALUES ('report_reader', ?)", (str(READER_VERSION),))
            if start is not None and start != current:
                raise ValueError(f"store has {current} rows, expected {start}")
            ids = [s.study_id for s in studies]
            if len(set(ids)) != len(ids):
                raise ValueError("duplicate study ids in the studies to add")
            try:
                conn.executemany(
                    "INSERT INTO items (row_id, study_id, label, view, record) VALUES (?,?,?,?,?)",
                    [_row(current + i, s, data_root) for i, s in enumerate(studies)],
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"study id already in the index: {exc}") from exc
            conn.executemany(
                "INSERT INTO item_findings (row_id, finding, side) VALUES (?, ?, ?)",
                [row for i, s in enumerate(studies) for row in finding_rows(current + i, s)],
            )
            write_reports(conn, [(current + i, s) for i, s in enumerate(studies)])
    finally:
        conn.close()


class MetadataStore:
    """Read side of ``meta.sqlite``, held in memory and safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._lock = threading.Lock()
        self._count = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        self._filter_cache: dict[tuple, np.ndarray] = {}
        self._memo: OrderedDict[tuple, list[tuple]] = OrderedDict()  # read(..., memo=True)

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
            _check_schema(memory, path)
        except BaseException:
            memory.close()
            raise
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

    def read(self, sql: str, params: Sequence = (), memo: bool = False) -> list[tuple]:
        """Run a read-only query on the store (the hybrid search's report tables, index.report_findings).

        ``memo``: keep the answer (bounded, ``READ_MEMO`` statements) and return the same list next time;
        for the few statements every query repeats (a finding's report rows), never for the query's own
        words. Safe because the store never changes while loaded; callers must not mutate the list."""
        if not memo:
            return self._query(sql, params)
        key = (sql, tuple(params))
        with self._lock:
            found = self._memo.get(key)
            if found is None:
                found = self._memo[key] = self._conn.execute(sql, key[1]).fetchall()
                while len(self._memo) > READ_MEMO:
                    self._memo.popitem(last=False)
            else:
                self._memo.move_to_end(key)
            return found

    def clear_memo(self) -> None:
        """Forget the answers ``read(..., memo=True)`` kept."""
        with self._lock:
            self._memo.clear()

    @property
    def memo_size(self) -> int:
        return len(self._memo)

    def get(self, row_ids: Iterable[int]) -> list[ItemMeta]:
        """Metadata of ``row_ids``, in the order given."""
        ids = [int(i) for i in row_ids]
        if not ids:
            return []
        rows = self._query(f"SELECT row_id, record FROM items WHERE row_id IN ({','.join('?' * len(ids))})", ids)
        by_id = {int(r[0]): r for r in rows}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"row ids not in the metadata store: {missing[:5]}")
        return [_meta(by_id[i]) for i in ids]

    def all(self) -> list[ItemMeta]:
        return [_meta(r) for r in self._query("SELECT row_id, record FROM items ORDER BY row_id")]

    def study_ids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT study_id FROM items")}

    def views(self) -> list[str]:
        return [r[0] for r in self._query("SELECT DISTINCT view FROM items WHERE view != '' ORDER BY view")]

    def finding_counts(self) -> dict[str, int]:
        rows = self._query("SELECT finding, COUNT(DISTINCT row_id) FROM item_findings GROUP BY finding ORDER BY 2 DESC, 1")
        return {name: int(n) for name, n in rows}

    def matching_ids(self, label: int | None = None, view: str | None = None, finding: str | None = None,
                     side: str | None = None) -> np.ndarray:
        """Sorted row ids passing every given filter (``None`` means no constraint).

        View and finding match case-insensitively; ``finding`` is a vocabulary name (data.findings)
        or a source heading that maps to one. ``side`` (with a finding) keeps studies whose finding
        covers that side: "left" matches left and bilateral, "bilateral" only bilateral. Results
        are cached: the app offers a handful of filter combinations and the store never changes.
        """
        key = (label, view.upper() if view else None, canonical_name(finding) if finding else None,
               check_side(side, finding))
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
        if key[2] is not None and key[3] is None:
            sql += " AND row_id IN (SELECT row_id FROM item_findings WHERE finding = ?)"
            params.append(key[2])
        elif key[2] is not None:
            sql += " AND row_id IN (SELECT row_id FROM item_findings WHERE finding = ? AND side IN (?, ?))"
            params += [key[2], key[3], BILATERAL]
        ids = np.array([r[0] for r in self._query(sql + " ORDER BY row_id", params)], dtype=np.int64)
        self._filter_cache[key] = ids
        return ids
