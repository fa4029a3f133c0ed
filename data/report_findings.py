"""A report's own text -> the findings it asserts, negates or hedges (with side and size).

Why from the text and not the tags: the hybrid text search (index.hybrid) must rank studies by
what their *report says*, so that tags stay an independent relevance truth for evaluation (and
so that studies indexed without tags still have findings). Two tools, each where it is strong:

- the phrase parser (``data.findings_text``) names the findings of each sentence with their side,
  zone and size; it is run per *scope segment* (a sentence cut at "but", "with", "however", ";"),
  so "no cardiomegaly with bilateral small pleural effusions" keeps the effusions positive;
- NegEx (``data.negation``, the detector the report view highlights with) decides negation over
  the segment, because its scope crosses commas and "or" ("no focal consolidation, effusion, or
  pneumothorax" negates all three) where the parser's clauses do not.

A finding is *negated* when either says so, *uncertain* when the parser reads a hedge
("possible", "likely"), else *positive*. :func:`affirmed_text` is the report without its negated
segments: what the lexical channel (index.lexical) indexes, so "no pleural effusion" does not
match a query for "pleural effusion" (polarity is what dense and plain BM25 are blind to).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from data.findings import LATERAL, LEFT, NEGATIVE, POSITIVE, UNCERTAIN, Finding
from data.findings_text import ParsedPhrase, parse_phrase, surface_forms
from data.negation import negated

# Sentence ends, also where the full stop lacks its space ("Heart size normal.No effusion").
_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[a-z][.!?])(?=[A-Z])|\n+")
# Scope breaks; "without" opens a new (negated) segment instead of negating what precedes it
# ("Stable cardiomegaly without acute abnormality"). "consistent / compatible with" is no break: what
# follows names the same finding ("Right middle lobe infiltrate consistent with pneumonia": a right one).
_SCOPE_BREAK = re.compile(r"\bbut\b|(?<!consistent )(?<!compatible )\bwith\b|\bwhile\b|\bhowever\b|\balthough\b|;"
                          r"|(?=\bwithout\b)", re.IGNORECASE)
# Report wordings the phrase vocabulary lacks, rewritten to its names before parsing.
_REWRITES = (
    (re.compile(r"\b(?:the )?(?:heart|heart size|cardiac silhouette|cardiac size)\s+(?:is |are |appears |remains )*"
                r"(?:(mild|moderate|marked|slight|borderline)(?:ly)? )?(?:enlarged|large)\b", re.IGNORECASE),
     r"\1 cardiomegaly"),
    (re.compile(r"\b(?:elevated |(?:relative )?elevation of (?:the )?)(left |right )?(?:hemi)?diaphragm\b", re.IGNORECASE),
     r"\1elevated diaphragm"),
    (re.compile(r"\b(left |right )?(?:hemi)?diaphragm (?:is |remains )?(?:mildly |slightly )?(?:elevated|elevation)\b",
                re.IGNORECASE), r"\1elevated diaphragm"),
    (re.compile(r"\b(?:dextro|levo)(?:scoliosis|curvature)\b|\bspine curvature\b|\bcurvature of the spine\b",
                re.IGNORECASE), "scoliosis"),
    (re.compile(r"\bvascular prominence\b|\bprominen(?:t|ce of the) (?:central )?(?:pulmonary )?vascul(?:ature|arity)\b",
                re.IGNORECASE), "congestion"),
    # "No change in the right apical scarring" reports a finding, it does not negate it
    (re.compile(r"\bno (?:significant |interval |appreciable )?change (?:in|of)\b", re.IGNORECASE), "unchanged"),
    (re.compile(r"\baorta (?:is |appears |remains )*(?:mildly |slightly )?tortuous\b|\btortuous (?:thoracic )?aorta\b",
                re.IGNORECASE), "tortuous aorta"),
    (re.compile(r"\bdegenerative changes\b", re.IGNORECASE), "degenerative change"),
    # a view's name, not a side: "right-sided pneumothorax only visible on the left lateral decubitus film"
    (re.compile(r"\b(?:left|right)[- ](?:lateral )?(decubitus|oblique)\b", re.IGNORECASE), r"\1"),
    (re.compile(r"\batherosclerotic (?:calcifications? (?:of|in) the (?:thoracic )?aorta|(?:thoracic )?aorta|changes|"
                r"(?:aortic |vascular )?calcifications?)\b", re.IGNORECASE), "atherosclerosis"),
)
# Bare anatomy the vocabulary maps to a finding ("aorta" -> aortic tortuosity): alone, such a word
# names a place, not a finding ("The aorta is normal", "scoliosis of the thoracic spine").
GENERIC_FORMS = frozenset({"aorta", "spine", "diaphragm"})
_NORMAL_WORDINGS = re.compile(r"\b(lungs are clear|no active disease|within normal limits|normal chest)\b", re.IGNORECASE)
_ATTRIBUTION = re.compile(r"\b(?:consistent|compatible) with\b", re.IGNORECASE)
# What an index's report findings were read with (recorded in its metadata: index.store). 2: "clearing of X"
# and "X has cleared" negate X; "X consistent with Y" gives Y the side of X; "left lateral decubitus" is a
# view, not a side. The demo's index is re-read when an older reader wrote it (pipeline.demo); a user's index
# keeps its reading until rebuilt (`python -m index info` says so). 3: the phrase parser's v2
# (data.findings_text.PARSER_VERSION: a negation carries over a list; "clear of", "ruled out", ... negate).
READER_VERSION = 3
REPORT_CACHE = 8192  # reports whose findings are kept (the demo has 3,955; ~1 kB each)
_FORM_PATTERNS = [(re.compile(rf"\b{re.escape(form)}\b"), name) for form, name in surface_forms()]


@dataclass(frozen=True)
class Segment:
    """One scope segment of a report and the findings it mentions (empty when it names none)."""

    text: str
    findings: tuple[Finding, ...]
    written: str = ""  # the words as the report has them (``text`` is after :func:`rewrite`)

    @property
    def all_negated(self) -> bool:
        return bool(self.findings) and all(f.certainty == NEGATIVE for f in self.findings)


@lru_cache(maxsize=REPORT_CACHE)
def segments(text: str) -> tuple[Segment, ...]:
    """The report cut into sentences, then at scope breaks, each with its findings (memoised like
    :func:`report_findings`: the text tab quotes the segments of every hit's report per query)."""
    out: list[Segment] = []
    for sentence in _SENTENCE.split(str(text or "")):
        for written in _SCOPE_BREAK.split(sentence):
            part = rewrite(written)
            if part.strip():
                out.append(Segment(part.strip(), _segment_findings(part.strip()), written.strip()))
    return tuple(out)


def rewrite(text: str) -> str:
    """Report wordings the phrase vocabulary lacks ("heart is enlarged", "elevated left hemidiaphragm")
    in its names; used for reports and typed queries alike."""
    for pattern, wording in _REWRITES:
        text = pattern.sub(wording, text)
    return text


def _specific(findings: tuple[Finding, ...], text: str, spans: list[tuple[int, int, str]]) -> tuple[Finding, ...]:
    """``findings`` minus those named only by a bare anatomy word (:data:`GENERIC_FORMS`)."""
    named = {name for start, end, name in spans if text[start:end].lower() not in GENERIC_FORMS}
    return tuple(f for f in findings if f.name in named)


@lru_cache(maxsize=512)
def parse_query(text: str) -> ParsedPhrase:
    """A typed query read like a report sentence: report wordings rewritten, bare anatomy words
    dropped, a finding in the retrocardiac zone taken as left, and a few more normal wordings."""
    text = rewrite(str(text or ""))
    parsed = parse_phrase(text)
    findings = tuple(replace(f, side=LEFT) if f.location == "retrocardiac" and not f.side else f
                     for f in _specific(parsed.findings, text, mention_spans(text)))
    normal = parsed.normal or (not findings and bool(_NORMAL_WORDINGS.search(text)))
    return ParsedPhrase(findings, normal)


def _segment_findings(part: str) -> tuple[Finding, ...]:
    parsed = parse_phrase(part)
    if not parsed.findings:
        return ()
    spans = mention_spans(part)
    parsed = ParsedPhrase(_specific(parsed.findings, part, spans), parsed.normal)
    flags = negated(part, [(start, end) for start, end, _ in spans])
    negated_names = {name for name in {n for _, _, n in spans}
                     if all(flag for (_, _, n), flag in zip(spans, flags) if n == name)}
    out = []
    for f in parsed.findings:
        if f.certainty != NEGATIVE and f.name in negated_names:
            f = replace(f, certainty=NEGATIVE)
        out.append(f)
    return _attributed_sides(tuple(out), part)


def _attributed_sides(findings: tuple[Finding, ...], part: str) -> tuple[Finding, ...]:
    """"X consistent with Y": Y is X, so a sided finding's side goes to the unsided (lateral) ones it is
    attributed to ("Right middle lobe infiltrate consistent with pneumonia" is a right pneumonia)."""
    if not _ATTRIBUTION.search(part):
        return findings
    sides = {f.side for f in findings if f.side and f.certainty != NEGATIVE}
    if len(sides) != 1:
        return findings
    side = sides.pop()
    return tuple(replace(f, side=side) if not f.side and f.certainty != NEGATIVE and f.name in LATERAL else f
                 for f in findings)


def mention_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, vocabulary name) of each finding mention, longest surface form first, no overlaps."""
    lowered = text.lower().replace("-", " ")  # same length: spans index the original text
    taken = [False] * len(lowered)
    out: list[tuple[int, int, str]] = []
    for pattern, name in _FORM_PATTERNS:
        for m in pattern.finditer(lowered):
            if not any(taken[m.start():m.end()]):
                taken[m.start():m.end()] = [True] * (m.end() - m.start())
                out.append((m.start(), m.end(), name))
    return sorted(out)


@lru_cache(maxsize=REPORT_CACHE)
def report_findings(text: str) -> tuple[Finding, ...]:
    """Every finding the report mentions (positive, negated or uncertain), one per name and
    certainty and side; a finding asserted anywhere is not also listed as negated.

    Memoised by text (an immutable answer of its input): the text tab's "how each match was
    found" reads the findings of every hit's report on every query, ~1.5 ms each with NegEx."""
    found: dict[tuple[str, str, str], Finding] = {}
    for seg in segments(text):
        for f in seg.findings:
            found.setdefault((f.name, f.certainty, f.side), f)
    asserted = {name for name, certainty, _ in found if certainty in (POSITIVE, UNCERTAIN)}
    return tuple(f for (name, certainty, _), f in found.items() if certainty != NEGATIVE or name not in asserted)


def affirmed_text(text: str) -> str:
    """The report minus the segments whose every finding is negated (for lexical search)."""
    return " ".join(seg.text for seg in segments(text) if not seg.all_negated)
