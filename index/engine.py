"""``SearchEngine``: the one way the app and the scripts query a built index, whatever stores its vectors.

It embeds a query with the encoder the index was built for, asks the vector store
(``index.vector_store``: an hnswlib folder or Milvus) for the image (image->image, text->image)
or report (image->report) top-k under the filters, and returns ranked hits with the metadata a
clinician needs. Everything above the store happens here, once for both backends: familiarity
verdicts, the relevance floor of filtered searches, exact search of small galleries, vector
(composed) queries and the frozen backbone's side-by-side. Loading checks the manifest first:
another model's index raises ``IndexMismatchError``; damaged files raise ``IndexCorruptError``
before hnswlib or Milvus ever reads them.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from data.records import Study
from index.ann import EXACT_THRESHOLD, FILTER_EXACT_FRACTION, ExactIndex, Neighbours, normalise
from index.encoder import Encoder, encoder_identity
from trust.familiarity import FamiliarityModel, Familiarity, NOT_RADIOGRAPH
from index.filters import Filters
from index.frozen import FrozenGallery
from index.hybrid import check_mode, hybrid_search
from index.manifest import (
    FAMILIARITY,
    META,
    IndexCorruptError,
    Manifest,
    check_identity,
    read_manifest,
    recover_interrupted_swap,
    verify_files,
)
from index.store import MetadataStore, StudyFields
from index.vector_store import VectorStore, artifacts_dir, open_vectors
from runtime.threads import query_threads

__all__ = ["Filters", "Hit", "RELEVANCE_FLOOR", "SearchEngine", "SearchResult", "TARGETS", "Target"]

Target = Literal["images", "reports"]
TARGETS = ("images", "reports")
# Relevance floor of filtered searches: hits more than this far (cosine) below the query's best
# unfiltered match are dropped instead of shown as filler (see SearchResult.n_below_floor).
RELEVANCE_FLOOR = 0.35
STUDY_CACHE = 8192  # resolved studies kept for hits (SearchEngine._studies): ~10 MB at most


@dataclass(frozen=True)
class Hit(StudyFields):
    """One retrieved study. ``score`` is the cosine similarity to the query (higher = closer).

    The Study's fields read on the hit itself (``hit.study_id``, ``hit.findings``, ``hit.image_path``,
    ``hit.structured_findings`` ...); image paths are absolute when the data root is known."""

    rank: int  # 1-based
    score: float
    row_id: int
    study: Study
    channels: tuple[str, ...] = ("dense",)  # which searches found it (hybrid text search: index.hybrid)

    # What a hit tells a caller: the whitelist is the privacy decision (no patient id, no paths).
    PUBLIC = ("view", "finding_names", "tags", "findings", "impression")

    def to_dict(self) -> dict[str, Any]:
        """The one JSON shape of a hit (the API endpoints and ``SearchResult.to_dict``)."""
        return {"rank": self.rank, "study_id": self.study.study_id, "score": round(float(self.score), 4),
                "label": self.study.label_name, **{k: _plain(getattr(self.study, k)) for k in self.PUBLIC},
                "structured_findings": [f.to_dict() for f in self.study.structured_findings],
                "channels": list(self.channels)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits of one query, plus what the UI shows around them."""

    hits: list[Hit]
    target: str  # which graph answered: "images" or "reports"
    query_type: str  # "image", "text" or "vector"
    filters: Filters
    n_candidates: int  # how many indexed items pass the filters
    exact: bool  # True when exact search answered (small gallery, request, or filter fallback)
    abnormal_probability: float | None = None  # search_by_image only; None when withheld (familiarity)
    reports: list[Hit] = field(default_factory=list)  # search_by_image only: image->report hits
    familiarity: Familiarity | None = None  # None when the index has no familiarity model
    n_below_floor: int = 0  # filtered search: hits cut for falling below the relevance floor
    mode: str = "dense"  # text queries: the mode that answered ("hybrid" or "dense", index.hybrid)
    note: str = ""  # text queries: why hybrid fell back to dense, if it did

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self):
        return iter(self.hits)

    @property
    def study_ids(self) -> list[str]:
        return [h.study_id for h in self.hits]

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": [h.to_dict() for h in self.hits],
            "target": self.target,
            "query_type": self.query_type,
            "filters": self.filters.to_dict(),
            "n_candidates": self.n_candidates,
            "exact": self.exact,
            "abnormal_probability": self.abnormal_probability,
            "reports": [h.to_dict() for h in self.reports],
            "familiarity": self.familiarity.to_dict() if self.familiarity is not None else None,
            "n_below_floor": self.n_below_floor,
            "mode": self.mode,
            "note": self.note,
        }


