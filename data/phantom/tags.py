"""MeSH tags ("Pleural Effusion/left/small") parsed into a heading and qualifiers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.phantom.constants import LEFT, RIGHT, SIDES


_SEVERITY = {"borderline": 0.45, "mild": 0.75, "small": 0.75, "moderate": 1.25, "large": 1.6, "severe": 1.6}


@dataclass(frozen=True)
class Tag:
    """One MeSH major term split into its heading and qualifiers ("Pleural Effusion/left/small")."""

    text: str
    name: str
    quals: frozenset[str]

    def has(self, *words: str) -> bool:
        return any(w in self.quals for w in words)

    @property
    def severity(self) -> float:
        """1.0 when unqualified; below for borderline/mild/small, above for moderate/large/severe."""
        found = [_SEVERITY[q] for q in self.quals if q in _SEVERITY]
        return max(found) if found else 1.0

    @property
    def sides(self) -> tuple[str, ...]:
        """Patient sides named by the tag; () when unspecified. Lingula/retrocardiac imply left."""
        if self.has("bilateral") or (self.has("right") and self.has("left")):
            return SIDES
        if self.has("right") or (self.has("middle lobe") and not self.has("left")):
            return (RIGHT,)
        if self.has("left", "lingula", "retrocardiac"):
            return (LEFT,)
        return ()

    @property
    def zone(self) -> str | None:
        """Lung zone named by the tag, or None."""
        if self.has("retrocardiac"):
            return "retrocardiac"
        if self.has("apex"):
            return "apex"
        if self.has("upper lobe"):
            return "upper"
        if self.has("middle lobe", "lingula"):
            return "middle"
        if self.has("lower lobe", "base", "costophrenic angle", "sulcus"):
            return "lower"
        if self.has("hilum"):
            return "hilum"
        return None


def parse_tag(text: str) -> Tag:
    parts = [p.strip().lower() for p in str(text).split("/") if p.strip()]
    if not parts:
        return Tag(text=text, name="", quals=frozenset())
    return Tag(text=text, name=parts[0], quals=frozenset(parts[1:]))


def pick_sides(tag: Tag, rng: np.random.Generator, default: str = "random") -> tuple[str, ...]:
    """Sides named by the tag, else ``default``: "random" (one side), "both", "right" or "left"."""
    sides = tag.sides
    if sides:
        return sides
    if default == "both":
        return SIDES
    if default in ("right", "left"):
        return (RIGHT if default == "right" else LEFT,)
    return (SIDES[int(rng.integers(2))],)
