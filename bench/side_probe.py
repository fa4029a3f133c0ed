"""How much left/right do the frozen features carry? A linear probe, printed as JSON.

    python -m bench.side_probe

Studies with findings on one side only (left or right, not both), the default patient split: a logistic
regression on the frozen image features (and, for comparison, the frozen report features) fitted on
train, AUROC of "left" on validation (0.5 = no side information). Why: the dense phrase side-swap of
issue #23 stays above target for every text input, and this says whether the image side can carry it.
"""
from __future__ import annotations

import json

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from bench.common import machine, setup_environment
from bench.train_head import cached_demo_features, offline_backbone_identity
from data.findings import LEFT, RIGHT
from data.split import patient_split


def one_side(study) -> str | None:
    sides = {f.side for f in study.structured_findings if f.side in (LEFT, RIGHT)}
    return sides.pop() if len(sides) == 1 else None


def main() -> dict:
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
    out = {"n_train": len(parts["train"]), "n_val": len(parts["val"]), "machine": machine()}
    for name, X in (("frozen image features", image), ("frozen report features", text)):
        clf = LogisticRegression(max_iter=2000).fit(X[parts["train"]], y["train"])
        out[f"val AUROC left vs right: {name}"] = round(float(roc_auc_score(y["val"], clf.predict_proba(X[parts["val"]])[:, 1])), 3)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
