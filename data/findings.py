"""Structured findings: one vocabulary for IU X-ray MeSH tags, MIMIC CheXpert labels and manifest tags.

Why: clinicians search for *findings with their side* ("small left pleural effusion"), so
relevance, training targets, filters and the "why this match" view all need the same answer to
"what does this study show, and where". Every source keeps its tags verbatim on ``Study.tags``;
this module is the one place that turns a tag into a :class:`Finding`.

Tag syntax (shared by all sources): ``heading[/qualifier]...``, case-insensitive, e.g.
``Pleural Effusion/left/small`` (IU MeSH major term), ``Pleural Effusion/uncertain`` (a MIMIC
CheXpert -1.0), ``pneumothorax/right`` (a manifest ``tags`` cell, ``;``-separated).

Vocabulary: :data:`VOCABULARY` maps each canonical finding name to the source headings that mean
it (MeSH headings and CheXpert columns). A heading outside the vocabulary keeps its own
lower-cased name, so nothing a source says is dropped.

Side is the patient's: ``left``, ``right``, ``bilateral`` or ``""`` (not stated / not lateral).
Lingula and retrocardiac imply left, the middle lobe right (as the phantom renderer draws them).

Relevance between two studies (:func:`relevance`) is a weighted Jaccard over finding names in
which each shared name earns 1 when the sides agree, 0.5 when one side is unknown or the sides
only overlap (bilateral vs left), and 0.25 when the sides contradict (left vs right); two normal
studies are fully relevant to each other, a normal and an abnormal study not at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

LEFT, RIGHT, BILATERAL = "left", "right", "bilateral"
POSITIVE, UNCERTAIN, NEGATIVE = "positive", "uncertain", "negative"

# Canonical name -> (source headings that mean it, whether it has a side).
# Headings are lower-case MeSH major headings (IU X-ray) or CheXpert column names (MIMIC).
VOCABULARY: dict[str, tuple[tuple[str, ...], bool]] = {
    "cardiomegaly": (("cardiomegaly",), False),
    "enlarged cardiomediastinum": (("enlarged cardiomediastinum",), False),
    "pleural effusion": (("pleural effusion",), True),
    "pneumothorax": (("pneumothorax",), True),
    "atelectasis": (("pulmonary atelectasis", "atelectasis"), True),
    "opacity": (("opacity", "density", "infiltrate", "airspace disease", "lung opacity"), True),
    "consolidation": (("consolidation",), True),
    "pneumonia": (("pneumonia",), True),
    "edema": (("pulmonary edema", "edema"), True),
    "congestion": (("pulmonary congestion",), True),
    "nodule": (("nodule", "lung lesion"), True),
    "mass": (("mass",), True),
    "granuloma": (("calcified granuloma", "granuloma", "granulomatous disease"), True),
    "calcification": (("calcinosis",), True),
    "emphysema": (("emphysema", "pulmonary emphysema", "pulmonary disease, chronic obstructive"), True),
    "hyperinflation": (("lung, hyperlucent",), False),
    "fibrosis": (("pulmonary fibrosis",), True),
    "scarring": (("cicatrix",), True),
    "pleural thickening": (("thickening", "pleural other"), True),
    "blunted costophrenic angle": (("costophrenic angle",), True),
    "interstitial markings": (("markings",), True),
    "aortic tortuosity": (("aorta", "aorta, thoracic"), False),
    "atherosclerosis": (("atherosclerosis",), False),
    "elevated diaphragm": (("diaphragm", "diaphragmatic eventration"), True),
    "hiatal hernia": (("hernia, hiatal",), False),
    "fracture": (("fractures, bone", "fracture"), True),
    "scoliosis": (("scoliosis",), False),
    "kyphosis": (("kyphosis",), False),
    "degenerative change": (("thoracic vertebrae", "spine", "osteophyte", "spondylosis", "arthritis"), False),
    "support device": (("catheters, indwelling", "surgical instruments", "implanted medical device",
                        "tube, inserted", "medical device", "stents", "support devices"), False),
    "foreign body": (("foreign bodies",), True),
}

# Headings that carry no finding: a study tagged only with these is normal (or unlabelled).
NORMAL_HEADINGS = frozenset({"normal", "no finding"})
IGNORED_HEADINGS = frozenset({"no indexing", "technical quality of image unsatisfactory"})

# The generic IU heading "Lung" takes its meaning from a qualifier.
_LUNG_QUALIFIERS = {"hypoinflation": "hypoinflation", "hyperdistention": "hyperinflation"}

_HEADING_TO_NAME = {h: name for name, (headings, _) in VOCABULARY.items() for h in headings}
LATERAL = frozenset(name for name, (_, lateral) in VOCABULARY.items() if lateral)  # findings that have a side
_SEVERITY = {"borderline": "mild", "mild": "mild", "small": "mild", "minimal": "mild",
             "moderate": "moderate", "large": "severe", "severe": "severe"}
_LOCATION = (("retrocardiac", "retrocardiac"), ("apex", "apex"), ("upper lobe", "upper"),
             ("middle lobe", "middle"), ("lingula", "middle"), ("lower lobe", "lower"), ("base", "lower"),
             ("costophrenic angle", "lower"), ("hilum", "hilum"))
_CERTAINTY = {"uncertain": UNCERTAIN, "negative": NEGATIVE, "positive": POSITIVE}


@dataclass(frozen=True, order=True)
class Finding:
    """One finding of one study, in the shared vocabulary."""

    name: str
    side: str = ""  # "left" | "right" | "bilateral" | ""
    location: str = ""  # "upper" | "middle" | "lower" | "apex" | "hilum" | "retrocardiac" | ""
    severity: str = ""  # "mild" | "moderate" | "severe" | ""
    certainty: str = POSITIVE  # "positive" | "uncertain" | "negative"

    @property
    def sides(self) -> frozenset[str]:
        """The patient sides covered: {} when unknown, {left, right} when bilateral."""
        if self.side == BILATERAL:
            return frozenset({LEFT, RIGHT})
        return frozenset({self.side}) if self.side else frozenset()

    @property
    def text(self) -> str:
        """Human wording, e.g. "mild left pleural effusion"."""
        words = [w for w in (self.severity, self.side, self.location and f"{self.location} zone", self.name) if w]
        prefix = {UNCERTAIN: "possible ", NEGATIVE: "no "}.get(self.certainty, "")
        return prefix + " ".join(words)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "side": self.side, "location": self.location, "severity": self.severity,
                "certainty": self.certainty}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Finding":
        return cls(**{k: str(d.get(k, "") or "") for k in ("name", "side", "location", "severity")},
                   certainty=str(d.get("certainty") or POSITIVE))


def canonical_name(heading: str) -> str:
    """The vocabulary name of a source heading (MeSH heading or CheXpert column), else the heading itself."""
    h = " ".join(str(heading).lower().split())
    return _HEADING_TO_NAME.get(h, h)


def parse_tag(tag: str) -> Finding | None:
    """One verbatim tag -> a Finding; ``None`` for normal/ignored headings and empty tags."""
    parts = [" ".join(p.lower().split()) for p in str(tag).split("/")]
    parts = [p for p in parts if p]
    if not parts:
        return None
    heading, quals = parts[0], set(parts[1:])
    if heading in NORMAL_HEADINGS or heading in IGNORED_HEADINGS:
        return None
    if heading == "lung":
        named = [name for q, name in _LUNG_QUALIFIERS.items() if q in quals]
        if not named:
            return None  # "Lung/base/left" alone names a place, not a finding
        name = named[0]
    else:
        name = canonical_name(heading)
    certainty = next((_CERTAINTY[q] for q in quals if q in _CERTAINTY), POSITIVE)
    severities = [_SEVERITY[q] for q in quals if q in _SEVERITY]
    severity = max(severities, key=("mild", "moderate", "severe").index) if severities else ""
    location = next((loc for q, loc in _LOCATION if q in quals), "")
    return Finding(name=name, side=_side(quals) if name in LATERAL else "", location=location,
                   severity=severity, certainty=certainty)


def _side(quals: set[str]) -> str:
    if "bilateral" in quals or {"right", "left"} <= quals:
        return BILATERAL
    if "right" in quals or ("middle lobe" in quals and "left" not in quals):
        return RIGHT
    if quals & {"left", "lingula", "retrocardiac"}:
        return LEFT
    return ""


def findings_from_tags(tags: Iterable[str]) -> tuple[Finding, ...]:
    """All findings named by a study's tags, deduplicated, in tag order."""
    return _findings_of(tuple(tags))


