"""How much left/right do the frozen features carry? Linear probes, printed as JSON.

    python -m bench.side_probe                      # the cached features + every pooling alternative
    python -m bench.side_probe --save bench/results/side_probe.json

Studies with findings on one side only (left or right, not both), the default patient split: a logistic
regression fitted on train, AUROC of "left" on validation (0.5 = no side information; the test split is
never read). Why: the dense phrase side-swap of issue #23 stays above target for every text input, and
this says whether the image side can carry it, and which pooling of the offline tower keeps the most.

Two probes per feature: "unit, C=1" (L2-normalised features, sklearn's default C: the protocol of the
first figure, 0.731 for the former 2x2 grid of the last map) and "standardised, CV C" (per-dimension standardised, C chosen by
5-fold cross-validated AUROC on train only), since C=1 on unit vectors of thousands of dimensions
under-fits, and more dimensions would otherwise look worse for the wrong reason.

The pooling alternatives come from ONE pass of the offline tower over the probe's studies (train + val
with a one-sided finding): EfficientNet-Lite0's last feature map (1280 x 7 x 7) and the output of its
blocks[4] stage (112 x 14 x 14, stride 16), each pooled many ways.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.common import machine, setup_environment
from bench.train_head import cached_demo_features, offline_backbone_identity
from data.atomic_io import atomic_write_json
from data.findings import LEFT, RIGHT
from data.split import patient_split

MID_STAGE = 4  # EfficientNet-Lite0 blocks[4]: 112 channels at stride 16 (14 x 14 at 224 px)
_avg = torch.nn.functional.adaptive_avg_pool2d
_max = torch.nn.functional.adaptive_max_pool2d


def _grid(fmap: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return _avg(fmap, (rows, cols)).flatten(1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


# name -> pooling of (final map F, blocks[4] map B); concatenations join unit-normalised parts
POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "final: global average (1x1)": lambda f, b: _grid(f, 1, 1),
    "final: halves (1x2)": lambda f, b: _grid(f, 1, 2),
    "final: grid 2x2 (the former tower)": lambda f, b: _grid(f, 2, 2),
    "final: halves without the midline column": lambda f, b: torch.cat([f[..., :3].mean((2, 3)), f[..., 4:].mean((2, 3))], 1),
    "final: grid 2 rows x 4 columns": lambda f, b: _grid(f, 2, 4),
    "final: grid 3 rows x 2 columns": lambda f, b: _grid(f, 3, 2),
    "final: grid 3x3": lambda f, b: _grid(f, 3, 3),
    "final: grid 2x2 avg + max": lambda f, b: torch.cat([_unit(_grid(f, 2, 2)), _unit(_max(f, 2).flatten(1))], 1),
    "final: halves avg + max": lambda f, b: torch.cat([_unit(_grid(f, 1, 2)), _unit(_max(f, (1, 2)).flatten(1))], 1),
    "final: grid 2x2 + lower-zone halves": lambda f, b: torch.cat([_unit(_grid(f, 2, 2)), _unit(_grid(f[:, :, 4:], 1, 2))], 1),
    "blocks[4]: grid 4x4 (the tower now)": lambda f, b: _grid(b, 4, 4),
    "blocks[4]: grid 7x7": lambda f, b: _grid(b, 7, 7),
    "final grid 2x2 + blocks[4] grid 4x4": lambda f, b: torch.cat([_unit(_grid(f, 2, 2)), _unit(_grid(b, 4, 4))], 1),
}


def one_side(study) -> str | None:
    sides = {f.side for f in study.structured_findings if f.side in (LEFT, RIGHT)}
    return sides.pop() if len(sides) == 1 else None


def probe(X: np.ndarray, y_train: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
    """Both probes' validation AUROC for features X (train rows first, then validation rows)."""
    n = len(y_train)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    plain = LogisticRegression(max_iter=2000).fit(X[:n], y_train)
    tuned = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[1e-4, 1e-3, 1e-2, 1e-1], cv=5, scoring="roc_auc",
                                                                 max_iter=3000)).fit(X[:n], y_train)
    return {"dim": int(X.shape[1]),
            "val AUROC (unit, C=1)": round(float(roc_auc_score(y_val, plain.predict_proba(X[n:])[:, 1])), 3),
            "val AUROC (standardised, CV C)": round(float(roc_auc_score(y_val, tuned.predict_proba(X[n:])[:, 1])), 3),
            "C chosen on train": float(tuned[-1].C_[0])}


def feature_maps(studies, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The offline tower's last feature map and its blocks[MID_STAGE] output for ``studies`` (one pass)."""
    from data.images import load_radiograph
    from model.backbones import OfflineBackbone

    backbone = OfflineBackbone()
    model = backbone.image_model
    final, mid = [], []
    with torch.inference_mode():
        for start in range(0, len(studies), batch):
            pixels = torch.stack([backbone.preprocess(load_radiograph(s.image_path).image) for s in studies[start:start + batch]])
            x = model.blocks[:MID_STAGE + 1](model.bn1(model.conv_stem(pixels.contiguous(memory_format=torch.channels_last))))
            mid.append(x.float().clone())
            final.append(model.bn2(model.conv_head(model.blocks[MID_STAGE + 1:](x))).float().clone())
    return torch.cat(final), torch.cat(mid)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--save", type=Path, help="write the JSON here too")
    p.add_argument("--no-poolings", action="store_true", help="only the cached features (no tower pass)")
    args = p.parse_args(argv)
    setup_environment()
    found = cached_demo_features(offline_backbone_identity())
    if found is None:
        raise SystemExit("the full demo's features are not cached: run `python -m pipeline` once")
    studies, image, text = found
    side = [one_side(s) for s in studies]
    split = patient_split(studies, seed=0)
    row = {s.study_id: i for i, s in enumerate(studies)}
    parts = {p: [row[i] for i in split[p] if side[row[i]]] for p in ("train", "val")}
    y = {p: np.array([side[i] == LEFT for i in rows]) for p, rows in parts.items()}
    rows = parts["train"] + parts["val"]
    out: dict = {"n_train": len(parts["train"]), "n_val": len(parts["val"]), "split": "default patient split (seed 0); test unused"}
    out["backbone_id"] = offline_backbone_identity().backbone_id
    for name, X in (("frozen image features (cached)", image), ("frozen report features (cached)", text)):
        out[name] = probe(X[rows], y["train"], y["val"])
    if not args.no_poolings:
        t0 = time.time()
        final, mid = feature_maps([studies[i] for i in rows])
        out["tower pass s"] = round(time.time() - t0, 1)
        out["poolings"] = {name: probe(pool(final, mid).numpy(), y["train"], y["val"]) for name, pool in POOLINGS.items()}
    out["machine"] = machine()
    print(json.dumps(out, indent=1))
    if args.save:
        atomic_write_json(args.save, out)
    return out


if __name__ == "__main__":
    main()
