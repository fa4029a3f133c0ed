"""The report view's negation detector; the detection core lives in :mod:`data.negation` so the
index can use it at index time (data.report_findings) and the page highlights exactly what the index records."""
from __future__ import annotations

from data.negation import EXTENSION, RADIOLOGY_TERMS, SPAN_KEY, negated, pipeline, warm_in_background

__all__ = ["EXTENSION", "RADIOLOGY_TERMS", "SPAN_KEY", "negated", "pipeline", "warm_in_background"]