@lru_cache(maxsize=16384)
def _findings_of(tags: tuple[str, ...]) -> tuple[Finding, ...]:
    # memoised: every search hit, filter and metric re-reads the same studies' tags (answers are immutable)
    out: list[Finding] = []
    for tag in tags:
        f = parse_tag(tag)
        if f is not None and f not in out:
            out.append(f)
    return tuple(out)


findings_from_tags.cache_clear = _findings_of.cache_clear  # type: ignore[attr-defined]
findings_from_tags.cache_info = _findings_of.cache_info  # type: ignore[attr-defined]


def chexpert_tags(row: Mapping[str, str]) -> tuple[str, ...]:
    """Tags of one CheXpert label row: ``Name`` for 1.0, ``Name/uncertain`` for -1.0, ``Name/negative``
    for 0.0; blank cells (not mentioned) give nothing. "No Finding" = 1.0 gives ``("normal",)``."""
    if str(row.get("No Finding", "")).strip() in ("1", "1.0"):
        return ("normal",)
    out = []
    for name, value in row.items():
        if name in ("subject_id", "study_id", "No Finding"):
            continue
        v = str(value).strip()
        if v in ("1", "1.0"):
            out.append(name)
        elif v in ("-1", "-1.0"):
            out.append(f"{name}/uncertain")
        elif v in ("0", "0.0"):
            out.append(f"{name}/negative")
    return tuple(out)


