"""A fixed findings-phrase benchmark for text->image search, with a relevance rule per phrase.

Why: the app promises "type a findings phrase, get matching radiographs"; report->image metrics
(t2i) query with whole reports, which say much more than a typed phrase. These 65 IU-style
phrases (each common finding x side x size, negations, normal wordings) are what a user types;
:data:`PHRASES` is importable (the trust check uses it as phrases that must pass as familiar).

Relevance rule of a phrase over a study's findings (:meth:`Phrase.gain`):
- a finding phrase ("small left pleural effusion"): 0 without the finding; otherwise
  :func:`data.findings.side_credit` of the sides (1 same, 0.5 unknown/overlapping, 0.25 opposite),
  times 0.75 when the phrase names a size the study's finding does not have;
- a negation ("no pleural effusion"): 1 when the study lacks the finding, else 0;
- a normal wording ("no acute cardiopulmonary abnormality"): 1 for a study without findings.
A hit (finding_P@10) is a study with the finding on a side that does not contradict (any size).
Side-swap rate: among top-10 hits that have the phrase's finding on a known side, the share
whose side is only the opposite one (left/right phrases only), pooled over phrases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data.findings import BILATERAL, LEFT, RIGHT, Finding, profile, side_credit
from evaluation.relevance_metrics import K, ndcg_ir_measures


@dataclass(frozen=True)
class Phrase:
    text: str
    finding: str | None = None  # None: a normal wording
    side: str = ""  # left | right | bilateral | ""
    severity: str = ""  # mild | severe | "" (as data.findings grades sizes)
    negated: bool = False

    @property
    def sides(self) -> frozenset[str]:
        return Finding(self.finding or "", self.side).sides

    def gain(self, findings: Sequence[Finding]) -> float:
        """Graded relevance of a study (its structured findings) to this phrase."""
        prof = profile(findings)
        if self.finding is None:
            return float(not prof)
        if self.negated:
            return float(self.finding not in prof)
        if self.finding not in prof:
            return 0.0
        credit = side_credit(self.sides, prof[self.finding]) if self.side else 1.0
        if self.severity and not any(f.name == self.finding and f.severity == self.severity for f in findings):
            credit *= 0.75
        return credit

    def hit(self, findings: Sequence[Finding]) -> bool:
        """Counts for finding_P@10: the finding on a side that does not contradict (size aside)."""
        prof = profile(findings)
        if self.finding is None or self.negated:
            return self.gain(findings) > 0
        return self.finding in prof and (not self.side or side_credit(self.sides, prof[self.finding]) >= 0.5)

    def swapped(self, findings: Sequence[Finding]) -> bool | None:
        """None unless the study has the finding on a known side; then True if only the opposite side."""
        if self.finding is None or self.negated or self.side not in (LEFT, RIGHT):
            return None
        sides = profile(findings).get(self.finding)
        if not sides:
            return None
        return not (sides & self.sides)


def _lateral(name: str, wording: str, sides=(LEFT, RIGHT)) -> list[Phrase]:
    return [Phrase(wording.format(side=s), name, s) for s in sides]


PHRASES: tuple[Phrase, ...] = tuple(
    _lateral("pleural effusion", "{side} pleural effusion")
    + [Phrase(f"{size} {s} pleural effusion", "pleural effusion", s, sev)
       for size, sev in (("small", "mild"), ("large", "severe")) for s in (LEFT, RIGHT)]
    + [Phrase("bilateral pleural effusions", "pleural effusion", BILATERAL),
       Phrase("small bilateral pleural effusions", "pleural effusion", BILATERAL, "mild")]
    + _lateral("pneumothorax", "{side} pneumothorax")
    + [Phrase(f"{size} {s} pneumothorax", "pneumothorax", s, sev)
       for size, sev in (("small", "mild"), ("large", "severe")) for s in (LEFT, RIGHT)]
    + _lateral("opacity", "{side} lung airspace opacity")
    + [Phrase("bilateral airspace opacities", "opacity", BILATERAL),
       Phrase("left basilar opacity", "opacity", LEFT), Phrase("right lower lobe opacity", "opacity", RIGHT),
       Phrase("retrocardiac opacity", "opacity", LEFT)]
    + _lateral("atelectasis", "{side} basilar atelectasis")
    + [Phrase("bibasilar atelectasis", "atelectasis", BILATERAL),
       Phrase("mild left lower lobe atelectasis", "atelectasis", LEFT, "mild")]
    + _lateral("consolidation", "{side} lower lobe consolidation")
    + _lateral("pneumonia", "{side} lower lobe pneumonia")
    + _lateral("nodule", "{side} upper lobe pulmonary nodule")
    + _lateral("granuloma", "calcified granuloma in the {side} lung")
    + _lateral("scarring", "{side} apical scarring")
    + _lateral("elevated diaphragm", "elevated {side} hemidiaphragm")
    + _lateral("fracture", "{side} rib fracture")
    + [Phrase("cardiomegaly", "cardiomegaly"), Phrase("mild cardiomegaly", "cardiomegaly", severity="mild"),
       Phrase("the heart is enlarged", "cardiomegaly"),
       Phrase("hyperinflated lungs", "hyperinflation"), Phrase("emphysema", "emphysema"),
       Phrase("low lung volumes", "hypoinflation"),
       Phrase("degenerative changes of the thoracic spine", "degenerative change"),
       Phrase("scoliosis of the thoracic spine", "scoliosis"), Phrase("tortuous thoracic aorta", "aortic tortuosity"),
       Phrase("atherosclerotic calcification of the aorta", "atherosclerosis"), Phrase("hiatal hernia", "hiatal hernia"),
       Phrase("pulmonary edema", "edema"), Phrase("pulmonary vascular congestion", "congestion"),
       Phrase("central venous catheter in place", "support device")]
    + [Phrase("no pleural effusion", "pleural effusion", negated=True),
       Phrase("no pneumothorax", "pneumothorax", negated=True),
       Phrase("no focal consolidation", "consolidation", negated=True),
       Phrase("heart size is normal, no cardiomegaly", "cardiomegaly", negated=True),
       Phrase("no evidence of pneumonia", "pneumonia", negated=True)]
    + [Phrase(t) for t in ("no acute cardiopulmonary abnormality", "normal chest", "the lungs are clear",
                           "no acute cardiopulmonary disease",
                           "heart size and mediastinal contours are within normal limits, lungs are clear",
                           "no active disease")]
)


def phrase_texts() -> list[str]:
    return [p.text for p in PHRASES]


def benchmark(
    phrase_emb: np.ndarray, image_emb: np.ndarray, study_findings: Sequence[Sequence[Finding]],
    phrases: Sequence[Phrase] = PHRASES, k: int = K, per_phrase: bool = False,
) -> dict[str, float]:
    """t2i over the gallery ``image_emb`` (row-aligned with ``study_findings``) for every phrase
    of ``phrases`` (any list: the second wording set runs through here too).

    Phrases with no relevant study in the gallery cannot be scored and are left out
    (``n_phrases`` counts those scored). Also returns the chance and ceiling of the two precisions;
    ``per_phrase`` adds ``_per_phrase`` (finding_P@10 and nDCG@10 of each scored phrase, for paired CIs).
    """
    gains = np.array([[p.gain(f) for f in study_findings] for p in phrases], dtype=np.float64).reshape(len(phrases), -1)
    rel = np.array([[p.hit(f) for f in study_findings] for p in phrases], dtype=bool).reshape(len(phrases), -1)
    scored = (gains > 0).any(axis=1)
    sim = np.asarray(phrase_emb, dtype=np.float64) @ np.asarray(image_emb, dtype=np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")
    ndcg = ndcg_ir_measures(order, gains, k)
    hits = np.take_along_axis(rel, order[:, :k], axis=1)
    swaps = n_sided = 0
    all_swaps = all_sided = 0  # chance: the same share over the whole gallery
    for p in phrases:
        for f in study_findings:
            sw = p.swapped(f)
            if sw is not None:
                all_sided += 1
                all_swaps += int(sw)
    for i, p in enumerate(phrases):
        for j in order[i, :k]:
            s = p.swapped(study_findings[j])
            if s is not None:
                n_sided += 1
                swaps += int(s)
    if not scored.any():  # a tiny gallery: no phrase has a relevant study
        return {"nDCG@10": None, "finding_P@10": None, "side_swap_rate": None, "n_sided_hits": 0, "n_phrases": 0,
                "chance_finding_P@10": None, "ceiling_finding_P@10": None, "chance_side_swap_rate": None}
    out = {
        "nDCG@10": float(ndcg[scored].mean()),
        "finding_P@10": float(hits[scored].mean(axis=1).mean()),
        "side_swap_rate": swaps / n_sided if n_sided else 0.0,
        "n_sided_hits": int(n_sided),
        "n_phrases": int(scored.sum()),
        "chance_finding_P@10": float(rel[scored].mean(axis=1).mean()),
        "ceiling_finding_P@10": float(np.minimum(rel[scored].sum(axis=1), min(k, rel.shape[1])).mean() / min(k, rel.shape[1])),
        "chance_side_swap_rate": all_swaps / all_sided if all_sided else None,
    }
    if per_phrase:
        out["_per_phrase"] = {"finding_P@10": hits[scored].mean(axis=1), "nDCG@10": np.asarray(ndcg)[scored]}
    return out
