"""Does a query look like what the index holds? Three verdicts, fitted when the index is built.

A retrieval index always returns its nearest studies, even for a photo of a cat; this module
says when those neighbours mean nothing:

* ``not_radiograph``: the input fails a cheap pixel check (colour, a document, noise, a flat
  field or a smooth gradient, an odd aspect ratio), or the backbone's radiograph check
  (``trust.radiograph_check``: fitted once per backbone, independent of any index) refuses its
  frozen features. Only for a backbone without such a check: its features are far beyond
  anything indexed. No results, no estimate, a plain message why.
* ``unlike_index``: a radiograph-like input whose features are farther from the indexed
  studies than ``UNLIKE_QUANTILE`` of the indexed studies are from each other (held out).
  Results are shown under a warning and the normal/abnormal estimate is withheld.
* ``familiar``: the normal case.

Images are scored in the frozen backbone's feature space (where a photo, a real film and a
phantom differ; the trained head maps them all near its training data): the features are
projected on the index's top ``PCA_DIMS`` principal components and the score is the
cosine distance to the ``K`` nearest indexed studies, with the part of the query outside the
subspace counted in full. The same score of each indexed study against the others (5-fold,
fitted without it) calibrates the percentile and the thresholds. Text queries are scored the
same way against the sentences of the indexed reports in the frozen text space.
Everything is stored in one safetensors file (arrays + JSON metadata), covered by the index
manifest's checksums. Scoring one query costs well under a millisecond (``python -m bench.familiarity``).
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from data.images import colourfulness

FAMILIAR, UNLIKE_INDEX, NOT_RADIOGRAPH = "familiar", "unlike_index", "not_radiograph"
# which check decided a verdict (the verdict JSON's ``decided_by``)
BY_PIXELS, BY_RADIOGRAPH_MODEL, BY_INDEX_DISTANCE, BY_TEXT = "pixels", "radiograph_model", "index_distance", "text"
VERDICTS = (FAMILIAR, UNLIKE_INDEX, NOT_RADIOGRAPH)
FILE = "familiarity.safetensors"
FORMAT_VERSION = 1

PCA_DIMS = 128  # principal components kept of the frozen image features
K = 3  # neighbours averaged in the score
HELD_OUT = 0.2  # share of indexed studies left out of the subspace fit, for calibration
FOLDS, KFOLD_UP_TO = 5, 2000  # up to this many studies: 5-fold instead (a 20% share would be too few scores)
MAX_REFERENCE = 8000  # indexed studies kept as neighbours (larger indexes: a fixed random sample)
UNLIKE_QUANTILE = 0.99  # beyond this share of held-out indexed studies: "unlike the index"
# "Not a radiograph" from features alone: this many (q99 - q50) spreads above the median held-out
# score. On the full offline demo (3,955 studies) the 16 real pediatric films sit at 1.7-2.8
# spreads, grey photos that pass the pixel checks (camera, coins, brick, a page) at 3.5-4.3.
FAR_SPREADS = 3.2
TEXT_UNLIKE_QUANTILE = 0.995
# A "document" has more than this share of near-white pixels. Was 0.25, twice the 16 films' 0.012;
# brighter re-exports of the same films (gamma 0.6, contrast stretch: data.augment) reach 0.38 and
# were refused; pages and screenshots of the probe set sit at 0.65-0.83.
WHITE_SHARE = 0.5
MAX_SENTENCES = 3000  # report sentences kept as the text reference (most frequent first)

MESSAGES = {
    "colour": "This looks like a colour photograph or picture, not a chest radiograph.",
    "aspect": "This image's shape (a long strip) is not that of a chest radiograph.",
    "flat": "This image is almost uniform (a flat field or faint noise): there is no radiograph to search.",
    "document": "This looks like a document, a screenshot or a drawing, not a chest radiograph.",
    "noise": "This looks like noise or a fine texture, not a chest radiograph.",
    "smooth": "This looks like a smooth gradient with no anatomy, not a chest radiograph.",
    "far": "This does not look like a chest radiograph: it is far from every indexed study.",
    "radiograph_model": ("This does not look like a chest radiograph: it resembles a photograph, a page, a chart "
                         "or a texture more than any film."),
    "unlike_image": ("This radiograph is unlike the studies in the index: similar studies are shown, but they may be "
                     "poor matches, and the normal/abnormal estimate is withheld because it cannot be trusted here."),
    "unlike_text": ("This phrase does not read like a radiology finding: the matches below may be arbitrary. "
                    "Try a findings phrase such as “small left pleural effusion”."),
    "no_words": ("This query contains no words, so it cannot describe a finding: the matches below are arbitrary. "
                 "Try a findings phrase such as “small left pleural effusion”."),
    "familiar": "",
}


@dataclass(frozen=True)
class Familiarity:
    """The verdict on one query, what the page and the JSON show about it."""

    verdict: str
    score: float  # cosine distance to the nearest indexed items (higher = less familiar); nan if not scored
    percentile: float  # share (%) of held-out indexed items scoring lower
    reason: str  # key of MESSAGES
    message: str
    decided_by: str = ""  # BY_*: the check that gave the verdict
    radiograph_probability: float = float("nan")  # the radiograph check's P(radiograph); nan if not run

    def to_dict(self) -> dict[str, Any]:
        score = None if not np.isfinite(self.score) else round(float(self.score), 4)
        prob = self.radiograph_probability
        return {"verdict": self.verdict, "score": score, "percentile": round(float(self.percentile), 1),
                "reason": self.reason, "message": self.message, "decided_by": self.decided_by,
                "radiograph_probability": None if not np.isfinite(prob) else round(float(prob), 4)}

    @property
    def trusted(self) -> bool:
        return self.verdict == FAMILIAR


def verdict(name: str, reason: str, score: float = float("nan"), percentile: float = 100.0, by: str = "",
            radiograph_probability: float = float("nan")) -> Familiarity:
    return Familiarity(name, float(score), float(percentile), reason, MESSAGES[reason], by, float(radiograph_probability))


# --------------------------------------------------------------------------- pixel checks
def pixel_check(img: Image.Image, colour: float | None = None) -> str | None:
    """The reason key when the pixels alone rule out a radiograph, else None.

    Thresholds sit at about twice the extremes measured on 3,955 phantoms and 16 real films
    (grey-level sd >= 0.13, entropy >= 3.6 bits, Laplacian 0.028-0.071). The white share is
    the exception (see WHITE_SHARE): bright re-exports of real films reach 0.38.
    """
    colour = colourfulness(img) if colour is None else colour
    if colour > 0.06:
        return "colour"
    w, h = img.size
    if max(w, h) / max(min(w, h), 1) > 2.2:
        return "aspect"
    thumb = img.convert("L")
    thumb.thumbnail((128, 128))
    a = np.asarray(thumb, np.float32) / 255.0
    lap = float(np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).mean())
    if lap > 0.14:
        return "noise"
    if a.std() < 0.06:
        return "flat"
    hist = np.bincount(np.asarray(thumb, np.uint8).ravel() >> 3, minlength=32) / a.size
    entropy = float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum())
    if (a >= 0.92).mean() > WHITE_SHARE or entropy < 2.6:
        return "document"
    if lap < 0.012:
        return "smooth"
    return None


_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def text_check(text: str) -> str | None:
    """The reason key when a query cannot be a finding whatever the model says, else None."""
    return None if _LETTER.search(text or "") else "no_words"


# --------------------------------------------------------------------------- scoring
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim == 1:
        x = x[None]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class _Space:
    """Neighbour scoring in one feature space: optional PCA subspace + reference rows."""

    mean: np.ndarray  # (D,)
    basis: np.ndarray | None  # (r, D) orthonormal rows, or None (score in the full space)
    reference: np.ndarray  # (N, r) projected rows (or (N, D) unit rows without a basis)
    ref_sq: np.ndarray  # (N,) squared norm of each row's full centred feature (subspace + residual)
    calibration: np.ndarray  # sorted held-out scores of the indexed items

    def distances(self, feats: np.ndarray) -> np.ndarray:
        """Squared distances (Q, N) of unit-normalised queries to every reference row.

        With unit features, ||x - y||^2 = ||P x - P y||^2 + ||x_res - y_res||^2; the residual
        cross term is dropped (x_res . y_res ~ 0 for a query off the subspace), so the part of
        the query the index never spans counts in full.
        """
        x = _unit(feats) - self.mean
        p = x @ self.basis.T if self.basis is not None else x
        x_sq = (x * x).sum(axis=1)
        d2 = (p @ self.reference.T) * -2.0  # ||p - r||^2 + x_res^2 + r_res^2 = |x|^2 - 2 p.r + |r_full|^2
        d2 += x_sq[:, None]
        d2 += self.ref_sq[None]
        return d2

    def scores(self, feats: np.ndarray, k: int = K) -> np.ndarray:
        """Mean cosine distance to the k nearest reference rows (approximate off the subspace)."""
        with _one_blas_thread():
            return self._nearest(self.distances(feats), k)

    @staticmethod
    def _nearest(d2: np.ndarray, k: int = K) -> np.ndarray:
        k = max(1, min(k, d2.shape[1]))
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        return np.maximum(nearest, 0.0).mean(axis=1) / 2.0  # cosine distance = ||x - y||^2 / 2

    def percentile(self, score: float) -> float:
        return 100.0 * float(np.searchsorted(self.calibration, score, side="left")) / max(len(self.calibration), 1)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.calibration, q)) if len(self.calibration) else float("inf")

    @classmethod
    def fit(cls, feats: np.ndarray, dims: int | None, rng: np.random.Generator, loo: bool = False) -> "_Space":
        """Reference = every row. Calibration = held-out scores: without ``dims``, each row against
        all others (leave-one-out); with ``dims``, rows left out of the subspace fit are scored
        against all other rows, so their off-subspace part counts as it does for a new query
        (5 folds up to KFOLD_UP_TO rows; above, one fit without a random HELD_OUT share)."""
        feats = _unit(feats)
        if len(feats) > MAX_REFERENCE:
            feats = feats[np.sort(rng.choice(len(feats), MAX_REFERENCE, replace=False))]
        if dims is None or loo or len(feats) < 4:
            space = cls._fit_rows(feats, feats, dims)
            space.calibration = np.sort(space._loo_scores(np.arange(len(feats)), feats))
            return space
        order = rng.permutation(len(feats))
        if len(feats) <= KFOLD_UP_TO:  # small index: every row scored once, its fold left out of the fit
            held = []
            for fold in np.array_split(order, min(FOLDS, len(feats) // 2)):
                rest = np.setdiff1d(order, fold)
                held.append(cls._fit_rows(feats[rest], feats, dims)._loo_scores(np.sort(fold), feats))
            space = cls._fit_rows(feats, feats, dims)
            space.calibration = np.sort(np.concatenate(held))
            return space
        n_held = int(round(len(feats) * HELD_OUT))
        held_rows, fitted = np.sort(order[:n_held]), order[n_held:]
        space = cls._fit_rows(feats[fitted], feats, dims)
        space.calibration = np.sort(space._loo_scores(held_rows, feats))
        return space

    def _loo_scores(self, rows: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Score of reference rows ``rows`` (features ``feats[rows]``) against all other rows."""
        out = np.empty(len(rows), np.float32)
        for start in range(0, len(rows), 256):
            chunk = rows[start:start + 256]
            d2 = self.distances(feats[chunk])
            d2[np.arange(len(chunk)), chunk] = np.inf  # not its own neighbour
            out[start:start + len(chunk)] = self._nearest(d2, min(K, d2.shape[1] - 1))
        return out

    @classmethod
    def _fit_rows(cls, fitted: np.ndarray, rows: np.ndarray, dims: int | None) -> "_Space":
        """Subspace from ``fitted`` rows; every row of ``rows`` becomes a reference."""
        if dims is None:  # full space, no centring (cosine to unit rows)
            zero = np.zeros(rows.shape[1], np.float32)
            return cls(zero, None, rows.astype(np.float32), np.ones(len(rows), np.float32), np.zeros(0, np.float32))
        mean = fitted.mean(axis=0)
        r = int(min(dims, len(fitted) - 1, fitted.shape[1]))
        basis = _top_components(fitted - mean, max(r, 1))
        centred = rows - mean
        reference = (centred @ basis.T).astype(np.float32)
        return cls(mean.astype(np.float32), basis, reference, (centred * centred).sum(axis=1).astype(np.float32),
                   np.zeros(0, np.float32))


