"""Handlers of the "Compose & compare" tab: composed queries, heat-maps, frozen vs fine-tuned.

Wraps a :class:`webapp.service.SearchService` (same engine, same upload handling and input
checks) so the main handlers stay as they are. Every handler returns a message instead of
raising, like the main ones.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from data.findings_text import parse_phrase
from data.images import ImageLoadError
from model.attribution import OcclusionMaps, occlusion_maps, overlay
from runtime.threads import query_threads
from webapp.composed import DEFAULT_WEIGHT, MAX_WEIGHT, MODES, NEUTRAL_PHRASE, compose, compose_findings
from trust.familiarity import NOT_RADIOGRAPH
from webapp.presenters import gallery_caption, hits_as_records, preview, refused_status, status_markdown
from webapp.queries import QueryError, clean_query, parse_k
from webapp.service import report_unexpected
from webapp.trust import trusted, warning_lines
from webapp.why import consensus, from_phrase, why_html, why_rows

log = logging.getLogger(__name__)
HEAT_CACHE = 8  # occlusion batches kept (one per recent query image): more hits of one query are cheap


class ExtrasService:
    """Composed search, per-hit heat-maps and the frozen-vs-fine-tuned view over one engine."""

    def __init__(self, service):
        self.service = service
        self.engine = service.engine
        self.model = service.engine.encoder
        self._heat: OrderedDict[str, OcclusionMaps] = OrderedDict()
        self._heat_lock = threading.Lock()

    # ---- image (+ modifier) -> studies, optionally beside the frozen backbone's ----------------
    def search_composed(self, upload: Any, modifier: str | None, mode: str = "with",
                        weight: float = DEFAULT_WEIGHT, k: int = 8, compare: bool = False):
        """Returns (preview, gallery, why_html, status, records, frozen_gallery, compare_markdown, state)."""
        empty = (None, [], "", "", {"hits": []}, [], "", None)
        if not upload:
            return (*empty[:3], "Drop a chest X-ray (PNG, JPEG or DICOM), then add a modifier.", *empty[4:])
        try:
            loaded = self.service.read_upload(upload)
            k, notes = parse_k(k)
            mode = mode if mode in MODES else _bad_mode(mode)
            weight = _weight(weight)
            phrase = clean_query(modifier)[0] if modifier and str(modifier).strip() else ""
            out = self.run_composed(loaded.image, phrase, mode, weight, k, compare, colour=loaded.colourfulness)
        except (ImageLoadError, QueryError) as exc:
            return (*empty[:3], f"**Cannot search:** {exc}", *empty[4:])
        except Exception:
            return (*empty[:3], report_unexpected("composed search"), *empty[4:])
        familiarity = out["familiarity"]
        if familiarity is not None and familiarity.verdict == NOT_RADIOGRAPH:  # as the image tab: no search at all
            records = {"hits": [], "familiarity": familiarity.to_dict()}
            return preview(loaded.image), [], "", refused_status(familiarity.message), records, *empty[5:]
        hits = out["hits"]
        shown_as_trusted = trusted(familiarity)
        what = (f"image {mode} “{phrase}” (weight {weight:g})" if phrase else "the image alone")
        status = status_markdown(f"**{len(hits)} studies** for {what}.", notes + list(loaded.notes),
                                 warning_lines(familiarity), shown_as_trusted)
        gallery = [(h.image_path, gallery_caption(h)) for h in hits]
        records = {"hits": hits_as_records(hits), "why": why_rows(out["query_findings"], hits),
                   "query_findings": out["query_findings"].describe(), "mode": mode, "weight": weight,
                   "modifier": phrase, "familiarity": familiarity.to_dict() if familiarity is not None else None}
        frozen_gallery, compare_md = [], ""
        if compare:
            records["frozen"] = out["frozen"]
            frozen_gallery = [(h.image_path, gallery_caption(h)) for h in out.get("frozen_hits", [])]
            compare_md = _compare_markdown(out["frozen"])
        state = {"upload": _key(upload), "rows": [h.row_id for h in hits], "ids": [h.study_id for h in hits]}
        why = why_html(out["query_findings"], hits, shown_as_trusted)
        return preview(loaded.image), gallery, why, status, records, frozen_gallery, compare_md, state

    def run_composed(self, image, phrase: str, mode: str, weight: float, k: int, compare: bool = False,
                     colour: float | None = None) -> dict[str, Any]:
        """The search itself (also what the benchmark calls): hits of the composed query, the
        query's findings for "why", the image's familiarity verdict (the image tab's check; no search
        for a ``not_radiograph``) and the frozen comparison when asked."""
        model = self.model
        familiarity = None
        with query_threads():
            feats = model.backbone.encode_images([image])
            if self.engine.familiarity is not None:
                familiarity = self.engine.familiarity.assess_image(image, np.asarray(feats, np.float32), colour)
                if familiarity.verdict == NOT_RADIOGRAPH:
                    return {"hits": [], "alone": [], "query_findings": consensus([]), "familiarity": familiarity}
            z_img = model.project_image_features(feats)[0]
            z_txt = model.embed_texts([phrase])[0] if phrase else None
            z_neutral = model.embed_texts([NEUTRAL_PHRASE])[0] if phrase else None  # cached after the first
        alone = self.engine.search_by_image_vector(z_img, k=k)
        image_findings = consensus([h.tags for h in alone.hits])
        if z_txt is not None:
            hits = self.engine.search_by_image_vector(compose(z_img, z_txt, weight, mode, z_neutral), k=k).hits
            query_findings = compose_findings(image_findings, from_phrase(parse_phrase(phrase)), mode)
        else:
            hits, query_findings = alone.hits, image_findings
        out: dict[str, Any] = {"hits": hits, "alone": alone.hits, "query_findings": query_findings,
                               "familiarity": familiarity}
        if compare:
            out.update(self._frozen_side(feats.numpy()[0], alone.hits, k))
        return out

    def _frozen_side(self, frozen_query: np.ndarray, tuned_hits, k: int) -> dict[str, Any]:
        frozen_hits = self.engine.search_frozen(frozen_query, k)
        if frozen_hits is None:
            return {"frozen": {"available": False, "reason": "this index was built without frozen vectors; "
                               "rebuild it (python -m pipeline or a fresh bundle) to compare"}}
        tuned_ids = [h.study_id for h in tuned_hits]
        frozen_ids = [h.study_id for h in frozen_hits]
        shared = [s for s in tuned_ids if s in set(frozen_ids)]
        summary = {"available": True, "k": k, "overlap": len(shared), "overlap_share": round(len(shared) / max(k, 1), 3),
                   "shared_ids": shared, "frozen_ids": frozen_ids, "finetuned_ids": tuned_ids,
                   "frozen_abnormal": sum(h.label == 1 for h in frozen_hits),
                   "finetuned_abnormal": sum(h.label == 1 for h in tuned_hits)}
        return {"frozen": summary, "frozen_hits": frozen_hits}

    # ---- heat-map on demand ------------------------------------------------------------------------
    def heatmap(self, state: dict[str, Any] | None, rank: Any):
        """Returns (overlay image, caption) for hit ``rank`` (1-based) of the last composed search."""
        if not state or not state.get("rows"):
            return None, "Run a search first, then pick a result."
        try:
            rank = int(rank)
            if not 1 <= rank <= len(state["rows"]):
                raise QueryError(f"Pick a result between 1 and {len(state['rows'])}.")
            image = self.service.read_upload(state["upload"]).image
            started = time.perf_counter()
            maps = self._occlusion(state["upload"], image)
            target = self.engine.vectors("images")[int(state["rows"][rank - 1])]
            heat = maps.heat(target)
            seconds = time.perf_counter() - started
        except (ImageLoadError, QueryError, ValueError) as exc:
            return None, f"**Cannot draw the heat-map:** {exc}"
        except Exception:
            return None, report_unexpected("heat-map")
        caption = (f"Hit #{rank} ({state['ids'][rank - 1]}), cosine {maps.cosine(target):.3f}. Red: regions of the "
                   f"query whose occlusion lowers the similarity most ({maps.grid}×{maps.grid} occlusion of the "
                   f"{'feature map' if maps.method == 'features' else 'image'}, "
                   f"{seconds:.2f} s).")
        return overlay(image, heat), caption

    def cached_occlusion(self, key: str) -> OcclusionMaps | None:
        """The occlusion maps kept for an upload (``key``: its path), if its heat-map was drawn."""
        with self._heat_lock:
            return self._heat.get(key)

    def _occlusion(self, key: str, image) -> OcclusionMaps:
        with self._heat_lock:
            if key in self._heat:
                self._heat.move_to_end(key)
                return self._heat[key]
        with query_threads():
            maps = occlusion_maps(self.model, image)
        with self._heat_lock:
            self._heat[key] = maps
            while len(self._heat) > HEAT_CACHE:
                self._heat.popitem(last=False)
        return maps


def _compare_markdown(summary: dict[str, Any]) -> str:
    if not summary.get("available"):
        return f"Frozen comparison unavailable: {summary.get('reason')}."
    k = summary["k"]
    return (f"**Overlap: {summary['overlap']} of {k}** studies are in both top-{k} lists (image alone). "
            f"Abnormal among the top {k}: frozen {summary['frozen_abnormal']}, fine-tuned {summary['finetuned_abnormal']}.")


def _key(upload: Any) -> str:
    return str(upload.get("path") if isinstance(upload, dict) else upload)


def _bad_mode(mode: Any) -> str:
    raise QueryError("Choose “with” or “without” for the modifier.")


def _weight(weight: Any) -> float:
    try:
        w = float(weight if weight is not None else DEFAULT_WEIGHT)
    except (TypeError, ValueError):
        raise QueryError(f"The weight must be a number between 0 and {MAX_WEIGHT:g}.") from None
    if not np.isfinite(w) or not 0 <= w <= MAX_WEIGHT:
        raise QueryError(f"The weight must be a number between 0 and {MAX_WEIGHT:g}.")
    return w
