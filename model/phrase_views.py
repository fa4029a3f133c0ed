"""Short typed phrases generated from each training study's findings: extra text views for the head.

Why: the head was trained on whole reports only, yet users type "small left effusion". Here
every TRAINING study gets the phrases a user could type about it, written from its structured
findings in varied wording (synonyms, word orders, the side as "left", "left-sided", "on the
left", "left lung base", sizes, "no X" for what its report negates, normal wordings). During
training one of them is a text view of the study's image (:func:`model.loss.phrase_view_loss`,
multi-positive: every batch study the phrase is true of is a target, graded by side), and its
side-swapped twin ("right-sided effusion") is a hard negative in the side-swap term.

Independent of the benchmark's phrase list (``evaluation.phrase_benchmark``): no shared code and no
shared template (tests check it); the share of benchmark phrases produced verbatim is reported
by :func:`verbatim_share`. The distinct texts' frozen features are embedded once and cached
beside the study features (:func:`phrase_view_features`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from data.atomic_io import atomic_write_npz
from data.findings import BILATERAL, LEFT, RIGHT, Finding, profile
from data.findings_text import parse_phrase
from model.findings_training import study_codes

CACHE_FILE = "phrase_views.npz"
# Wordings of the findings users type most; others are written by their vocabulary name.
NAMES: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("pleural effusion", "effusion", "pleural fluid"),
    "pneumothorax": ("pneumothorax", "ptx"),
    "opacity": ("opacity", "airspace opacity", "airspace disease", "infiltrate"),
    "atelectasis": ("atelectasis", "subsegmental atelectasis", "volume loss"),
    "consolidation": ("consolidation", "airspace consolidation"),
    "pneumonia": ("pneumonia", "infection"),
    "cardiomegaly": ("cardiomegaly", "enlarged heart", "cardiac enlargement"),
    "nodule": ("nodule", "pulmonary nodule", "nodular opacity"),
    "granuloma": ("granuloma", "calcified granuloma", "granulomatous disease"),
    "scarring": ("scarring", "scar"),
    "elevated diaphragm": ("elevated hemidiaphragm", "elevation of the hemidiaphragm"),
    "fracture": ("fracture", "rib fracture"),
    "edema": ("edema", "pulmonary edema", "interstitial edema"),
    "emphysema": ("emphysema", "copd"),
    "hyperinflation": ("hyperinflation", "hyperexpanded lungs"),
    "hypoinflation": ("low volumes", "hypoinflation"),
    "degenerative change": ("degenerative changes", "spondylosis", "degenerative spine"),
    "aortic tortuosity": ("tortuous aorta", "aortic tortuosity"),
    "atherosclerosis": ("aortic atherosclerosis", "calcified aorta"),
    "support device": ("support device", "line or tube", "catheter"),
    "hiatal hernia": ("hiatal hernia", "hernia"),
}
# Side wordings: {s} is left/right ("left-sided", "on the left", "left lung base" ...).
SIDED = ("{s} {n}", "{s}-sided {n}", "{n} on the {s}", "{n}, {s}", "{n} in the {s} hemithorax", "{n} of the {s} side")
BASE_SIDED = ("{n} at the {s} lung base", "{s} base {n}")  # basal findings (effusion, atelectasis, opacity ...)
BILATERAL_WORDS = ("bilateral {n}", "{n} on both sides", "{n}, both sides")
UNSIDED = ("{n}", "{n} present", "there is {n}")
SIZED = ("{z} {s} {n}", "{z} {n} on the {s}", "{s}-sided {z} {n}")
SIZED_UNSIDED = ("{z} {n}",)
NEGATED = ("no {n}", "{n} absent", "without {n}", "no sign of {n}")
NORMAL = ("normal chest radiograph", "no acute findings", "clear lungs", "unremarkable chest x-ray",
          "lungs clear, heart normal", "no abnormality")
SIZES = {"mild": ("small", "mild", "minimal"), "moderate": ("moderate",), "severe": ("large", "extensive")}
BASAL = frozenset({"pleural effusion", "atelectasis", "opacity", "consolidation", "pneumonia"})
_TEMPLATES = SIDED + BASE_SIDED + BILATERAL_WORDS + UNSIDED + SIZED + SIZED_UNSIDED + NEGATED + NORMAL
_OTHER_SIDE = {LEFT: RIGHT, RIGHT: LEFT}
_SIDE_BITS = {"": 0, LEFT: 1, RIGHT: 2, BILATERAL: 3}


@dataclass(frozen=True)
class View:
    """One generated phrase and what it asserts (finding None: a normal wording)."""

    text: str
    finding: str | None
    side: str = ""
    negated: bool = False
    twin: str = ""  # the same words on the other side ("" unless the side is left or right)


def templates() -> tuple[str, ...]:
    """Every wording template of the generator ({n} finding, {s} side, {z} size)."""
    return _TEMPLATES


def wordings(name: str) -> tuple[str, ...]:
    return NAMES.get(name, (name,))


def finding_views(f: Finding) -> list[View]:
    """The phrases a user could type about one positive finding."""
    names = wordings(f.name)
    if f.side in (LEFT, RIGHT):
        other = _OTHER_SIDE[f.side]
        forms = SIDED + (BASE_SIDED if f.name in BASAL else ())
        out = [View(t.format(s=f.side, n=n), f.name, f.side, twin=t.format(s=other, n=n)) for t in forms for n in names]
        out += [View(t.format(z=z, s=f.side, n=n), f.name, f.side, twin=t.format(z=z, s=other, n=n))
                for t in SIZED for z in SIZES.get(f.severity, ()) for n in names[:1]]
        return out
    if f.side == BILATERAL:
        return [View(t.format(n=n), f.name, BILATERAL) for t in BILATERAL_WORDS for n in names]
    out = [View(t.format(n=n), f.name) for t in UNSIDED for n in names]
    return out + [View(t.format(z=z, n=n), f.name) for t in SIZED_UNSIDED for z in SIZES.get(f.severity, ()) for n in names]


def study_views(findings: Sequence[Finding], report: str = "") -> list[View]:
    """All phrases of one study: each positive finding's, "no X" for what its report negates
    (and its tags do not assert), and normal wordings for a study without findings."""
    prof = profile(findings)
    out: list[View] = []
    for f in findings:
        if f.certainty == "positive":
            out += [v for v in finding_views(f) if v not in out]
    negated = {f.name for f in parse_phrase(report).negated} - set(prof) if report else set()
    out += [View(t.format(n=n), name, negated=True) for name in sorted(negated) for t in NEGATED for n in wordings(name)[:2]]
    if not prof:
        out += [View(t, None) for t in NORMAL]
    return out


@dataclass
class PhraseViews:
    """Every training study's phrases as rows into one table of distinct texts (CSR lists).

    ``targets`` gives, for sampled phrases and a batch of studies, which studies each phrase is
    true of (the multi-positive targets: 1 same side or unsided, 0.5 side unknown or bilateral
    vs one side, 0 opposite side only or finding absent)."""

    texts: list[str]
    finding_col: np.ndarray  # (T,) column of the phrase's finding in ``codes``; -1 normal; -2 unknown finding
    side_bits: np.ndarray  # (T,) 0 unsided, 1 left, 2 right, 3 bilateral
    negated: np.ndarray  # (T,) bool
    twin: np.ndarray  # (T,) row of the side-swapped twin, -1 none
    offsets: np.ndarray  # (N+1,) study i's phrases are ids[offsets[i]:offsets[i+1]]
    ids: np.ndarray
    codes: np.ndarray  # (N, F) study profile codes (evaluation.relevance_metrics)
    features: np.ndarray | None = None  # (T, text_dim) frozen text features, once embedded

    @classmethod
    def build(cls, studies: Sequence, rows: np.ndarray) -> "PhraseViews":
        """Phrases of the studies at ``rows`` (the training split); other studies get none."""
        codes, names = study_codes(studies)
        col = {n: j for j, n in enumerate(names)}
        index: dict[str, int] = {}
        attrs: list[tuple[int, int, bool, str]] = []
        per_study: list[list[int]] = [[] for _ in studies]

        def row_of(v: View) -> int:
            if v.text not in index:
                index[v.text] = len(attrs)
                c = -1 if v.finding is None else col.get(v.finding, -2)
                attrs.append((c, _SIDE_BITS[v.side], v.negated, v.twin))
            return index[v.text]

        for i in np.asarray(rows, dtype=np.int64):
            s = studies[i]
            for v in study_views(s.structured_findings, s.report_text):
                r = row_of(v)
                if v.twin:
                    row_of(View(v.twin, v.finding, _OTHER_SIDE[v.side], twin=v.text))
                per_study[i].append(r)
        texts = list(index)
        twin = np.array([index.get(a[3], -1) if a[3] else -1 for a in attrs], dtype=np.int64)
        counts = np.array([len(p) for p in per_study], dtype=np.int64)
        return cls(texts, np.array([a[0] for a in attrs], np.int64), np.array([a[1] for a in attrs], np.int64),
                   np.array([a[2] for a in attrs], bool), twin, np.concatenate([[0], np.cumsum(counts)]),
                   np.array([r for p in per_study for r in p], np.int64), codes)

    def sample(self, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions in ``batch`` of studies that have phrases, one random phrase id for each)."""
        b = batch.numpy()
        start, count = self.offsets[b], self.offsets[b + 1] - self.offsets[b]
        at = np.flatnonzero(count > 0)
        pick = torch.randint(0, 1 << 30, (len(at),), generator=generator).numpy() % np.maximum(count[at], 1)
        return torch.from_numpy(at), torch.from_numpy(self.ids[start[at] + pick])

    def targets(self, phrase_ids: np.ndarray, study_rows: np.ndarray) -> np.ndarray:
        """(P, S) float32: how true each phrase is of each study (see the class docstring)."""
        c = self.finding_col[phrase_ids]
        codes = self.codes[np.asarray(study_rows)]
        present_any = (codes & 1).any(axis=1)[None, :]
        code = codes[:, np.maximum(c, 0)].T.astype(np.int64)  # (P, S) the phrase's finding in each study
        present, ss, sp = (code & 1) > 0, code >> 1, self.side_bits[phrase_ids][:, None]
        credit = np.where((sp == 0) | (ss == sp), 1.0, np.where((ss == 0) | ((ss & sp) != 0), 0.5, 0.0))
        positive = np.where(present, credit, 0.0)
        negated = self.negated[phrase_ids][:, None]
        out = np.where(negated, (~present).astype(float), positive)
        out = np.where((c == -1)[:, None], (~present_any).astype(float), out)
        out = np.where((c == -2)[:, None], negated.astype(float), out)  # a finding no study has
        return out.astype(np.float32)


