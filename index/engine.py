"""``SearchEngine``: the one way the app and the scripts query a built index.

It embeds a query with the encoder the index was built for, searches the image graph
(image->image, text->image) or the report graph (image->report), applies filters and
returns ranked hits with the metadata a clinician needs. Loading checks the manifest
first: another model's index raises ``IndexMismatchError``; damaged files raise
``IndexCorruptError`` before hnswlib ever reads them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
from PIL import Image

from data.records import ABNORMAL, LABEL_NAMES, NORMAL, Study
from index.ann import EXACT_THRESHOLD, ExactIndex, HnswIndex, Neighbours, normalise
from index.build import Encoder, encoder_identity
from index.familiarity import FamiliarityModel, Familiarity, NOT_RADIOGRAPH
from index.hybrid import check_mode, hybrid_search
from index.manifest import (
    FAMILIARITY,
    IMAGES,
    META,
    REPORTS,
    IndexCorruptError,
    Manifest,
    check_identity,
    read_manifest,
    recover_interrupted_swap,
    verify_files,
)
from index.store import ItemMeta, MetadataStore, StudyFields, check_side
from model.threads import query_threads

Target = Literal["images", "reports"]
TARGETS = ("images", "reports")
_LABELS = {"normal": NORMAL, "abnormal": ABNORMAL, "0": NORMAL, "1": ABNORMAL}
_ANY = {"", "any", "all"}
# Relevance floor of filtered searches: hits more than this far (cosine) below the query's best
# unfiltered match are dropped instead of shown as filler (see SearchResult.n_below_floor).
RELEVANCE_FLOOR = 0.35


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
    """Image and report graphs + metadata of one trained model. Thread-safe for queries."""

    def __init__(
        self,
        graphs: Mapping[str, HnswIndex],
        store: MetadataStore,
        manifest: Manifest,
        encoder: Encoder | None = None,
        data_root: Path | str | None = None,
        exact_threshold: int = EXACT_THRESHOLD,
        index_dir: Path | None = None,
        familiarity: FamiliarityModel | None = None,
    ):
        self._graphs = dict(graphs)
        self.familiarity = familiarity
        self._exact: dict[str, ExactIndex] = {}
        self._exact_lock = threading.Lock()
        self.store = store
        self.manifest = manifest
        self.encoder = encoder
        self.data_root = Path(data_root) if data_root is not None else None
        self.exact_threshold = exact_threshold
        self.index_dir = index_dir
        for graph in self._graphs.values():
            graph.exact_threshold = exact_threshold

    # -- loading -----------------------------------------------------------------
    @classmethod
    def load(
        cls,
        index_dir: Path | str,
        encoder: Encoder | None,
        data_root: Path | str | None = None,
        verify_checksums: bool = True,
        exact_threshold: int = EXACT_THRESHOLD,
    ) -> "SearchEngine":
        """Open an index folder for ``encoder``.

        Order matters: manifest -> model identity (``IndexMismatchError``) -> file sizes and
        sha256 (``IndexCorruptError``) -> only then hnswlib and SQLite. ``encoder=None``
        skips the identity check and allows only vector queries (for tools and benches).
        ``data_root`` resolves relative image paths; by default the build-time root.
        """
        index_dir = Path(index_dir)
        recover_interrupted_swap(index_dir)
        for attempt in range(3):
            manifest = read_manifest(index_dir)
            if encoder is not None:
                check_identity(manifest, encoder_identity(encoder), where=index_dir)
            try:
                verify_files(index_dir, manifest, checksums=verify_checksums)
                break
            except IndexCorruptError:
                # A writer may have swapped a new version in between our reads: retry on
                # the new manifest; a genuinely damaged file fails the same way again.
                if attempt == 2 or read_manifest(index_dir).to_dict() == manifest.to_dict():
                    raise
        graphs = {
            "images": HnswIndex.load(index_dir / IMAGES, dim=manifest.embed_dim, ef=manifest.ef),
            "reports": HnswIndex.load(index_dir / REPORTS, dim=manifest.embed_dim, ef=manifest.ef),
        }
        store = MetadataStore.load(index_dir / META)
        sizes = {"manifest": manifest.count, "metadata": len(store), **{k: len(g) for k, g in graphs.items()}}
        if len(set(sizes.values())) != 1:
            store.close()
            raise IndexCorruptError(f"index {index_dir} is inconsistent: item counts {sizes}; rebuild it")
        if data_root is None and manifest.data_root and Path(manifest.data_root).is_dir():
            data_root = manifest.data_root
        familiarity = FamiliarityModel.load(index_dir / FAMILIARITY) if FAMILIARITY in manifest.files else None
        return cls(graphs, store, manifest, encoder, data_root, exact_threshold, index_dir, familiarity)

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
            if self.familiarity is not None and hasattr(encoder, "embed_images_with_features"):
                feats, emb = encoder.embed_images_with_features([img])
                familiarity = self.familiarity.assess_image(img, feats, colour)
            else:
                emb = encoder.embed_images([img])
            emb = normalise(emb)
        parsed = Filters.parse(filters)
        if familiarity is not None and familiarity.verdict == NOT_RADIOGRAPH:
            return SearchResult([], "images", "image", parsed, self._n_candidates(parsed), exact, None, [], familiarity)
        probability = float(np.asarray(encoder.abnormal_probability(emb)).reshape(-1)[0])
        if familiarity is not None and not familiarity.trusted:
            probability = None
        images = self._search(emb, k, filters, "images", exact, "image")
        reports = self._search(emb, k, filters, "reports", exact, "image")
        return SearchResult(
            hits=images.hits,
            target="images",
            query_type="image",
            filters=images.filters,
            n_candidates=images.n_candidates,
            exact=images.exact,
            abnormal_probability=probability,
            reports=reports.hits,
            familiarity=familiarity,
            n_below_floor=images.n_below_floor,
        )

    def search_by_text(self, text: str, k: int = 10, filters: Any = None, exact: bool = False,
                       mode: str = "dense") -> SearchResult:
        """Radiographs matching a findings phrase (text->image), with the phrase's familiarity.
        ``mode="hybrid"`` fuses the indexed reports' channels in (index.hybrid); dense is the paper's setting."""
        if not text or not text.strip():
            raise ValueError("the text query is empty")
        mode = check_mode(mode)
        encoder = self._require_encoder()
        text = text.strip()
        familiarity = None
        with query_threads():
            if self.familiarity is not None and hasattr(encoder, "embed_text_with_features"):
                feats, emb = encoder.embed_text_with_features(text)
                familiarity = self.familiarity.assess_text(text, feats)
            else:
                emb = encoder.embed_texts([text])
            emb = normalise(emb)
        if mode == "hybrid":  # hybrid text search: index.hybrid
            return hybrid_search(self, text, emb, k, filters, exact, familiarity)
        result = self._search(emb, k, filters, "images", exact, "text")
        return replace(result, familiarity=familiarity)

    def search_by_image_vector(
        self, vec: np.ndarray, k: int = 10, filters: Any = None, target: Target = "images", exact: bool = False,
        floor: float | None = None,
    ) -> SearchResult:
        """Search with a precomputed embedding (any query in the shared space, image or text).
        Exactly k filtered hits unless a relevance ``floor`` is given (the app's queries use one)."""
        return self._search(vec, k, filters, target, exact, "vector", floor)

    # -- internals -----------------------------------------------------------------
    def _require_encoder(self) -> Encoder:
        if self.encoder is None:
            raise RuntimeError("this engine was loaded without an encoder; only vector queries are possible")
        return self.encoder

    def _exact_index(self, target: str) -> ExactIndex:
        """Exact backend over the graph's own stored vectors, built on first use."""
        with self._exact_lock:
            if target not in self._exact:
                self._exact[target] = ExactIndex(self._graphs[target].vectors(), normalised=True)
            return self._exact[target]

    def _search(self, vec: np.ndarray, k: int, filters: Any, target: str, exact: bool, query_type: str,
                floor: float | None = RELEVANCE_FLOOR) -> SearchResult:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        query = np.asarray(vec, dtype=np.float32)
        if query.ndim == 2 and query.shape[0] == 1:
            query = query[0]
        if query.shape != (self.manifest.embed_dim,):
            raise ValueError(f"query vector has shape {query.shape}; expected ({self.manifest.embed_dim},)")
        parsed = Filters.parse(filters)
        allowed = (
            self.store.matching_ids(parsed.label, parsed.view, parsed.finding, parsed.side) if parsed.active else None
        )
        n_candidates = len(allowed) if allowed is not None else self.count
        use_exact = exact or self.count < self.exact_threshold
        backend = self._exact_index(target) if use_exact else self._graphs[target]
        found: Neighbours = backend.search(query[None, :], int(k), allowed)
        ids, scores = found.ids[0], found.scores[0]
        cut = 0
        if allowed is not None and floor is not None and len(scores):
            best = backend.search(query[None, :], 1, None).scores[0]
            if len(best):
                keep = scores >= float(best[0]) - floor
                cut = int((~keep).sum())
                ids, scores = ids[keep], scores[keep]
        hits = self.hits_at(ids, scores)
        return SearchResult(hits, target, query_type, parsed, n_candidates, found.exact, n_below_floor=cut)

    def _n_candidates(self, parsed: Filters) -> int:
        if not parsed.active:
            return self.count
        return len(self.store.matching_ids(parsed.label, parsed.view, parsed.finding))

    def hits_at(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Ranked hits for row ids and their scores (in that order), image paths resolved."""
        metas = self.store.get(ids.tolist())
        return [self._hit(rank, float(score), meta) for rank, (score, meta) in enumerate(zip(scores, metas), start=1)]

    def _hit(self, rank: int, score: float, meta: ItemMeta) -> Hit:
        study = replace(meta.study, image_paths=tuple(self.resolve_path(p) for p in meta.study.image_paths))
        return Hit(rank=rank, score=score, row_id=meta.row_id, study=study)

    def resolve_path(self, stored: str) -> str:
        """Stored image path made absolute against the data root when it is relative."""
        if not stored or self.data_root is None or Path(stored).is_absolute():
            return stored
        return str(self.data_root / stored)
