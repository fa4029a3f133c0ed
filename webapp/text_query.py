"""The text tab's view of how a query was understood: parse chips, the side filter, and which
search found each hit.

Why: the hybrid search acts on the parse (side, size, "no X"), so the user must see it; a
misread phrase is then visible at once ("pleural effusion · left · small", "excluding pleural
effusion"), and a phrase the parser cannot read says that it ran on image similarity alone.
"""
from __future__ import annotations

import html
import re
from typing import Any, Sequence

from data.findings import BILATERAL, LEFT, NEGATIVE, RIGHT, Finding, side_credit
from data.report_findings import parse_query, segments
from index.hybrid import LEXICAL, STRUCTURED, understood
from webapp.queries import QueryError

SIDES = ("any", LEFT, RIGHT, BILATERAL)
MODES = ("hybrid", "dense")
_SIZE_WORDS = ("small", "large", "mild", "moderate", "severe", "minimal", "trace", "tiny", "massive")
CSS = """
.cxr-chips {display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0;}
.cxr-chip {border-radius: 12px; padding: 1px 10px; font-size: .9em; background: #e3f2fd; color: #0d47a1;}
.cxr-chip.cxr-neg {background: #fce4ec; color: #880e4f;} .cxr-chip.cxr-none {background: #eeeeee; color: #424242;}
"""


def _size_word(query: str, finding: Finding) -> str:
    """The size as the user wrote it ("small", not the vocabulary's "mild")."""
    if not finding.severity:
        return ""
    words = [w for w in _SIZE_WORDS if re.search(rf"\b{w}\b", query.lower())]
    return words[0] if words else finding.severity


def chips(query: str, mode: str) -> list[tuple[str, str]]:
    """(kind, text) per chip: ``("finding", "pleural effusion · left · small")``,
    ``("negated", "excluding pleural effusion")``, ``("normal", "normal study")`` or one
    ``("none", ...)`` chip when the parser reads nothing (the search then ran dense)."""
    if not str(query or "").strip():
        return []
    parsed = parse_query(query)
    out = [("finding", " · ".join(w for w in (f.name, f.side, _size_word(query, f)) if w)
            + (" (possible)" if f.certainty == "uncertain" else "")) for f in parsed.findings if f.certainty != "negative"]
    out += [("negated", f"excluding {f.name}") for f in parsed.negated]
    if parsed.normal and not parsed.findings:
        out.append(("normal", "normal study"))
    if not understood(parsed):
        out.append(("none", "no finding recognised: image similarity only (dense)"))
    elif mode == "dense":
        out.append(("none", "dense mode: the parse explains the results, it does not rank them"))
    return out


def chips_html(query: str | None, mode: str | None = "hybrid") -> str:
    """The chips as HTML under the text box (empty before a query)."""
    items = chips(query or "", mode or "hybrid")
    if not items:
        return ""
    cls = {"negated": "cxr-chip cxr-neg", "none": "cxr-chip cxr-none"}
    spans = "".join(f"<span class='{cls.get(kind, 'cxr-chip')}' data-kind='{kind}'>{html.escape(text)}</span>"
                    for kind, text in items)
    return f"<div class='cxr-chips' data-testid='parse-chips'>Read as: {spans}</div>"


def with_side(filters: dict[str, Any], side: Any, query: str) -> dict[str, Any]:
    """Add the side filter; its finding is the Finding filter's, else the query's first sided finding."""
    value = str(side or "any").strip().lower()
    if value not in SIDES:
        raise QueryError(f"Unknown side {side!r}; choose one of: {', '.join(SIDES)}.")
    if value == "any":
        return filters
    finding = filters.get("finding")
    if not finding:
        asked = parse_query(query).positive
        finding = asked[0].name if asked else None
    if not finding:
        raise QueryError("The side filter needs a finding: name one in the phrase or choose it under Finding.")
    return {**filters, "finding": finding, "side": value}


def check_mode(mode: Any, default: str) -> str:
    value = str(mode or default).strip().lower()
    if value not in MODES:
        raise QueryError(f"Unknown search mode {mode!r}; choose hybrid or dense.")
    return value


def found_by(query: str, hit: Any) -> str:
    """Why-this-match naming the channel: "report says …" and/or "image similar"."""
    parts = []
    if LEXICAL in hit.channels or STRUCTURED in hit.channels:
        said = report_quotes(query, hit.study.report_text)
        parts.append("report says " + " … ".join(f"“{q}”" for q in said) if said else "report matches the words")
    if "dense" in hit.channels:
        parts.append("image similar to the phrase")
    return "; ".join(parts) or "—"


_LEAD = re.compile(r"^(?:(?:findings|impression|conclusion)\s*:\s*|\d+[.)]\s+)+", re.IGNORECASE)  # headers, list numbers


def report_quotes(query: str, report: str, limit: int = 2, width: int = 90) -> list[str]:
    """The report's own words (scope segments, as written) that assert a finding the query asks for
    on a matching side: what a clinician checks, not the vocabulary's normalised name."""
    asked = {f.name: f for f in parse_query(query).positive}
    quotes = [seg.written or seg.text for seg in segments(report)
              if any(f.name in asked and f.certainty != NEGATIVE and side_credit(asked[f.name].sides, f.sides) >= 0.5
                     for f in seg.findings)]
    quotes = [_LEAD.sub("", q).rstrip(" ,;:.") for q in quotes]
    return [q if len(q) <= width else q[:width - 1].rstrip() + "…" for q in dict.fromkeys(quotes)][:limit]


def found_by_html(query: str, hits: Sequence[Any]) -> str:
    """One line per hit: which search found it and what the report says."""
    if not hits:
        return ""
    rows = "".join(f"<tr><td>{h.rank}</td><td>{html.escape(h.study_id)}</td><td>{html.escape(found_by(query, h))}</td></tr>"
                   for h in hits)
    return ("<div class='cxr-found-by'><b>How each match was found</b><table><tr><th>#</th><th>study</th>"
            f"<th>found by</th></tr>{rows}</table></div>")

