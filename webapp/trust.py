"""How the page shows a familiarity verdict (trust.familiarity): the badge beside the query,
the status line above the results, the star's label on the embedding map."""
from __future__ import annotations

import html
from typing import Any

from trust.familiarity import FAMILIAR, NOT_RADIOGRAPH, UNLIKE_INDEX

TITLES = {FAMILIAR: "Familiar input", UNLIKE_INDEX: "Unlike the indexed studies", NOT_RADIOGRAPH: "Not a chest radiograph"}
DECIDED_BY = {"pixels": "the pixel checks", "radiograph_model": "the radiograph check",
              "index_distance": "the distance to the indexed studies", "text": "the text check"}
SHORT = {FAMILIAR: "familiar", UNLIKE_INDEX: "unlike the index", NOT_RADIOGRAPH: "not a radiograph"}
CSS = """
.cxr-verdict {border-radius: 6px; padding: 6px 10px; margin: 4px 0; font-size: .95em;}
.cxr-verdict-familiar {background: #e8f5e9; border: 1px solid #2e7d32;}
.cxr-verdict-unlike_index {background: #fff8e1; border: 1px solid #f9a825;}
.cxr-verdict-not_radiograph {background: #ffebee; border: 1px solid #c62828;}
"""


def verdict_html(familiarity: dict[str, Any] | None) -> str:
    """The badge shown next to the query preview (empty when the index has no familiarity model)."""
    if not familiarity:
        return ""
    name = familiarity.get("verdict", "")
    pct = familiarity.get("percentile")
    detail = f" · farther than {pct:.0f}% of indexed studies" if isinstance(pct, (int, float)) and name != NOT_RADIOGRAPH else ""
    by = familiarity.get("decided_by") or ""
    if name == NOT_RADIOGRAPH and by in DECIDED_BY:
        detail = f" · decided by {DECIDED_BY[by]}"
    message = familiarity.get("message") or ""
    return (f"<div class='cxr-verdict cxr-verdict-{html.escape(name)}' data-verdict='{html.escape(name)}' "
            f"data-decided-by='{html.escape(by)}'>"
            f"<b>{html.escape(TITLES.get(name, name))}</b>{html.escape(detail)}"
            f"{'<br>' + html.escape(message) if message else ''}</div>")


def verdict_of(records: dict[str, Any] | None) -> str:
    """verdict_html of an endpoint's JSON records (chained after each search in app.py)."""
    return verdict_html((records or {}).get("familiarity"))


def trusted(familiarity: Any) -> bool:
    """Whether a result is shown as trusted: no familiarity model, or a verdict that allows it."""
    return familiarity is None or familiarity.trusted


def warning_lines(familiarity: Any) -> list[str]:
    """Status warnings for a result that is shown but not trusted."""
    if familiarity is None or familiarity.verdict == FAMILIAR:
        return []
    return [familiarity.message]


def star_label(label: str, familiarity: dict[str, Any] | None) -> str:
    """Hover text of the embedding map's query star: the query and its verdict."""
    if not familiarity:
        return label
    return f"{label} ({SHORT.get(familiarity.get('verdict', ''), familiarity.get('verdict', ''))})"
