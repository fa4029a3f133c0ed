"""Which finding mentions in a report are negated ("No pleural effusion"): the report view does
not show them as hits, and the index does not record them as the report's findings (data.report_findings).

Why a detector and not a word list: negation scopes over a whole phrase ("There is no focal
consolidation, effusion, or pneumothorax" negates all three) and stops at a sentence end or a
"but". This is NegEx (Chapman et al., 2001) as ``negspacy`` implements it, with its clinical
termset plus a few radiology wordings, on a blank spaCy English pipeline (rule tokenizer and
sentencizer): no model download, no network. spaCy is imported on first use (~3 s next to an
already loaded torch), then a report takes about a millisecond.
"""
from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any, Sequence

EXTENSION = "cxr_negated"
SPAN_KEY = "cxr_mentions"

# Radiology wordings the clinical termset lacks. "X is not seen" puts the negation after the finding
# (NegEx's "following" list); a semicolon ends a negation's scope like a sentence end.
RADIOLOGY_TERMS = {
    "following_negations": [
        "is not seen", "are not seen", "is not identified", "are not identified", "is not present",
        "are not present", "is not visualized", "are not visualized", "has resolved", "have resolved", "resolved",
        "has cleared", "have cleared",
    ],
    # "clearing of the left base airspace disease": gone, not present (a report's own follow-up wording)
    "preceding_negations": ["no evidence for", "clear of", "no definite", "no visible", "resolution of",
                            "clearing of", "interval clearing of"],
    "termination": [";"],
}


@lru_cache(maxsize=1)
def pipeline() -> Any:
    """The blank spaCy pipeline with sentencizer and negex (built once, thread-safe to call)."""
    import spacy
    from negspacy.negation import Negex  # noqa: F401  registers the "negex" factory
    from negspacy.termsets import termset

    terms = termset("en_clinical")
    terms.add_patterns(RADIOLOGY_TERMS)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("negex", config={"neg_termset": terms.get_patterns(), "span_keys": [SPAN_KEY],
                                  "extension_name": EXTENSION})
    return nlp


def warm_in_background() -> None:
    """Import spaCy and build the pipeline off the request path (the app calls this at start)."""
    threading.Thread(target=pipeline, name="negation-warm-up", daemon=True).start()


def negated(text: str, spans: Sequence[tuple[int, int]]) -> list[bool]:
    """For each character span ``(start, end)`` of ``text`` (a finding mention), whether it is negated."""
    if not spans:
        return []
    nlp = pipeline()
    doc = nlp.make_doc(text)
    mentions = [doc.char_span(start, end, alignment_mode="expand") for start, end in spans]
    doc.spans[SPAN_KEY] = [m for m in mentions if m is not None]
    for _, component in nlp.pipeline:
        doc = component(doc)
    return [bool(m is not None and m._.get(EXTENSION)) for m in mentions]