def _one_blas_thread():
    """These products are ~1 M multiply-adds: a multi-threaded BLAS spends more on waking its
    threads than on the work (measured 15 ms vs 0.4 ms per query on a busy 2-core host)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            _BLAS = False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=1, user_api="blas")


_BLAS = None


def _radiograph_check(backbone_id: str) -> Any:
    """The shipped (or cache-fitted) radiograph check of the backbone, None without one."""
    if not backbone_id:
        return None
    from trust.radiograph_check import for_backbone

    return for_backbone(backbone_id)


def _top_components(centred: np.ndarray, r: int) -> np.ndarray:
    """Top-r principal directions (r, D): randomized SVD (torch) is seconds even at 8000 x 5120 (the offline tower's former width)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(centred, dtype=np.float32))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        _, _, v = torch.svd_lowrank(x, q=min(r + 10, min(x.shape)), niter=3)
    finally:
        torch.random.set_rng_state(generator_state)
    return np.ascontiguousarray(v[:, :r].T.numpy(), dtype=np.float32)


# --------------------------------------------------------------------------- the model
class FamiliarityModel:
    """Image and (optionally) text familiarity of one index; see the module docstring."""

    def __init__(self, image: _Space, text: _Space | None, meta: dict[str, Any], radiograph: Any = None):
        self.image = image
        self.text = text
        self.meta = meta
        # the backbone's index-independent radiograph check (trust.radiograph_check), or None
        self.radiograph = radiograph if radiograph is not None else _radiograph_check(meta.get("backbone_id", ""))

    @property
    def unlike_threshold(self) -> float:
        return float(self.meta["image_unlike"])

    @property
    def far_threshold(self) -> float:
        """Policy (FAR_SPREADS) in code, fitted quantiles in the file: tuning needs no rebuild."""
        q50, q99 = float(self.meta["image_q50"]), float(self.meta["image_unlike"])
        return q50 + FAR_SPREADS * max(q99 - q50, 1e-6)

    # ---- fitting ----------------------------------------------------------------------
    @classmethod
    def fit(cls, image_feats: np.ndarray, text_feats: np.ndarray | None = None, seed: int = 0,
            backbone_id: str = "") -> "FamiliarityModel":
        """``image_feats``: frozen image features of the indexed studies; ``text_feats``: frozen
        text features of their report sentences (``report_sentences``), or None."""
        rng = np.random.default_rng(seed)
        image = _Space.fit(image_feats, PCA_DIMS, rng)
        q50, q99 = image.quantile(0.5), image.quantile(UNLIKE_QUANTILE)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "backbone_id": backbone_id, "count": int(len(image_feats)),
            "pca_dims": int(image.basis.shape[0]) if image.basis is not None else 0, "k": K,
            "image_q50": q50, "image_unlike": q99, "unlike_quantile": UNLIKE_QUANTILE,
            "calibration": "5-fold" if len(image_feats) <= KFOLD_UP_TO else f"{HELD_OUT:.0%} held out",
        }
        text = None
        if text_feats is not None and len(text_feats) > K:
            text = _Space.fit(text_feats, None, rng, loo=True)
            meta["text_unlike"] = text.quantile(TEXT_UNLIKE_QUANTILE)
            meta["text_sentences"] = int(len(text.reference))
        return cls(image, text, meta)

    # ---- verdicts ---------------------------------------------------------------------
    def assess_image(self, img: Image.Image | None, feats: np.ndarray, colour: float | None = None) -> Familiarity:
        """Verdict for one image query from its pixels (when given) and frozen features: the
        pixel checks, then the radiograph check (no index involved), then the index distance."""
        reason = pixel_check(img, colour) if img is not None else None
        score = float(self.image.scores(feats)[0])
        pct = self.image.percentile(score)
        if reason is not None:
            return verdict(NOT_RADIOGRAPH, reason, score, pct, BY_PIXELS)
        prob = float("nan")
        if self.radiograph is not None:
            prob = float(self.radiograph.probability(feats)[0])
            if prob < self.radiograph.threshold:
                return verdict(NOT_RADIOGRAPH, "radiograph_model", score, pct, BY_RADIOGRAPH_MODEL, prob)
        elif score > self.far_threshold:  # no radiograph check for this backbone: the index-relative rule
            return verdict(NOT_RADIOGRAPH, "far", score, pct, BY_INDEX_DISTANCE)
        if score > self.unlike_threshold:
            return verdict(UNLIKE_INDEX, "unlike_image", score, pct, BY_INDEX_DISTANCE, prob)
        return verdict(FAMILIAR, "familiar", score, pct, BY_INDEX_DISTANCE, prob)

    def image_scores(self, feats: np.ndarray) -> np.ndarray:
        return self.image.scores(feats)

    def assess_text(self, text: str, feats: np.ndarray | None) -> Familiarity | None:
        """Verdict for one text query (None when this index has no text reference)."""
        if text_check(text) is not None:
            return verdict(UNLIKE_INDEX, "no_words", by=BY_TEXT)
        if self.text is None or feats is None:
            return None
        score = float(self.text.scores(feats)[0])
        pct = self.text.percentile(score)
        if score > float(self.meta["text_unlike"]):
            return verdict(UNLIKE_INDEX, "unlike_text", score, pct, BY_INDEX_DISTANCE)
        return verdict(FAMILIAR, "familiar", score, pct, BY_INDEX_DISTANCE)

    # ---- storage ----------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        from safetensors.numpy import save_file

        tensors = {"image.mean": self.image.mean, "image.reference": self.image.reference,
                   "image.ref_sq": self.image.ref_sq, "image.calibration": self.image.calibration}
        if self.image.basis is not None:
            tensors["image.basis"] = self.image.basis
        if self.text is not None:
            tensors["text.reference"] = self.text.reference.astype(np.float16)
            tensors["text.calibration"] = self.text.calibration
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
                  metadata={"familiarity": json.dumps(self.meta)})

    @classmethod
    def load(cls, path: Path | str) -> "FamiliarityModel":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            meta = json.loads(handle.metadata()["familiarity"])
            t = {k: handle.get_tensor(k) for k in handle.keys()}
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: familiarity format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        image = _Space(t["image.mean"], t.get("image.basis"), t["image.reference"], t["image.ref_sq"],
                       t["image.calibration"])
        text = None
        if "text.reference" in t:
            ref = t["text.reference"].astype(np.float32)
            text = _Space(np.zeros(ref.shape[1], np.float32), None, ref, np.ones(len(ref), np.float32),
                          t["text.calibration"])
        return cls(image, text, meta)


