"""The findings each indexed report's *text* states, stored beside the study, and the structured channel.

Why stored at index time: reading a report (sentence parser + NegEx, ``data.report_findings``)
costs ~3 ms, far too slow per query over thousands of studies; a table answers in a few. The
tables live in the index's SQLite metadata (``index.store``), so both vector backends (hnswlib
and Milvus, whose metadata store is rebuilt from the same studies) have them. They are built
from ``Study.report_text`` only, never from the tags: tags stay the evaluation's relevance truth.

Structured channel (:func:`structured_ranking`): the parsed query against each report's findings.
Per positive query finding: same side (or a query without side) = full match 1; bilateral or
unstated side where one side was asked, or one side where bilateral was asked = partial 0.5;
the opposite side only = none. A size asked and not stated in the report, or a hedged mention
("possible effusion"), lowers the grade. A report's grade is the mean over the query's positive
findings. A *negated* query finding ("no pleural effusion") excludes every report asserting it
(:func:`excluded`); with no positive finding, reports that say it is absent rank first. A normal
wording ranks reports that assert no finding.
"""
from __future__ import annotations

import sqlite3
from typing import Callable, Iterable, Sequence

from data.findings import BILATERAL, LEFT, NEGATIVE, POSITIVE, RIGHT, UNCERTAIN, Finding
from data.findings_text import ParsedPhrase
from data.records import Study
from data.report_findings import affirmed_text, report_findings
from index.fusion import Ranking

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    row_id      INTEGER PRIMARY KEY REFERENCES items(row_id),
    n_positive  INTEGER NOT NULL   -- findings the report asserts or hedges (0: a normal report)
);
CREATE TABLE IF NOT EXISTS report_findings (
    row_id    INTEGER NOT NULL REFERENCES items(row_id),
    finding   TEXT NOT NULL,       -- vocabulary name (data.findings), read from the report text
    side      TEXT NOT NULL,       -- 'left' | 'right' | 'bilateral' | ''
    severity  TEXT NOT NULL,       -- 'mild' | 'moderate' | 'severe' | ''
    certainty TEXT NOT NULL        -- 'positive' | 'negative' | 'uncertain'
);
CREATE INDEX IF NOT EXISTS idx_report_findings ON report_findings(finding, row_id);
-- BM25 over the report minus its negated segments (index.lexical); rowid = items.row_id
CREATE VIRTUAL TABLE IF NOT EXISTS report_text USING fts5(affirmed, tokenize = 'porter unicode61');
"""
SIZE_MISMATCH = 0.8  # a size asked ("small") that the report does not state
HEDGED = 0.5  # "possible effusion" is half an assertion
OPPOSITE = {LEFT: RIGHT, RIGHT: LEFT}

Query = Callable[..., list[tuple]]  # the metadata store's read-only SQL: MetadataStore.read(sql, params, memo=False)


def write_reports(conn: sqlite3.Connection, rows: Iterable[tuple[int, Study]]) -> None:
    """Read each study's report text and insert its findings and lexical text (inside the caller's
    transaction). Studies without report text get no rows: only the dense channel reaches them."""
    conn.executescript(SCHEMA)
    for row_id, study in rows:
        text = study.report_text
        if not text.strip():
            continue
        found = report_findings(text)
        conn.execute("INSERT INTO reports (row_id, n_positive) VALUES (?, ?)",
                     (row_id, sum(f.certainty != NEGATIVE for f in found)))
        conn.executemany("INSERT INTO report_findings VALUES (?, ?, ?, ?, ?)",
                         [(row_id, f.name, f.side, f.severity, f.certainty) for f in found])
        conn.execute("INSERT INTO report_text (rowid, affirmed) VALUES (?, ?)", (row_id, affirmed_text(text)))


def count_reports(read: Query) -> int:
    """How many indexed studies have a report (0 for an index built before report search)."""
    try:
        return int(read("SELECT COUNT(*) FROM reports", (), memo=True)[0][0])
    except sqlite3.OperationalError:
        return 0


def _rows_for(read: Query, names: Sequence[str], allowed: set[int] | None, asserted: bool = True) -> list[tuple]:
    """The reports' mentions of ``names`` (``asserted``: positive or hedged only); where a report
    states a finding with a side, its unsided mentions of it ("This pneumothorax measures ...")
    refer back to that one and are dropped."""
    rows = read(f"SELECT row_id, finding, side, severity, certainty FROM report_findings "
                f"WHERE finding IN ({','.join('?' * len(names))})" + (" AND certainty != 'negative'" if asserted else ""),
                list(names), memo=True)  # the same few finding names, query after query
    rows = [r for r in rows if allowed is None or r[0] in allowed]
    sided = {(r[0], r[1]) for r in rows if r[2] and r[4] != NEGATIVE}
    return [r for r in rows if r[2] or r[4] == NEGATIVE or (r[0], r[1]) not in sided]


def side_match(asked: str, stated: str) -> float:
    """1 same side (or none asked), 0.5 bilateral / unstated vs one side, 0 the opposite side only."""
    if not asked or asked == stated:
        return 1.0
    if stated == "" or BILATERAL in (asked, stated):
        return 0.5
    return 0.0


def _grade(q: Finding, side: str, severity: str, certainty: str) -> float:
    grade = side_match(q.side, side)
    if q.severity and severity != q.severity:
        grade *= SIZE_MISMATCH
    return grade * (HEDGED if certainty == UNCERTAIN else 1.0)


def excluded(read: Query, parsed: ParsedPhrase) -> set[int]:
    """Reports that contradict the query: they assert a finding it negates ("no pleural effusion"),
    or they state a finding it asks for on one side only on the opposite side (and nowhere else)."""
    out: set[int] = set()
    names = sorted({f.name for f in parsed.negated})
    if names:
        out |= {r[0] for r in _rows_for(read, names, None) if r[4] == POSITIVE}
    sided = {f.name: f.side for f in parsed.positive if f.side in (LEFT, RIGHT)}
    if sided:
        stated: dict[tuple[int, str], set[str]] = {}
        for row_id, name, side, _, _ in _rows_for(read, sorted(sided), None):
            stated.setdefault((row_id, name), set()).add(side)
        out |= {row_id for (row_id, name), sides in stated.items() if sides == {OPPOSITE[sided[name]]}}
    return out


def structured_ranking(read: Query, parsed: ParsedPhrase, allowed: set[int] | None = None) -> Ranking:
    """Reports graded against the parsed query, best first (grades tie; see ``index.fusion``)."""
    grades: dict[int, float] = {}
    if parsed.positive:
        best: dict[tuple[int, int], float] = {}
        wanted = list(parsed.positive)
        for row_id, name, side, severity, certainty in _rows_for(read, sorted({f.name for f in wanted}), allowed):
            for i, q in enumerate(wanted):
                if q.name == name:
                    best[(row_id, i)] = max(best.get((row_id, i), 0.0), _grade(q, side, severity, certainty))
        for (row_id, _), g in best.items():
            grades[row_id] = grades.get(row_id, 0.0) + g / len(wanted)
    elif parsed.negated:
        names = sorted({f.name for f in parsed.negated})
        drop = excluded(read, parsed)
        said_absent = {r[0] for r in _rows_for(read, names, allowed, asserted=False) if r[4] == NEGATIVE}
        for (row_id,) in read("SELECT row_id FROM reports", (), memo=True):
            if (allowed is None or row_id in allowed) and row_id not in drop:
                grades[row_id] = 1.0 if row_id in said_absent else 0.5
    elif parsed.normal:
        for (row_id,) in read("SELECT row_id FROM reports WHERE n_positive = 0", (), memo=True):
            if allowed is None or row_id in allowed:
                grades[row_id] = 1.0
    items = sorted((g, -r) for r, g in grades.items() if g > 0)[::-1]
    return Ranking([-r for _, r in items], [g for g, _ in items])