class SearchEngine:
    """A vector store + the metadata, familiarity model and frozen vectors of one index. Thread-safe for queries."""

    def __init__(
        self,
        vectors: VectorStore,
        store: MetadataStore,
        manifest: Manifest,
        encoder: Encoder | None = None,
        data_root: Path | str | None = None,
        exact_threshold: int = EXACT_THRESHOLD,
        index_dir: Path | None = None,
        familiarity: FamiliarityModel | None = None,
        frozen: FrozenGallery | None = None,
    ):
        self.vector_store = vectors
        self.familiarity = familiarity
        self.frozen = frozen  # the gallery's frozen image vectors (side by side); None when not built
        self._exact: dict[str, ExactIndex] = {}
        self._exact_lock = threading.Lock()
        self.store = store
        self.manifest = manifest
        self.encoder = encoder
        self.data_root = Path(data_root) if data_root is not None else None
        self.exact_threshold = exact_threshold
        self.index_dir = index_dir  # the index's folder (a Milvus index's sidecar: index.vector_store)
        self._study_cache: OrderedDict[int, Study] = OrderedDict()  # row id -> resolved study (hits_at)
        self._study_lock = threading.Lock()

    # -- loading -----------------------------------------------------------------
    @classmethod
    def load(
        cls,
        index: Path | str,
        encoder: Encoder | None,
        data_root: Path | str | None = None,
        verify_checksums: bool = True,
        exact_threshold: int = EXACT_THRESHOLD,
    ) -> "SearchEngine":
        """Open an index folder or a ``milvus://`` address for ``encoder``.

        Order matters: manifest -> model identity (``IndexMismatchError``) -> file sizes and
        sha256 (``IndexCorruptError``) -> only then hnswlib or Milvus and SQLite. ``encoder=None``
        skips the identity check and allows only vector queries (for tools and benches).
        ``data_root`` resolves relative image paths; by default the build-time root.
        """
        folder = artifacts_dir(index)
        recover_interrupted_swap(folder)
        for attempt in range(3):
            manifest = read_manifest(folder)
            if encoder is not None:
                check_identity(manifest, encoder_identity(encoder), where=index)
            try:
                verify_files(folder, manifest, checksums=verify_checksums)
                break
            except IndexCorruptError:
                # A writer may have swapped a new version in between our reads: retry on
                # the new manifest; a genuinely damaged file fails the same way again.
                if attempt == 2 or read_manifest(folder).to_dict() == manifest.to_dict():
                    raise
        vectors = open_vectors(index, manifest, exact_threshold)
        store = MetadataStore.load(folder / META)
        sizes = {"manifest": manifest.count, "metadata": len(store), "vectors": len(vectors)}
        if len(set(sizes.values())) != 1:
            store.close()
            vectors.close()
            raise IndexCorruptError(f"index {index} is inconsistent: item counts {sizes}; rebuild it")
        if data_root is None and manifest.data_root and Path(manifest.data_root).is_dir():
            data_root = manifest.data_root
        familiarity = FamiliarityModel.load(folder / FAMILIARITY) if FAMILIARITY in manifest.files else None
        return cls(vectors, store, manifest, encoder, data_root, exact_threshold, folder, familiarity,
                   FrozenGallery.load(folder, manifest))

    def close(self) -> None:
        self.vector_store.close()
        self.store.close()

    def clear_caches(self) -> None:
        """Forget the studies kept for hits and the store's memoised reads (tests: a cold start)."""
        with self._study_lock:
            self._study_cache.clear()
        self.store.clear_memo()

    @property
    def cached_studies(self) -> int:
        """How many resolved studies ``hits_at`` keeps (at most ``STUDY_CACHE``)."""
        return len(self._study_cache)

    # -- facts ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.store)

    @property
    def count(self) -> int:
        return len(self.store)

    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest.identity

    def views(self) -> list[str]:
        """Views present in the index (for the UI's filter choices)."""
        return self.store.views()

    def findings(self) -> dict[str, int]:
        """Finding name -> number of indexed studies with it, most common first."""
        return self.store.finding_counts()

    def vectors(self, target: Target = "images") -> np.ndarray:
        """All stored vectors of a graph in row order (e.g. for an embedding map)."""
        return self._exact_index(target).vectors()

    # -- queries -------------------------------------------------------------------
    def search_by_image(self, img: Image.Image, k: int = 10, filters: Any = None, exact: bool = False,
                        colour: float | None = None) -> SearchResult:
        """Similar prior studies (image->image), the closest reports (image->report, same
        filters, same k), and the model's abnormal probability for the query image.

        With a familiarity model, a ``not_radiograph`` query gets no hits and no probability,
        an ``unlike_index`` one gets hits but no probability (it cannot be trusted there).
        ``colour``: the upload's colourfulness when ``img`` was already converted to grey.
        """
        encoder = self._require_encoder()
        familiarity = None
        with query_threads():
            feats, emb = encoder.embed_images_with_features([img])
            if self.familiarity is not None:
                familiarity = self.familiarity.assess_image(img, feats, colour)
            emb = normalise(emb)
        parsed = Filters.parse(filters)
        if familiarity is not None and familiarity.verdict == NOT_RADIOGRAPH:
            return SearchResult([], "images", "image", parsed, self._n_candidates(parsed), exact, None, [], familiarity)
        probability = float(np.asarray(encoder.abnormal_probability(emb)).reshape(-1)[0])
        if familiarity is not None and not familiarity.trusted:
            probability = None
        images = self._search(emb, k, parsed, "images", exact, "image", RELEVANCE_FLOOR)
        reports = self._search(emb, k, parsed, "reports", exact, "image", RELEVANCE_FLOOR)
        return replace(images, abnormal_probability=probability, reports=reports.hits, familiarity=familiarity)

    def search_by_text(self, text: str, k: int = 10, filters: Any = None, exact: bool = False,
                       mode: str = "dense") -> SearchResult:
        """Radiographs matching a findings phrase (text->image), with the phrase's familiarity.
        ``mode="hybrid"`` fuses the indexed reports' channels in (index.hybrid); dense is the paper's setting."""
        if not text or not text.strip():
            raise ValueError("the text query is empty")
        mode = check_mode(mode)
        encoder = self._require_encoder()
        text = text.strip()
        with query_threads():
            feats, emb = encoder.embed_text_with_features(text)
            familiarity = self.familiarity.assess_text(text, feats) if self.familiarity is not None else None
            emb = normalise(emb)
        if mode == "hybrid":  # hybrid text search: index.hybrid
            return hybrid_search(self, text, emb, k, filters, exact, familiarity)
        result = self._search(emb, k, filters, "images", exact, "text", RELEVANCE_FLOOR)
        return replace(result, familiarity=familiarity)

    def search_by_image_vector(
        self, vec: np.ndarray, k: int = 10, filters: Any = None, target: Target = "images", exact: bool = False,
        floor: float | None = None,
    ) -> SearchResult:
        """Search with a precomputed embedding (any query in the shared space, image, text or composed).
        Exactly k filtered hits unless a relevance ``floor`` is given (the app's queries use one)."""
        return self._search(vec, k, filters, target, exact, "vector", floor)

    def search_frozen(self, frozen_query: np.ndarray, k: int, filters: Any = None) -> list[Hit] | None:
        """The nearest gallery images to a frozen backbone feature (the side-by-side view), exact,
        under the same filters; ``None`` when the index was built without frozen vectors."""
        if self.frozen is None:
            return None
        parsed = Filters.parse(filters)
        allowed = self._allowed(parsed)
        rows, scores = self.frozen.search(frozen_query, k, allowed)
        return self.hits_at(rows, scores)

    # -- internals -----------------------------------------------------------------
    def _require_encoder(self) -> Encoder:
        if self.encoder is None:
            raise RuntimeError("this engine was loaded without an encoder; only vector queries are possible")
        return self.encoder

    def _exact_index(self, target: str) -> ExactIndex:
        """Exact backend over the store's own vectors, built on first use."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        with self._exact_lock:
            if target not in self._exact:
                self._exact[target] = ExactIndex(self.vector_store.vectors(target), normalised=True)
            return self._exact[target]

    def _allowed(self, parsed: Filters) -> np.ndarray | None:
        return self.store.matching_ids(parsed.label, parsed.view, parsed.finding, parsed.side) if parsed.active else None

    def _top_k(self, query: np.ndarray, k: int, parsed: Filters, allowed: np.ndarray | None, target: str,
               exact: bool) -> Neighbours:
        """Exact search (the same answer on every store) for small galleries, on request, and for filters
        that pass few rows (``FILTER_EXACT_FRACTION``: an ANN index probes its usual share of the
        gallery and finds few of them: Milvus IVF's filtered recall@10 on the full demo was 0.88 with
        161 allowed rows, ``bench.parity``); else the store's top-k with the filters pushed down."""
        few = allowed is not None and len(allowed) <= max(self.exact_threshold, k, FILTER_EXACT_FRACTION * self.count)
        if exact or few or self.count < self.exact_threshold:
            return self._exact_index(target).search(query[None, :], int(k), allowed)
        found = self.vector_store.search(target, query[None, :], int(k), parsed, allowed)
        keep = found.ids[0] >= 0
        return Neighbours(found.ids[:, keep], found.scores[:, keep], found.exact)

    def _search(self, vec: np.ndarray, k: int, filters: Any, target: str, exact: bool, query_type: str,
                floor: float | None) -> SearchResult:
        result, ids, scores = self.ranked(vec, k, filters, target, exact, query_type, floor)
        return replace(result, hits=self.hits_at(ids, scores))

    def ranked(self, vec: np.ndarray, k: int, filters: Any = None, target: str = "images", exact: bool = False,
               query_type: str = "vector", floor: float | None = None) -> tuple[SearchResult, np.ndarray, np.ndarray]:
        """A vector search without its hits: (the result with ``hits=[]``, row ids, scores), best first.
        Why: the hybrid text search fuses 50 dense candidates and shows 8; only those 8 need a hit."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        query = np.asarray(vec, dtype=np.float32)
        if query.ndim == 2 and query.shape[0] == 1:
            query = query[0]
        if query.shape != (self.manifest.embed_dim,):
            raise ValueError(f"query vector has shape {query.shape}; expected ({self.manifest.embed_dim},)")
        query = normalise(query)[0]
        parsed = Filters.parse(filters)
        allowed = self._allowed(parsed)
        n_candidates = len(allowed) if allowed is not None else self.count
        found = self._top_k(query, k, parsed, allowed, target, exact)
        ids, scores = found.ids[0], found.scores[0]
        cut = 0
        if allowed is not None and floor is not None and len(scores):
            best = self._top_k(query, 1, Filters(), None, target, exact).scores[0]
            if len(best):
                keep = scores >= float(best[0]) - floor
                cut = int((~keep).sum())
                ids, scores = ids[keep], scores[keep]
        return SearchResult([], target, query_type, parsed, n_candidates, found.exact, n_below_floor=cut), ids, scores

    def _n_candidates(self, parsed: Filters) -> int:
        allowed = self._allowed(parsed)
        return self.count if allowed is None else len(allowed)

    def hits_at(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Ranked hits for row ids and their scores (in that order), image paths resolved."""
        rows = [int(i) for i in np.asarray(ids).reshape(-1)]
        studies = self._studies(rows)
        return [Hit(rank=rank, score=float(score), row_id=row, study=study)
                for rank, (row, score, study) in enumerate(zip(rows, scores, studies), start=1)]

    def _studies(self, rows: list[int]) -> list[Study]:
        """The studies of ``rows`` with their image paths resolved, through a bounded LRU (``STUDY_CACHE``).
        Why: the store never changes while it is loaded, and reading a study anew means an SQL read, a JSON
        decode and re-parsing its tags, on every query, for the same popular studies."""
        with self._study_lock:
            known = {r: self._study_cache[r] for r in rows if r in self._study_cache}
            for r in known:
                self._study_cache.move_to_end(r)
        missing = [r for r in dict.fromkeys(rows) if r not in known]
        if missing:
            for meta in self.store.get(missing):  # KeyError for a row the store does not hold
                paths = tuple(self.resolve_path(p) for p in meta.study.image_paths)
                known[meta.row_id] = replace(meta.study, image_paths=paths)
            with self._study_lock:
                self._study_cache.update((r, known[r]) for r in missing)
                while len(self._study_cache) > STUDY_CACHE:
                    self._study_cache.popitem(last=False)
        return [known[r] for r in rows]

    def resolve_path(self, stored: str) -> str:
        """Stored image path made absolute against the data root when it is relative."""
        if not stored or self.data_root is None or Path(stored).is_absolute():
            return stored
        return str(self.data_root / stored)
