"""What each button does. Every handler returns a user-facing message instead of raising:
bad input gets a clear sentence, unexpected failures get a reference number while the
traceback goes to the server log only. Uploaded files are deleted once read."""
from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.images import ImageLoadError, load_radiograph
from index.engine import SearchEngine
from webapp.plots import EmbeddingMaps
from webapp.presenters import gallery_caption, hit_terms, hits_as_records, query_terms, report_cards
from webapp.queries import QueryError, clean_query

log = logging.getLogger(__name__)

FRONTAL = {"PA", "AP", ""}
ANY = "any"


@dataclass
class RunInfo:
    """The loaded model's config and evaluation, shown on the Model tab."""

    run_dir: Path
    config: dict[str, Any]
    eval_report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "RunInfo":
        run_dir = Path(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        eval_path = run_dir / "eval.json"
        report = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
        return cls(run_dir, config, report)


class SearchService:
    """The engine plus everything the page needs around it."""

    def __init__(self, engine: SearchEngine, run: RunInfo, maps: EmbeddingMaps | None, keep_uploads: bool = False):
        self.engine = engine
        self.run = run
        self.maps = maps
        self.keep_uploads = keep_uploads
        self.vocabulary = list(engine.findings())
        self.views = engine.views()
        self.context_length = int(getattr(engine.encoder.backbone, "context_length", 0) or 0)

    # ---- image -> studies and reports ---------------------------------------------
    def search_image(self, upload: str | None, k: int, label: str, view: str, finding: str):
        """Returns (preview, gallery, reports_html, probability, status, records, query_state)."""
        empty = (None, [], "", None, "", {"hits": [], "reports": []}, None)
        if not upload:
            return (*empty[:4], "⬆️ Drop a chest X-ray (PNG, JPEG or DICOM) to search.", *empty[5:])
        try:
            loaded = self._read_upload(upload)
            result = self.engine.search_by_image(loaded.image, k=int(k), filters=_filters(label, view, finding))
        except ImageLoadError as exc:
            return (*empty[:4], f"⚠️ {exc}", *empty[5:])
        except Exception:
            return (*empty[:4], self._unexpected("image search"), *empty[5:])
        notes = list(loaded.notes)
        if loaded.view and loaded.view not in FRONTAL and all(v in FRONTAL for v in self.views):
            notes.append(f"This looks like a {loaded.view} view, but only frontal views are indexed: results may be poor.")
        prob = result.abnormal_probability
        status = _status(f"{len(result.hits)} similar studies from {result.n_candidates:,} candidates.", notes)
        gallery = [(h.image_path, gallery_caption(h)) for h in result.hits]
        reports = report_cards(result.reports, lambda h: hit_terms(h.finding_names, h.tags))
        records = {"hits": hits_as_records(result.hits), "reports": hits_as_records(result.reports),
                   "abnormal_probability": prob}
        state = self._query_state("uploaded image", result.hits)
        return loaded.image, gallery, reports, {"abnormal": prob, "normal": 1 - prob}, status, records, state

    # ---- text -> images ------------------------------------------------------------
    def search_text(self, text: str | None, k: int, label: str, view: str, finding: str):
        """Returns (gallery, reports_html, status, records, query_state)."""
        try:
            query, notes = clean_query(text)
            tokens = self.engine.encoder.backbone.text_token_count(query)
            if self.context_length and tokens > self.context_length:
                notes.append(f"The query is {tokens} tokens; the text model reads only the first {self.context_length}.")
            result = self.engine.search_by_text(query, k=int(k), filters=_filters(label, view, finding))
        except QueryError as exc:
            return [], "", f"⚠️ {exc}", {"hits": []}, None
        except Exception:
            return [], "", self._unexpected("text search"), {"hits": []}, None
        terms = query_terms(query, self.vocabulary)
        gallery = [(h.image_path, gallery_caption(h)) for h in result.hits]
        reports = report_cards(result.hits, lambda h: terms)
        status = _status(f"{len(result.hits)} radiographs from {result.n_candidates:,} candidates.", notes)
        return gallery, reports, status, {"hits": hits_as_records(result.hits)}, self._query_state(query[:80], result.hits)

    # ---- embedding map -------------------------------------------------------------
    def map_figures(self, method: str, query_state: dict[str, Any] | None):
        if self.maps is None:
            return None, None
        method = method if method in self.maps.methods else self.maps.methods[0]
        return tuple(self.maps.figure(space, method, query_state) for space in ("frozen", "finetuned"))

    # ---- helpers --------------------------------------------------------------------
    def _read_upload(self, upload: str):
        """Decode then delete the server's copy of the upload (unless keeping was asked for)."""
        path = Path(upload)
        try:
            return load_radiograph(path)
        finally:
            if not self.keep_uploads:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    @staticmethod
    def _query_state(label: str, hits) -> dict[str, Any]:
        return {"label": label, "neighbour_ids": [h.study_id for h in hits], "scores": [h.score for h in hits]}

    @staticmethod
    def _unexpected(what: str) -> str:
        ref = uuid.uuid4().hex[:8]
        log.exception("unexpected error in %s (ref %s)", what, ref)
        return f"❌ Something went wrong during the {what}; it has been logged (ref {ref}). Please try again."


def _filters(label: str, view: str, finding: str) -> dict[str, str | None]:
    return {k: (None if (v is None or v == ANY) else v) for k, v in (("label", label), ("view", view), ("finding", finding))}


def _status(headline: str, notes: list[str]) -> str:
    return "\n".join([f"✅ {headline}", *(f"- ℹ️ {n}" for n in notes)])
