"""The study record every loader produces and every model, index and app consumes."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from data.findings import Finding, findings_from_tags

NORMAL = 0
ABNORMAL = 1
LABEL_NAMES = {NORMAL: "normal", ABNORMAL: "abnormal"}


@dataclass(frozen=True)
class Study:
    """One imaging study: its image(s), its report and its labels.

    ``tags`` keep the source's structured findings verbatim (IU MeSH major terms such as
    ``"Pleural Effusion/left/small"``; CheXpert column names for MIMIC) so that side and
    location survive. ``structured_findings`` reads them in the shared vocabulary of
    ``data.findings`` (finding, side, location, severity, certainty); ``finding_names`` gives the
    bare names of the positive ones, for filters and highlighting.
    """

    study_id: str
    patient_id: str
    image_paths: tuple[str, ...]
    findings: str
    impression: str
    label: int
    tags: tuple[str, ...] = ()
    view: str = ""  # "PA", "AP", "LATERAL" or "" when unknown

    @property
    def image_path(self) -> str:
        """The image used for retrieval (the first, frontal where known)."""
        return self.image_paths[0] if self.image_paths else ""

    @property
    def label_name(self) -> str:
        return LABEL_NAMES[self.label]

    @property
    def report_text(self) -> str:
        """Findings and impression as one text: what the text tower embeds."""
        parts = []
        if self.findings:
            parts.append(f"Findings: {self.findings}")
        if self.impression:
            parts.append(f"Impression: {self.impression}")
        return " ".join(parts)

    @property
    def structured_findings(self) -> tuple[Finding, ...]:
        return findings_from_tags(self.tags)

    @property
    def finding_names(self) -> tuple[str, ...]:
        return finding_names(self.tags)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_paths"] = list(self.image_paths)
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Study":
        return cls(
            study_id=str(d["study_id"]),
            patient_id=str(d["patient_id"]),
            image_paths=tuple(d.get("image_paths", ())),
            findings=d.get("findings", "") or "",
            impression=d.get("impression", "") or "",
            label=int(d["label"]),
            tags=tuple(d.get("tags", ())),
            view=d.get("view", "") or "",
        )


def finding_names(tags: Iterable[str]) -> tuple[str, ...]:
    """Vocabulary names of the positive findings of structured tags, deduplicated, in tag order.

    >>> finding_names(["Pleural Effusion/left/small", "Opacity/lung/base/right", "normal"])
    ('pleural effusion', 'opacity')
    """
    out: list[str] = []
    for f in findings_from_tags(tags):
        if f.certainty == "positive" and f.name not in out:
            out.append(f.name)
    return tuple(out)
