"""Lexical channel of the hybrid text search: BM25 over the indexed reports with SQLite FTS5.

Why FTS5: it ships with Python's sqlite3 (no server, no new dependency), lives in the same
metadata file as the rest of the index, and ranks by BM25 (``bm25()``, lower = better). The
indexed text is each report minus its negated segments (``data.report_findings.affirmed_text``),
and the query keeps only the words of what it asks *for*: "small left pleural effusion, no
pneumothorax" searches ``small OR left OR pleural OR effusion``; a report saying "no pleural
effusion" is not a lexical match. The porter stemmer matches "effusions" to "effusion".
"""
from __future__ import annotations

import re
import sqlite3

from data.findings_text import ParsedPhrase
from index.fusion import Ranking
from index.report_findings import Query

DEPTH = 100  # lexical hits fused; BM25 past this depth adds < 1/160 per item under RRF
_WORD = re.compile(r"[a-z]+")
_STOP = frozenset("a an and are as at be by for from in is it of on or the there this to was were with "
                  "lung lungs chest seen noted evidence".split())
_NEGATORS = frozenset("no not without negative free absent resolved".split())


def query_terms(text: str, parsed: ParsedPhrase) -> list[str]:
    """The words to search: the query's own words minus stop words, negation words and the words of
    findings it negates, plus the vocabulary names of the findings it asks for."""
    negated_words = {w for f in parsed.negated for w in _WORD.findall(f.name)}
    asked_words = {w for f in parsed.positive for w in _WORD.findall(f.name)}
    words = [w for w in _WORD.findall(str(text).lower())
             if w not in _STOP and w not in _NEGATORS and (w not in negated_words or w in asked_words)]
    for w in sorted(asked_words):
        if w not in words:
            words.append(w)
    return list(dict.fromkeys(words))


def lexical_ranking(read: Query, text: str, parsed: ParsedPhrase, allowed: set[int] | None = None,
                    depth: int = DEPTH) -> Ranking:
    """Reports ranked by BM25 for the query's asked-for words (a normal wording's own words: "lungs
    are clear"); empty when it only negates."""
    if not parsed.positive and not parsed.normal:
        return Ranking([])
    terms = query_terms(text, parsed)
    if not terms:
        return Ranking([])
    match = " OR ".join(f'"{t}"' for t in terms)
    limit = depth if allowed is None else depth * 4  # filtered: fetch deeper, then keep the allowed
    try:
        rows = read("SELECT rowid, bm25(report_text) FROM report_text WHERE report_text MATCH ? "
                    "ORDER BY bm25(report_text) LIMIT ?", (match, limit))
    except sqlite3.OperationalError:  # an index without report tables
        return Ranking([])
    rows = [r for r in rows if allowed is None or r[0] in allowed][:depth]
    return Ranking([int(r[0]) for r in rows], [-float(r[1]) for r in rows])
