"""A search engine as the app loads one, with an untrained head over a random gallery: what
``bench.query`` and ``bench.runtime_compare`` time image queries through (the backbone is real,
so its cost is; the head and gallery only need the right shapes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import stopwatch


def build_engine(backbone_name: str, folder: Path, n_gallery: int = 4000, runtime: str = "torch"):
    """Untrained head + index of random unit vectors, loaded as the app loads one; the towers
    run in ``runtime`` (``runtime.inference``)."""
    import torch

    from bench.search import synthetic_studies
    from index.build import build_index, encoder_identity
    from index.engine import SearchEngine
    from model.factory import create_backbone
    from model.head import RetrievalHead
    from model.retrieval_model import RetrievalModel

    with stopwatch() as t:
        backbone = create_backbone(backbone_name, runtime=runtime)
    torch.manual_seed(0)
    model = RetrievalModel(backbone, RetrievalHead(backbone.image_dim, backbone.text_dim))
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((2, n_gallery, model.embed_dim)).astype(np.float32)
    build_index(folder, gallery[0], gallery[1], synthetic_studies(n_gallery), encoder_identity(model))
    return SearchEngine.load(folder, model), round(t["s"], 1)


def image_query(engine, data: bytes):
    from data.images import load_radiograph

    return engine.search_by_image(load_radiograph(data).image, k=10)