# --------------------------------------------------------------------------- text reference
_SENTENCE = re.compile(r"(?<=[.;!?])\s+|\n+")
_REDACTED = re.compile(r"x{2,}", re.IGNORECASE)


def report_sentences(reports: Iterable[str], limit: int = MAX_SENTENCES) -> list[str]:
    """Distinct sentences of the indexed reports, most frequent first (ties alphabetical):
    the text reference that a findings phrase should resemble."""
    counts: dict[str, int] = {}
    for report in reports:
        for part in _SENTENCE.split(report or ""):
            sentence = _REDACTED.sub(" ", part).strip(" .;").lower()
            if len(sentence) >= 4 and _LETTER.search(sentence):
                counts[sentence] = counts.get(sentence, 0) + 1
    ranked = sorted(counts, key=lambda s: (-counts[s], s))
    return ranked[:limit]


def sentence_features(backbone: Any, sentences: Sequence[str], cache_dir: Path | None = None) -> np.ndarray:
    """Frozen text features of ``sentences``; with ``cache_dir``, kept there under a key of the backbone and the
    sentences, so an index built again over the same reports (the demo's first start after ``python -m pipeline``,
    ``python -m index build`` after ``train.py --index``) does not embed them again: ~3,000 sentences for the demo,
    seconds of a core each time."""
    import hashlib
    import io

    from data.atomic_io import atomic_write_bytes

    if cache_dir is None:
        return np.asarray(backbone.encode_texts(sentences), np.float32)
    key = hashlib.sha256("\n".join([str(backbone.backbone_id), *sentences]).encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"sentences-{key}.npy"
    with contextlib.suppress(OSError, ValueError):
        cached = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(sentences) and cached.dtype == np.float32:
            return cached
    feats = np.asarray(backbone.encode_texts(sentences), np.float32)
    buffer = io.BytesIO()
    np.save(buffer, feats, allow_pickle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return feats


def fit_for_studies(backbone: Any, image_feats: np.ndarray, reports: Sequence[str], seed: int = 0,
                    cache_dir: Path | None = None) -> FamiliarityModel:
    """Fit from the indexed studies' frozen image features and their report texts (their sentences' features
    kept in ``cache_dir`` when given: ``sentence_features``)."""
    sentences = report_sentences(reports)
    text_feats = sentence_features(backbone, sentences, cache_dir) if sentences else None
    return FamiliarityModel.fit(image_feats, text_feats, seed=seed, backbone_id=str(backbone.backbone_id))
