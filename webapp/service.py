"""What each button does. Every handler returns a user-facing message instead of raising:
bad input gets a clear sentence, unexpected failures get a reference number while the
traceback goes to the server log only. Uploaded files are deleted once read."""
from __future__ import annotations

import html
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.images import ImageLoadError, LoadedImage, load_radiograph
from index.engine import SearchEngine
from webapp.plots import EmbeddingMaps
from webapp.negation import warm_in_background
from webapp.presenters import (ERROR, WARNING, gallery_caption, hit_terms, hits_as_records, preview, query_terms,
                                refused_status, report_cards, status_markdown)
from data.findings_text import parse_phrase
from webapp.why import consensus, from_phrase, why_html
from webapp.queries import LABEL_CHOICES, QueryError, clean_query, parse_choice, parse_k
from webapp.trust import trusted, warning_lines
from webapp import text_query

log = logging.getLogger(__name__)

FRONTAL = {"PA", "AP", ""}
ANY = "any"
RECENT_UPLOADS = 8  # decoded uploads kept in memory so "Search" again (new filters) needs no file


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
        self.loaded_from: tuple[str, str] | None = None  # (run, index) as given to the loader (webapp.loading)
        self.vocabulary = list(engine.findings())
        self.views = engine.views()
        self.context_length = int(engine.encoder.backbone.context_length or 0)
        # Uploads are deleted once read; the decoded (de-identified) pixels of the last few
        # stay in memory, keyed by the upload's path, so changing a filter re-searches them.
        self._recent: OrderedDict[str, LoadedImage] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._path_locks = [threading.Lock() for _ in range(16)]
        from index.hybrid import has_reports

        self.text_mode = "hybrid" if has_reports(engine) else "dense"  # app.py --text-mode overrides
        warm_in_background()  # the report view's negation detector: spaCy loads off the first request

    # ---- image -> studies and reports ---------------------------------------------
    def search_image(self, upload: str | None, k: int, label: str, view: str, finding: str):
        """Returns (preview, gallery, reports_html, probability, status, records, query_state)."""
        empty = (None, [], "", None, "", {"hits": [], "reports": []}, None)
        if not upload:
            return (*empty[:4], "Drop a chest X-ray (PNG, JPEG or DICOM) to search.", *empty[5:])
        try:
            loaded = self.read_upload(upload)
            k, notes = parse_k(k)
            filters = self._filters(label, view, finding)
            result = self.engine.search_by_image(loaded.image, k=k, filters=filters, colour=loaded.colourfulness)
        except (ImageLoadError, QueryError) as exc:
            return (*empty[:4], f"{WARNING} {exc}", *empty[5:])
        except Exception:
            return (*empty[:4], report_unexpected("image search"), *empty[5:])
        notes = list(loaded.notes) + notes
        familiarity = result.familiarity.to_dict() if result.familiarity is not None else None
        if not result.hits and familiarity and familiarity["verdict"] == "not_radiograph":
            records = {"hits": [], "reports": [], "abnormal_probability": None, "familiarity": familiarity}
            return preview(loaded.image), [], "", None, refused_status(familiarity["message"]), records, None
        warnings = warning_lines(result.familiarity) + _floor_warnings(result)
        if loaded.view and loaded.view not in FRONTAL and all(v in FRONTAL for v in self.views):
            warnings.append(f"This looks like a {_plain(loaded.view)} (non-frontal) view, but only frontal views "
                            "are indexed: results may be poor.")
        prob = result.abnormal_probability
        shown_as_trusted = trusted(result.familiarity)
        status = status_markdown(f"{len(result.hits)} similar studies from {result.n_candidates:,} candidates.", notes,
                                 warnings, shown_as_trusted)
        gallery = [(h.image_path, gallery_caption(h)) for h in result.hits]
        reports = report_cards(result.reports, lambda h: hit_terms(h.finding_names, h.tags))
        why = why_html(consensus([h.tags for h in result.hits]), result.hits, shown_as_trusted)  # issue 15
        reports = why + reports
        records = {"hits": hits_as_records(result.hits), "reports": hits_as_records(result.reports),
                   "abnormal_probability": prob, "familiarity": familiarity}
        state = self._query_state("uploaded image", result.hits, familiarity)
        estimate = {"abnormal": prob, "normal": 1 - prob} if prob is not None else None
        return preview(loaded.image), gallery, reports, estimate, status, records, state

    # ---- text -> images ------------------------------------------------------------
    def search_text(self, text: str | None, k: int, label: str, view: str, finding: str, side: str = ANY,
                    mode: str | None = None):
        """Returns (gallery, reports_html, status, records, query_state). ``side``: left / right /
        bilateral for the phrase's finding; ``mode``: hybrid or dense (default: the app's)."""
        try:
            query, notes = clean_query(text)
            k, k_notes = parse_k(k)
            mode = text_query.check_mode(mode, self.text_mode)
            filters = text_query.with_side(self._filters(label, view, finding), side, query)
            notes += k_notes + self._context_notes(query)
            result = self.engine.search_by_text(query, k=k, filters=filters, mode=mode)
        except QueryError as exc:
            return [], "", f"{WARNING} {exc}", {"hits": []}, None
        except Exception:
            return [], "", report_unexpected("text search"), {"hits": []}, None
        terms = query_terms(query, self.vocabulary)
        gallery = [(h.image_path, gallery_caption(h)) for h in result.hits]
        reports = (why_html(from_phrase(parse_phrase(query)), result.hits) + text_query.found_by_html(query, result.hits)
                   + report_cards(result.hits, lambda h: terms))
        familiarity = result.familiarity.to_dict() if result.familiarity is not None else None
        notes += [result.note] if result.note else []
        status = status_markdown(
            f"{len(result.hits)} radiographs from {result.n_candidates:,} candidates ({result.mode} search).", notes,
            warning_lines(result.familiarity) + _floor_warnings(result), trusted(result.familiarity))
        records = {"hits": hits_as_records(result.hits), "familiarity": familiarity, "mode": result.mode}
        return gallery, reports, status, records, self._query_state(query[:80], result.hits, familiarity)

    # ---- embedding map -------------------------------------------------------------
    def map_figures(self, method: str, query_state: dict[str, Any] | None):
        if self.maps is None:
            return None, None
        method = method if method in self.maps.methods else self.maps.methods[0]
        return tuple(self.maps.figure(space, method, query_state) for space in ("frozen", "finetuned"))

    # ---- uploads ----------------------------------------------------------------------
    def read_upload(self, upload: str | os.PathLike) -> LoadedImage:
        """Decode then delete the server's copy of the upload (unless keeping was asked for).

        The file is deleted whether or not it decodes. A path already read by an earlier
        request (same upload, new filters) is answered from the in-memory copy. Requests for
        one path take turns, so a second one never finds the file half-deleted."""
        if isinstance(upload, dict):  # a FileData payload from an API client
            upload = upload.get("path") or ""
        key = str(upload)
        path = Path(key)
        with self._path_locks[hash(key) % len(self._path_locks)]:
            try:
                if path.is_file():
                    loaded = load_radiograph(path)
                    with self._recent_lock:
                        self._recent[key] = loaded
                        while len(self._recent) > RECENT_UPLOADS:
                            self._recent.popitem(last=False)
                    return loaded
                with self._recent_lock:
                    if key in self._recent:
                        self._recent.move_to_end(key)
                        return self._recent[key]
                raise ImageLoadError("The uploaded file is no longer on the server (uploads are deleted once "
                                     "read); please upload it again.")
            finally:
                if not self.keep_uploads:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass

    def _filters(self, label: Any, view: Any, finding: Any) -> dict[str, str | None]:
        """Dropdown values checked against the choices offered, so an API call with a typo
        gets a message instead of silently matching nothing."""
        return _filters(parse_choice(label, LABEL_CHOICES, "label"),
                        parse_choice(view, self.views, "view"),
                        parse_choice(finding, self.vocabulary, "finding"))

    def _context_notes(self, query: str) -> list[str]:
        """Tell the user when the text tower will only read the start of the query."""
        if not self.context_length:
            return []
        try:
            tokens = int(self.engine.encoder.backbone.text_token_count(query))
        except (AttributeError, NotImplementedError):
            return []
        if tokens <= self.context_length:
            return []
        return [f"The query is {tokens:,} tokens long; it was truncated to the text model's context of "
                f"{self.context_length} tokens, so the rest was ignored."]

    @staticmethod
    def _query_state(label: str, hits, familiarity: dict[str, Any] | None = None) -> dict[str, Any]:
        # The label becomes plotly hover text, which renders a subset of HTML: escape it.
        return {"label": html.escape(label), "neighbour_ids": [h.study_id for h in hits],
                "scores": [h.score for h in hits], "familiarity": familiarity}


def report_unexpected(what: str) -> str:
    """Log the current exception with a short reference and return the one line the user sees
    instead of a traceback (call it from an ``except`` block)."""
    ref = uuid.uuid4().hex[:8]
    log.exception("unexpected error in %s (ref %s)", what, ref)
    return f"{ERROR} Something went wrong during the {what}; it has been logged (ref {ref}). Please try again."


def _filters(label: str, view: str, finding: str) -> dict[str, str | None]:
    return {k: (None if (v is None or v == ANY) else v) for k, v in (("label", label), ("view", view), ("finding", finding))}


def _floor_warnings(result) -> list[str]:
    if not result.n_below_floor:
        return []
    return [f"{result.n_below_floor} filtered result(s) were cut: they are far less similar than the query's best "
            "match without filters, so they would only be filler."]


def _plain(text: str) -> str:
    """A value read from a file (e.g. a DICOM tag) made safe to show in Markdown."""
    return "".join(ch for ch in str(text) if ch.isalnum() or ch in " -_")[:16]
