"""Why this match: the findings a hit shares with the query, negation and side respected.

* Text query: the phrase's own findings (``data.findings_text.parse_phrase``). A positive
  finding is shared when the hit has it on a non-contradicting side (``side_credit`` >= 0.5);
  a negated one ("no pneumothorax") is honoured when the hit does *not* have it.
* Image query: the query has no report, so its findings are the consensus of its nearest
  neighbours: a finding (with the side most neighbours give it) seen in at least half of them.
  "Normal" is a consensus too, when at least half the neighbours are normal.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from data.findings import BILATERAL, Finding, findings_from_tags, profile, side_credit
from data.findings_text import ParsedPhrase

CONSENSUS_SHARE = 0.5


@dataclass(frozen=True)
class QueryFindings:
    """What a query is taken to show or exclude."""

    positive: tuple[Finding, ...]
    negated: tuple[Finding, ...] = ()
    normal: bool = False
    source: str = "phrase"  # "phrase" | "neighbours" | "phrase+neighbours"

    def describe(self) -> str:
        words = [f.text for f in self.positive] + [f.text for f in self.negated]
        if self.normal and not self.positive:
            words.insert(0, "normal")
        return ", ".join(words) or "no recognised finding"


def from_phrase(parsed: ParsedPhrase) -> QueryFindings:
    return QueryFindings(parsed.positive, parsed.negated, parsed.normal, "phrase")


def consensus(neighbour_tags: Sequence[Sequence[str]], share: float = CONSENSUS_SHARE) -> QueryFindings:
    """Findings seen in at least ``share`` of the neighbours, each with its most common side."""
    n = len(neighbour_tags)
    if n == 0:
        return QueryFindings((), (), False, "neighbours")
    names: Counter[str] = Counter()
    sides: dict[str, Counter[str]] = {}
    normals = 0
    for tags in neighbour_tags:
        prof = profile(findings_from_tags(tags))
        normals += not prof
        for name, covered in prof.items():
            names[name] += 1
            sides.setdefault(name, Counter())[_side_word(covered)] += 1
    positive = tuple(Finding(name=name, side=sides[name].most_common(1)[0][0])
                     for name, count in names.most_common() if count >= share * n)
    return QueryFindings(positive, (), normals >= share * n and not positive, "neighbours")


def shared_with(query: QueryFindings, hit_tags: Iterable[str]) -> list[str]:
    """Human phrases for what the hit has in common with the query, e.g. ["left pleural effusion",
    "no pneumothorax (as asked)"]; empty when nothing is shared."""
    hit = profile(findings_from_tags(hit_tags))
    out: list[str] = []
    for f in query.positive:
        if f.name in hit and side_credit(f.sides, hit[f.name]) >= 0.5:
            side = _side_word(hit[f.name])
            out.append(" ".join(w for w in (side, f.name) if w))
    for f in query.negated:
        if f.name not in hit:
            out.append(f"no {f.name} (as asked)")
    if query.normal and not query.positive and not hit:
        out.append("normal")
    return out


def conflicts_with(query: QueryFindings, hit_tags: Iterable[str]) -> list[str]:
    """What the hit has against the query: a finding asked *without*, or one on the opposite side."""
    hit = profile(findings_from_tags(hit_tags))
    out = [f"has {f.name} (asked without)" for f in query.negated if f.name in hit]
    for f in query.positive:
        if f.name in hit and side_credit(f.sides, hit[f.name]) < 0.5:
            out.append(f"{f.name} on the {_side_word(hit[f.name])} side (asked {f.side})")
    return out


def _side_word(sides: frozenset[str]) -> str:
    if len(sides) == 2:
        return BILATERAL
    return next(iter(sides)) if sides else ""


def why_rows(query: QueryFindings, hits: Sequence) -> list[dict[str, object]]:
    """Per hit: rank, study id, shared findings, conflicts (JSON-ready; hits need rank, study_id, tags)."""
    return [{"rank": h.rank, "study_id": h.study_id, "shared": shared_with(query, h.tags),
             "conflicts": conflicts_with(query, h.tags)} for h in hits]


def why_html(query: QueryFindings, hits: Sequence, trusted: bool = True) -> str:
    """A compact "why this match" table: what each hit shares with the query, and what it contradicts.
    ``trusted=False`` (an image unlike the indexed studies): the neighbours' consensus is shown as what they share,
    never as a reading of the image - poor matches would otherwise put findings on a film that has none."""
    import html

    if not hits:
        return ""
    if trusted:
        read = (f"query read as: <i>{html.escape(query.describe())}</i> "
                f"({html.escape(_SOURCES.get(query.source, query.source))})")
    else:
        read = (f"the nearest studies share: <i>{html.escape(query.describe())}</i>. This is <b>not a reading of the "
                "query image</b>: it is unlike the indexed studies, so these may be poor matches")
    head = (f"<div class='cxr-why'><b>Why these matches</b> — {read}"
            "<table><tr><th>#</th><th>study</th><th>shares with the query</th><th>against it</th></tr>")
    rows = []
    for row in why_rows(query, hits):
        shared = ", ".join(html.escape(s) for s in row["shared"]) or "—"
        against = ", ".join(html.escape(s) for s in row["conflicts"]) or "—"
        rows.append(f"<tr><td>{row['rank']}</td><td>{html.escape(str(row['study_id']))}</td>"
                    f"<td>{shared}</td><td>{against}</td></tr>")
    return head + "".join(rows) + "</table></div>"


_SOURCES = {"phrase": "from the phrase", "neighbours": "consensus of the nearest studies' findings",
            "neighbours+phrase": "nearest studies' consensus, modified by the phrase"}
