"""Validation of typed queries: what the text tower gets, and what the user is told about it."""
from __future__ import annotations

import re
import unicodedata

MAX_QUERY_CHARS = 1000  # far beyond any findings phrase; the tokenizer cuts sooner anyway
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class QueryError(ValueError):
    """A query that cannot be searched; the message is shown to the user."""


def clean_query(text: str | None) -> tuple[str, list[str]]:
    """Normalised query text and notes about what was changed. Raises QueryError if nothing is left."""
    notes: list[str] = []
    raw = text or ""
    cleaned = unicodedata.normalize("NFC", raw)
    if _CONTROL.search(cleaned):
        cleaned = _CONTROL.sub(" ", cleaned)
        notes.append("Control characters were removed from the query.")
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    if not cleaned:
        raise QueryError("Please type a findings phrase, for example “small left pleural effusion”.")
    if len(cleaned) > MAX_QUERY_CHARS:
        notes.append(f"The query was {len(cleaned):,} characters; only the first {MAX_QUERY_CHARS:,} were used.")
        cleaned = cleaned[:MAX_QUERY_CHARS]
    return cleaned, notes
