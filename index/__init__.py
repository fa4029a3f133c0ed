"""Retrieval engine: hnswlib graphs of study images and reports, SQLite metadata, a
checksummed manifest, and ``SearchEngine`` on top. Everything that searches goes through it."""
from index.ann import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, EXACT_THRESHOLD, ExactIndex, HnswIndex
from index.build import Encoder, add_studies, build_index, embed_into_head_space, encoder_identity
from index.engine import Filters, Hit, SearchEngine, SearchResult
from index.manifest import IndexCorruptError, IndexLoadError, IndexMismatchError, Manifest, read_manifest

__all__ = [
    "DEFAULT_EF",
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_M",
    "EXACT_THRESHOLD",
    "Encoder",
    "ExactIndex",
    "Filters",
    "Hit",
    "HnswIndex",
    "IndexCorruptError",
    "IndexLoadError",
    "IndexMismatchError",
    "Manifest",
    "SearchEngine",
    "SearchResult",
    "add_studies",
    "build_index",
    "embed_into_head_space",
    "encoder_identity",
    "read_manifest",
]
