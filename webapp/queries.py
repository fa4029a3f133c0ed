"""Validation of what the user typed or picked: what the model gets, and what the user is told.

Every check either cleans the input and adds a note saying what changed, or raises
``QueryError`` with a sentence the page can show as is. Nothing here echoes the user's text
back into a message, so no message can carry markup the user typed.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

# A hard guard against pasted documents (the tokenizer's context is far shorter and is
# reported separately): beyond this, characters are dropped before tokenizing.
MAX_QUERY_CHARS = 20_000
MAX_K = 100
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LABEL_CHOICES = ("any", "normal", "abnormal")


class QueryError(ValueError):
    """A query that cannot be searched; the message is shown to the user."""


def clean_query(text: str | None) -> tuple[str, list[str]]:
    """Normalised query text and notes about what was changed. Raises QueryError if nothing is left."""
    notes: list[str] = []
    if text is not None and not isinstance(text, str):
        raise QueryError("The query must be text.")
    cleaned = unicodedata.normalize("NFC", text or "")
    without_controls = _CONTROL.sub(" ", cleaned)
    # Invisible format characters (bidi overrides, zero-width spaces) can disguise text.
    without_controls = "".join(" " if unicodedata.category(ch) == "Cf" else ch for ch in without_controls)
    if without_controls != cleaned:
        notes.append("Control and invisible formatting characters were removed from the query.")
    cleaned = re.sub(r"\s+", " ", without_controls).strip()
    if not cleaned:
        raise QueryError("Please type a findings phrase, for example “small left pleural effusion”.")
    if len(cleaned) > MAX_QUERY_CHARS:
        notes.append(f"The query was {len(cleaned):,} characters long and was truncated to its first {MAX_QUERY_CHARS:,}.")
        cleaned = cleaned[:MAX_QUERY_CHARS].rstrip()
    if _mostly_non_latin(cleaned):
        notes.append("The text model was trained on English reports; a query in another script will match poorly.")
    return cleaned, notes


def _mostly_non_latin(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return False
    latin = sum(unicodedata.name(ch, "").startswith("LATIN") for ch in letters)
    return latin < len(letters) / 2


def parse_k(k: Any, default: int = 8) -> tuple[int, list[str]]:
    """Number of results from a slider or an API call: a whole number in [1, MAX_K]."""
    if k is None or (isinstance(k, str) and not k.strip()):
        return default, []
    try:
        value = float(k)
    except (TypeError, ValueError):
        raise QueryError(f"The number of results must be a whole number between 1 and {MAX_K}.") from None
    if not math.isfinite(value):
        raise QueryError(f"The number of results must be a whole number between 1 and {MAX_K}.")
    clipped = min(MAX_K, max(1, int(round(value))))
    notes = [] if clipped == value else [f"The number of results was set to {clipped} (allowed: 1 to {MAX_K})."]
    return clipped, notes


def parse_choice(value: Any, allowed: list[str] | tuple[str, ...], what: str) -> str:
    """A dropdown value (label, view, finding) that must be one of the offered choices."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "any")):
        return "any"
    if isinstance(value, str):
        wanted = value.strip()
        for choice in allowed:
            if choice.lower() == wanted.lower():
                return choice
    raise QueryError(f"Unknown {what} filter; pick one of the listed choices (or “any”).")
