"""Calibrate the head's normal/abnormal estimate: one temperature fitted on validation.

A classifier trained with BCE alongside contrastive losses is often over-confident; dividing
its logit by a temperature T (fitted by minimising the validation negative log-likelihood)
keeps the ranking (AUROC unchanged) and makes "abnormal 80%" mean about 80%. T is stored in
the run's ``config.json`` (``calibration``), and ``eval.json`` reports the expected
calibration error (ECE) and a reliability table on the test split before and after.
"""
from __future__ import annotations

from typing import Any

import numpy as np

BINS = 10
T_RANGE = (0.05, 20.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = np.clip(_sigmoid(np.asarray(logits, np.float64) / temperature), 1e-12, 1 - 1e-12)
    y = np.asarray(labels, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising validation NLL (golden-section search on log T; the NLL is unimodal in it)."""
    logits, labels = np.asarray(logits, np.float64).reshape(-1), np.asarray(labels, np.float64).reshape(-1)
    if len(logits) == 0 or len(set(labels.tolist())) < 2:
        return 1.0
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """ECE (|accuracy - confidence| weighted by bin size) and the per-bin table, on P(abnormal)."""
    probs, labels = np.asarray(probs, np.float64).reshape(-1), np.asarray(labels, np.float64).reshape(-1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        if n == 0:
            continue
        confidence, observed = float(probs[mask].mean()), float(labels[mask].mean())
        ece += n / len(probs) * abs(observed - confidence)
        table.append({"bin": [round(float(edges[b]), 2), round(float(edges[b + 1]), 2)], "n": n,
                      "mean_predicted": round(confidence, 4), "observed_abnormal": round(observed, 4)})
    return {"ece": round(float(ece), 4), "bins": table}


def calibration_report(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
                       test_labels: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what config.json stores, what eval.json reports): T from validation, ECE on test."""
    t = fit_temperature(val_logits, val_labels)
    test_logits = np.asarray(test_logits, np.float64)
    before = reliability(_sigmoid(test_logits), test_labels)
    after = reliability(_sigmoid(test_logits / t), test_labels)
    stored = {"method": "temperature", "temperature": round(t, 6), "fitted_on": "val"}
    report = {"method": "temperature", "temperature": round(t, 4), "fitted_on": "val", "evaluated_on": "test",
              "nll_before": round(nll(test_logits, test_labels), 4), "nll_after": round(nll(test_logits, test_labels, t), 4),
              "ece_before": before["ece"], "ece_after": after["ece"],
              "reliability_before": before["bins"], "reliability_after": after["bins"]}
    return stored, report


def temperature_of(config: dict[str, Any]) -> float:
    """The stored temperature of a run's config (1.0 for runs trained before calibration)."""
    cal = config.get("calibration") or {}
    t = float(cal.get("temperature", 1.0)) if cal.get("method") == "temperature" else 1.0
    return t if np.isfinite(t) and t > 0 else 1.0


def head_logits(head: Any, image_emb: np.ndarray) -> np.ndarray:
    """The head's raw abnormal logit per row of projected image embeddings."""
    import torch

    with torch.inference_mode():
        return head.classify(torch.as_tensor(np.asarray(image_emb, np.float32))).numpy().astype(np.float64).reshape(-1)
