"""A findings phrase ("small left pleural effusion, no pneumothorax") -> :class:`data.findings.Finding`s.

Why: "why this match" for a text query must say which of the *phrase's* findings a hit shares,
with the side the user asked for and respecting "no ...". The phrase is short and written in
report language, so a small rule-based parser over the shared vocabulary is enough (and is
predictable): the phrase is cut into clauses at punctuation and "but" / "with" / "and"; each
clause names findings (longest surface form first), and its side, size, zone and negation words
apply to the findings of that clause. A negation carries over a list: in "no focal airspace
disease, pleural effusion, or pneumothorax" (the commonest sentence of a normal report) all three
are negated; an item with its own side, size or course ("no pneumothorax, small left pleural
effusion") is not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from data.findings import BILATERAL, LATERAL, LEFT, NEGATIVE, POSITIVE, RIGHT, UNCERTAIN, VOCABULARY, Finding

# What the parser reads, recorded in a run's config (``versions.phrase_parser``): a head trained with its
# knowledge input (model.knowledge) read its reports with it. 2: a negation carries over a list ("no focal
# airspace disease, pleural effusion, or pneumothorax"); "clear of", "absence of", "ruled out", "none" negate.
PARSER_VERSION = 2

# Extra surface forms (report wording) beyond the vocabulary's names and source headings.
_SYNONYMS: dict[str, str] = {
    "effusion": "pleural effusion", "effusions": "pleural effusion", "pleural fluid": "pleural effusion",
    "enlarged heart": "cardiomegaly", "heart is enlarged": "cardiomegaly", "cardiac enlargement": "cardiomegaly",
    "heart size is enlarged": "cardiomegaly", "collapse": "atelectasis", "atelectatic": "atelectasis",
    "opacities": "opacity", "opacification": "opacity", "airspace opacity": "opacity", "infiltrates": "opacity",
    "nodules": "nodule", "granulomas": "granuloma", "masses": "mass", "fractures": "fracture",
    "pacemaker": "support device", "catheter": "support device", "line": "support device", "tube": "support device",
    "device": "support device", "devices": "support device", "hyperinflated": "hyperinflation",
    "hyperexpanded": "hyperinflation", "hyperexpansion": "hyperinflation", "tortuous aorta": "aortic tortuosity",
    "hernia": "hiatal hernia", "edematous": "edema", "scar": "scarring", "scars": "scarring",
    "emphysematous": "emphysema", "blunting": "blunted costophrenic angle", "ptx": "pneumothorax",
}
_NEGATORS = ("no evidence of", "negative for", "free of", "clear of", "absence of", "ruled out", "without", "absent",
             "resolved", "none", "negative", "no", "not")
_UNCERTAIN = ("possible", "possibly", "probable", "likely", "may represent", "questionable", "suspected", "?")
_SEVERITY = {"small": "mild", "mild": "mild", "minimal": "mild", "trace": "mild", "tiny": "mild",
             "moderate": "moderate", "large": "severe", "severe": "severe", "massive": "severe"}
_LOCATION = (("retrocardiac", "retrocardiac"), ("apical", "apex"), ("apex", "apex"), ("upper", "upper"),
             ("middle lobe", "middle"), ("lingula", "middle"), ("lingular", "middle"), ("lower", "lower"),
             ("basilar", "lower"), ("base", "lower"), ("bases", "lower"), ("hilar", "hilum"))
_CLAUSE_SPLIT = re.compile(r"[;:\n]|\.(?!\d)|\bbut\b|\bwith\b|\bwhile\b|\bhowever\b")  # "3.3 mm" is one clause
_AND_SPLIT = re.compile(r"\band\b(?!\s+(?:left|right|both|bilateral)\b)")
_VERDICT_AFTER_COLON = re.compile(r":\s*(?=(?:none|negative|absent)\b)")  # "pneumothorax: none"
# Words that give a listed item its own assertion, so a negation before it does not carry over to it.
_OWN_ASSERTION = ("left", "right", "small", "large", "moderate", "severe", "mild", "stable", "new", "persistent",
                  "increased", "unchanged")
_NORMAL = re.compile(r"\b(normal|unremarkable|no acute (?:cardiopulmonary )?(?:abnormality|disease|process)|clear lungs?)\b")



def _surface_forms() -> list[tuple[str, str]]:
    forms = {name: name for name in VOCABULARY}
    for name, (headings, _) in VOCABULARY.items():
        for heading in headings:
            if "," not in heading:
                forms.setdefault(heading, name)
    forms.update(_SYNONYMS)
    return sorted(forms.items(), key=lambda kv: len(kv[0]), reverse=True)


_FORMS = _surface_forms()
# Compiled once: _names runs per clause of every report segment the why-table reads (a query
# parsed ~150 report clauses, re-escaping ~114 forms each: most of the text handler's CPU).
_FORM_PATTERNS = [(form, re.compile(rf"\b{re.escape(form)}\b"), name) for form, name in _FORMS]


@dataclass(frozen=True)
class ParsedPhrase:
    """What a phrase asks for: its findings (positive, negated or uncertain) and whether it says "normal"."""

    findings: tuple[Finding, ...]
    normal: bool

    @property
    def positive(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.certainty == POSITIVE)

    @property
    def negated(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.certainty == NEGATIVE)


def parse_phrase(text: str) -> ParsedPhrase:
    """Parse a findings phrase into Findings; unknown words are ignored (never raises)."""
    q = _VERDICT_AFTER_COLON.sub(" ", " ".join(str(text or "").lower().replace("-", " ").split()))
    found: list[Finding] = []
    for clause in _CLAUSE_SPLIT.split(q):
        for finding in _clause_findings(clause):
            if finding not in found:
                found.append(finding)
    normal = bool(_NORMAL.search(q)) and not any(f.certainty == POSITIVE for f in found)
    return ParsedPhrase(tuple(found), normal)


def _clause_findings(clause: str) -> list[Finding]:
    out: list[Finding] = []
    carried = False  # the list item before was negated: a bare item after the comma is too
    for item in clause.split(","):
        found = _item_findings(f" {item.strip()} ", carried)
        carried = bool(found) and found[-1].certainty == NEGATIVE
        out += found
    return out


def _item_findings(item: str, negated_scope: bool) -> list[Finding]:
    # Sub-clauses joined by "and" keep their own negation ("no effusion and a small left pneumothorax"),
    # except when "and" joins sides or sizes ("left and right", "small and large").
    out: list[Finding] = []
    for part in _AND_SPLIT.split(item):
        names, rest = _names(part)
        if not names:
            negated_scope = negated_scope or _has_any(part, _NEGATORS)
            continue
        if _has_any(rest, _NEGATORS):
            certainty = NEGATIVE
        elif _has_any(rest, _UNCERTAIN):
            certainty = UNCERTAIN
        else:
            certainty = NEGATIVE if negated_scope and not _has_any(rest, _OWN_ASSERTION) else POSITIVE
        negated_scope = certainty == NEGATIVE
        side = _side(rest)
        severity = next((v for k, v in _SEVERITY.items() if _has_word(rest, k)), "")
        location = next((v for k, v in _LOCATION if _has_word(rest, k)), "")
        for name in names:
            out.append(Finding(name=name, side=side if name in LATERAL else "", location=location,
                               severity=severity, certainty=certainty))
    return out


def _names(part: str) -> tuple[list[str], str]:
    """Finding names mentioned in ``part`` (longest surface form first) and the text left around them."""
    names: list[str] = []
    rest = part
    for form, pattern, name in _FORM_PATTERNS:
        if form in rest and pattern.search(rest):  # the substring test is a cheap necessary condition
            rest = pattern.sub(" ", rest)
            if name not in names:
                names.append(name)
    return names, rest


def _side(text: str) -> str:
    left, right = _has_word(text, "left"), _has_word(text, "right")
    if _has_any(text, ("bilateral", "bilaterally", "both")) or (left and right):
        return BILATERAL
    return LEFT if left else RIGHT if right else ""


def _has_word(text: str, word: str) -> bool:
    return word in text and _word_pattern(word).search(text) is not None


@lru_cache(maxsize=256)
def _word_pattern(word: str) -> re.Pattern[str]:
    """The few fixed words (negators, sides, sizes, zones) compiled once."""
    return re.compile(rf"(?<![a-z]){re.escape(word)}(?![a-z])")


def _has_any(text: str, words: tuple[str, ...]) -> bool:
    return any(_has_word(text, w) for w in words)


def surface_forms() -> list[tuple[str, str]]:
    """(surface form, vocabulary name) pairs the parser recognises, longest form first (for finding
    mention spans in report text, data.report_findings)."""
    return list(_FORMS)
