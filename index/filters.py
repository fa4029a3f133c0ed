"""Restrictions on a search (label, view, finding and its side), parsed once for every store.

The engine resolves them into row ids through its metadata store (``index.store``); a vector store
gets both the parsed filters and those ids, so hnswlib filters its graph by id and Milvus pushes the
same filters down as a scalar expression (``index.milvus_store``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from data.records import ABNORMAL, LABEL_NAMES, NORMAL
from index.store import check_side

_LABELS = {"normal": NORMAL, "abnormal": ABNORMAL, "0": NORMAL, "1": ABNORMAL}
_ANY = {"", "any", "all"}


@dataclass(frozen=True)
class Filters:
    """Restrict results to a label, a view and/or a finding (optionally on a side: "left" also
    keeps bilateral); ``None`` means no restriction."""

    label: int | None = None
    view: str | None = None
    finding: str | None = None
    side: str | None = None

    @classmethod
    def parse(cls, filters: "Filters | Mapping[str, Any] | None") -> "Filters":
        """Accept ``None``, a ``Filters`` or a dict like ``{"label": "abnormal", "view": "PA",
        "finding": "pleural effusion", "side": "left"}``; empty strings and "any" mean no restriction."""
        if filters is None:
            return cls()
        if isinstance(filters, Filters):
            return filters
        unknown = set(filters) - {"label", "view", "finding", "side"}
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}; use label, view, finding or side")
        label = filters.get("label")
        if isinstance(label, str):
            key = label.strip().lower()
            if key in _ANY:
                label = None
            elif key in _LABELS:
                label = _LABELS[key]
            else:
                raise ValueError(f"label filter must be 'normal' or 'abnormal', not {label!r}")
        elif label is not None:
            if int(label) not in LABEL_NAMES:
                raise ValueError(f"label filter must be 0 (normal) or 1 (abnormal), not {label!r}")
            label = int(label)

        def text(value: Any) -> str | None:
            value = (str(value).strip() if value is not None else "")
            return None if value.lower() in _ANY else value

        finding, side = text(filters.get("finding")), text(filters.get("side"))
        return cls(label=label, view=text(filters.get("view")), finding=finding, side=check_side(side, finding))

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.label, self.view, self.finding, self.side))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": LABEL_NAMES[self.label] if self.label is not None else None,
            "view": self.view,
            "finding": self.finding,
            "side": self.side,
        }