def phrase_view_features(backbone, views: PhraseViews, studies: Sequence, cache_dir: Path | None = None,
                         batch_size: int = 256) -> np.ndarray:
    """The frozen text features of every distinct phrase (``views.texts``), cached beside the
    study features under a hash of the texts; also stored on ``views.features``."""
    from model.features import feature_cache_dir

    key = hashlib.sha256("\n".join(views.texts).encode()).hexdigest()[:16]
    path = Path(cache_dir or feature_cache_dir(backbone, studies)) / CACHE_FILE
    feats = _read(path, key, len(views.texts))
    if feats is None:
        parts = [backbone.encode_texts(views.texts[i:i + batch_size]).numpy().astype(np.float32)
                 for i in range(0, len(views.texts), batch_size)]
        feats = np.concatenate(parts) if parts else np.zeros((0, int(backbone.text_dim)), np.float32)
        atomic_write_npz(path, features=feats, key=np.array(key))
    views.features = feats
    return feats


def _read(path: Path, key: str, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, stored = z["features"], str(z["key"])
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return feats if stored == key and len(feats) == n else None


def verbatim_share(views: PhraseViews, phrases: Sequence[str]) -> float:
    """Share of ``phrases`` (e.g. the benchmark's) that the generator happens to produce verbatim."""
    made = set(views.texts)
    return sum(p in made for p in phrases) / max(1, len(phrases))
