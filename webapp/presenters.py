"""Turn search hits into what the page shows: gallery captions and report cards.

All report text is HTML-escaped before any markup is added, so a report or query holding
``<script>`` is shown as text, never run. A negated mention ("No effusion") is marked as a
negation (``<mark class="neg">``, struck through and grey), never as a hit (``webapp.negation``).
"""
from __future__ import annotations

import html
import re
from functools import lru_cache
from typing import Any, Iterable, Sequence

from webapp.negation import negated

SIDES = ("left", "right", "bilateral")
_STOP = {"the", "a", "an", "of", "and", "or", "with", "in", "on", "at", "to", "is", "are", "no", "not", "there",
         "small", "large", "mild", "moderate", "severe", "lung", "lungs", "chest", "seen", "present", "evidence"}


# Status prefixes in words, not emoji: a browser without an emoji font draws those as empty boxes.
OK, WARNING, ERROR, NOTE = "**OK:**", "**Warning:**", "**Error:**", "**Note:**"
REFUSED = "**Not searched:**"  # a query refused by the familiarity check (not a radiograph)


def status_markdown(headline: str, notes: Sequence[str], warnings: Sequence[str] = (),
                    trusted: bool = True) -> str:
    """A search's status line and its bullets; ``trusted=False`` (a query unlike the index) heads the results with a
    warning, not an OK."""
    return "\n".join([f"{OK if trusted else WARNING} {headline}", *(f"- {WARNING} {w}" for w in warnings),
                      *(f"- {NOTE} {n}" for n in notes)])


def refused_status(message: str) -> str:
    """The status of an image the familiarity check refused (every tab that takes an image says it alike)."""
    return f"{REFUSED} {message} No search was run."


def badge(label_name: str) -> str:
    """The study's label as a word; report cards colour it with CSS (``.cxr-badge``)."""
    return "abnormal" if label_name == "abnormal" else "normal"


PREVIEW_SIDE = 512  # the page shows the query at 260 px high: a larger copy only costs its encoding


def preview(image: Any, side: int = PREVIEW_SIDE) -> Any:
    """The query image as the page shows it: at most ``side`` px (issue 26: gradio re-encodes the
    preview on every query, ~0.3 s of CPU for a 2048-px film). The search used the full image."""
    if image is None or max(image.size) <= side:
        return image
    small = image.copy()
    small.thumbnail((side, side))
    return small


def gallery_caption(hit: Any) -> str:
    return f"#{hit.rank} · {hit.study_id} · {badge(hit.label_name)} · sim {hit.score:.2f}"


def query_terms(query: str, vocabulary: Iterable[str]) -> list[str]:
    """Finding terms a typed query names: vocabulary entries it contains, their head words, and sides."""
    q = query.lower()
    terms: list[str] = []
    for name in vocabulary:
        if name and re.search(rf"\b{re.escape(name)}\b", q):
            terms.append(name)
    for word in re.findall(r"[a-z]{4,}", q):
        if word not in _STOP:
            terms.append(word)
    terms += [s for s in SIDES if re.search(rf"\b{s}\b", q)]
    return _dedupe(terms)


def hit_terms(finding_names: Sequence[str], tags: Sequence[str]) -> list[str]:
    """Terms to highlight in a retrieved report: its own findings, their head words and sides."""
    terms: list[str] = []
    for name in finding_names:
        terms.append(name)
        terms += [w for w in re.findall(r"[a-z]{4,}", name) if w not in _STOP]
    for tag in tags:
        terms += [part.strip().lower() for part in tag.split("/")[1:] if part.strip().lower() in SIDES]
    return _dedupe(terms)


HIGHLIGHT_CACHE = 8192  # (report text, terms) pairs: a few MB of HTML
NEGATED_MARK = '<mark class="neg" title="negated in the report">'


def _with_plural(term: str) -> str:
    """Regex for ``term`` and its English plural (effusion(s), opacity/opacities), as reports write both."""
    if term.endswith("y") and len(term) > 3 and term[-2] not in "aeiou":
        return re.escape(term[:-1]) + "(?:y|ies)"
    return re.escape(term) + "(?:e?s)?"


def highlight(text: str, terms: Sequence[str]) -> str:
    """Escape ``text`` and wrap each occurrence of any term in <mark> (longest terms first);
    occurrences the report negates ("No pleural effusion") get ``<mark class="neg">`` instead.

    Memoised on (text, terms): the negation detector costs about a millisecond a report, and the
    same study comes back with the same terms query after query (an image hit's terms are its
    own findings; a typed query's terms repeat with the query). The result is a pure function
    of its inputs, so a cached answer is the answer."""
    return highlight_words(text or "", tuple(sorted({t for t in terms if t and t.strip()}, key=lambda t: (-len(t), t))))


@lru_cache(maxsize=HIGHLIGHT_CACHE)
def highlight_words(text: str, words: tuple[str, ...]) -> str:
    if not words:
        return html.escape(text)
    # Match on the raw text and escape each piece: matching escaped text could split an
    # entity ("&quot;" contains the word "quot") and never sees the characters the user sees.
    pattern = re.compile(r"\b(" + "|".join(_with_plural(w) for w in words) + r")\b", re.IGNORECASE)
    matches = list(pattern.finditer(text))
    flags = negated(text, [m.span() for m in matches])
    out, last = [], 0
    for match, is_negated in zip(matches, flags):
        out.append(html.escape(text[last:match.start()]))
        out.append(f"{NEGATED_MARK if is_negated else '<mark>'}{html.escape(match.group(0))}</mark>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def report_cards(hits: Sequence[Any], terms_for_hit) -> str:
    """HTML report cards for ranked hits; ``terms_for_hit(hit)`` picks the terms to highlight."""
    if not hits:
        return "<p class='cxr-empty'>No matching studies. Try removing a filter.</p>"
    cards = []
    for hit in hits:
        terms = terms_for_hit(hit)
        tags = ", ".join(html.escape(t) for t in hit.tags) or "—"
        cards.append(
            f"<div class='cxr-card cxr-{hit.label_name}'>"
            f"<div class='cxr-card-head'><b>#{hit.rank} {html.escape(hit.study_id)}</b>"
            f"<span class='cxr-badge'>{badge(hit.label_name)}</span>"
            f"<span class='cxr-score'>similarity {hit.score:.3f}</span>"
            f"{'<span class=cxr-view>' + html.escape(hit.view) + '</span>' if hit.view else ''}</div>"
            f"<p><b>Findings:</b> {highlight(hit.findings, terms) or '—'}</p>"
            f"<p><b>Impression:</b> {highlight(hit.impression, terms) or '—'}</p>"
            f"<p class='cxr-tags'>Tags: {tags}</p></div>"
        )
    return "\n".join(cards)


def hits_as_records(hits: Sequence[Any]) -> list[dict[str, Any]]:
    """Plain JSON records of hits (``Hit.to_dict``, with structured findings): what the named API
    endpoints return to scripts."""
    return [h.to_dict() for h in hits]


def _dedupe(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