# ----------------------------------------------------------------------------- relevance

Profile = Mapping[str, frozenset[str]]  # finding name -> patient sides covered (empty = unknown)


def profile(findings: Iterable[Finding], include_uncertain: bool = False) -> dict[str, frozenset[str]]:
    """Finding name -> union of the sides it is seen on; the positive findings only by default."""
    wanted = (POSITIVE, UNCERTAIN) if include_uncertain else (POSITIVE,)
    out: dict[str, frozenset[str]] = {}
    for f in findings:
        if f.certainty in wanted:
            out[f.name] = out.get(f.name, frozenset()) | f.sides
    return out


def side_credit(a: frozenset[str], b: frozenset[str]) -> float:
    """How well two side sets of the same finding agree: 1 equal, 0.5 unknown/overlapping, 0.25 opposite."""
    if a == b:
        return 1.0
    if not a or not b or a & b:
        return 0.5
    return 0.25


def relevance(a: Profile, b: Profile) -> float:
    """Graded relevance in [0, 1] of two studies' profiles (weighted Jaccard over finding names)."""
    if not a and not b:
        return 1.0  # normal <-> normal
    names = set(a) | set(b)
    shared = set(a) & set(b)
    return sum(side_credit(a[n], b[n]) for n in shared) / len(names)


def shares_finding(a: Profile, b: Profile) -> bool:
    """True when both are normal, or they share a finding whose sides do not contradict."""
    if not a or not b:
        return not a and not b
    return any(side_credit(a[n], b[n]) >= 0.5 for n in set(a) & set(b))
