"""The evaluation step (``pipeline.steps``): every model row of eval.json on the held-out test split.

Rows: the frozen backbone (zero-shot where the towers share a space; image->image always), a
frozen cross-modal baseline fitted on the training split (ridge text->image, for towers without
a shared space), and the fine-tuned head. Then the model-free chance and ceiling rows, the
findings-phrase benchmark per model, and paired bootstrap differences of the fine-tuned head
to the best frozen baseline on the same test queries.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from evaluation.tables import evaluate_per_query, reference_rows, summarize
from model.head import RetrievalHead, project  # noqa: F401 (project: re-exported for the run's callers)
from evaluation.linear_baseline import fit_on_train
from evaluation.phrase_benchmark import PHRASES, benchmark
from model.knowledge import text_inputs
from evaluation.relevance_metrics import ndcg_at_k, paired_bootstrap_diff, relevance_matrix

GRADED = ("nDCG@10", "finding_P@10")


def _val_ndcg(codes: np.ndarray):
    """Score for choosing the ridge penalty on validation rows: mean nDCG@10 of i2t and t2i."""
    def score(zi: np.ndarray, zt: np.ndarray, rows: np.ndarray) -> float:
        rel = relevance_matrix(codes[rows], codes[rows])
        sim = zi @ zt.T
        return float(np.mean([ndcg_at_k(np.argsort(-d, axis=1, kind="stable")[:, :10], rel).mean() for d in (sim, sim.T)]))
    return score


def evaluate_models(
    backbone, head: RetrievalHead, Xi: torch.Tensor, Xt: torch.Tensor, labels: np.ndarray,
    rows: dict[str, np.ndarray], codes: np.ndarray, study_findings: Sequence, n_bootstrap: int,
    phrase_feats: np.ndarray | None = None, keep_per_query: bool = False, other_phrase_feats: np.ndarray | None = None,
    report_texts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """eval.json's content (minus run bookkeeping). ``study_findings[i]`` = findings of study row i;
    ``phrase_feats`` = frozen text features of :data:`evaluation.phrase_benchmark.PHRASES`,
    ``other_phrase_feats`` of :data:`evaluation.phrase_other_wording.OTHER_PHRASES` (the second wording set);
    ``report_texts[i]`` = the report study row i's features were embedded from (needed by a head with
    knowledge input, ``model.knowledge``; the frozen baselines read the features alone)."""
    name = backbone.name
    test = rows["test"]
    y, tc = labels[test], codes[test]
    test_findings = [study_findings[i] for i in test]
    per_query: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    phrases: dict[str, dict[str, float]] = {}
    notes: dict[str, str] = {}
    frozen_i, frozen_t = Xi[test].numpy(), Xt[test].numpy()
    frozen = f"{name} (frozen)"
    if backbone.shared_space:
        per_query[frozen] = evaluate_per_query(frozen_i, frozen_t, y, tc)
        if phrase_feats is not None:
            phrases[frozen] = benchmark(phrase_feats, frozen_i, test_findings)
        baseline = frozen
    else:
        per_query[frozen] = evaluate_per_query(frozen_i, None, y, tc)
        notes[frozen] = "towers have no shared space: image->image only (frozen image features)"
        npi, npt = Xi.numpy(), Xt.numpy()
        ridge = fit_on_train(npt, npi, rows["train"], rows["val"], _val_ndcg(codes))
        baseline = f"{name} (frozen) + ridge text->image"
        ridge_i, ridge_t = ridge.encode_image(frozen_i), ridge.encode_text(frozen_t)
        per_query[baseline] = evaluate_per_query(ridge_i, ridge_t, y, tc, i2i=False)
        notes[baseline] = (f"a linear map from frozen text to frozen (standardised) image features, fitted in closed "
                           f"form on the training split only (ridge, lambda={ridge.lam:g} chosen on validation)")
        if phrase_feats is not None:
            phrases[baseline] = benchmark(ridge.encode_text(phrase_feats), ridge.encode_image(frozen_i), test_findings)
    tuned = f"{name} + head (fine-tuned)"
    zi = project(head, Xi[test], "image")
    zt = project(head, text_inputs(head, Xt[test], None if report_texts is None else [report_texts[i] for i in test]), "text")
    per_query[tuned] = evaluate_per_query(zi, zt, y, tc)
    if phrase_feats is not None:
        head_phrases = text_inputs(head, phrase_feats, [p.text for p in PHRASES])
        phrases[tuned] = benchmark(project(head, torch.from_numpy(head_phrases), "text"), zi, test_findings,
                                   per_phrase=keep_per_query)
    models = {m: {d: summarize(v, n_bootstrap) for d, v in dirs.items()} for m, dirs in per_query.items()}
    add_side_swap(models[tuned], zi, zt, tc)  # image queries' side errors (evaluation.side_metrics)
    add_side_swap(models[frozen], frozen_i, frozen_t if backbone.shared_space else None, tc)
    if baseline != frozen:
        add_side_swap(models[baseline], ridge_i, ridge_t, tc)
    with torch.no_grad():
        prob = torch.sigmoid(head.classify(torch.from_numpy(zi))).numpy()
    if len(set(y.tolist())) == 2:
        models[tuned]["abnormal_auroc"] = float(roc_auc_score(y, prob))
    refs = reference_rows(y, tc)
    comparisons = {f"{tuned} - {baseline}": _diffs(per_query[tuned], per_query[baseline], n_bootstrap)}
    if baseline != frozen:
        comparisons[f"{tuned} - {frozen}"] = _diffs(per_query[tuned], per_query[frozen], n_bootstrap)
    report: dict[str, Any] = {"models": models, "notes": notes, "chance": refs["chance"], "ceiling": refs["ceiling"],
                              "phrase_benchmark": phrases, "comparisons": comparisons}
    if other_phrase_feats is not None:  # the second wording set: test only, the same rows and keys
        from evaluation.phrase_other_wording import OTHER_PHRASES

        report["phrase_benchmark_other_wording"] = {
            tuned: benchmark(project(head, torch.from_numpy(text_inputs(head, other_phrase_feats,
                                                                        [p.text for p in OTHER_PHRASES])), "text"),
                             zi, test_findings, OTHER_PHRASES),
            **({frozen: benchmark(other_phrase_feats, frozen_i, test_findings, OTHER_PHRASES)} if backbone.shared_space
               else {baseline: benchmark(ridge.encode_text(other_phrase_feats), ridge_i, test_findings, OTHER_PHRASES)})}
    if keep_per_query:
        report["_per_query"] = per_query
    return report


def add_side_swap(row: dict[str, Any], image: np.ndarray, text: np.ndarray | None, codes: np.ndarray) -> None:
    """``side_swap_rate`` (+ its chance and count) into the i2t and i2i entries of one model row."""
    from evaluation.side_metrics import side_swap_rate

    if text is not None and "i2t" in row:
        row["i2t"].update(side_swap_rate(image @ text.T, codes, codes))
    if "i2i" in row:
        row["i2i"].update(side_swap_rate(image @ image.T, codes, codes, exclude_self=True))


def _diffs(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]], n_bootstrap: int) -> dict:
    """Paired bootstrap differences a - b of the graded metrics, direction by direction."""
    return {d: {m: paired_bootstrap_diff(a[d][m], b[d][m], max(n_bootstrap, 200)) for m in GRADED if m in b[d]}
            for d in a if d in b}


def calibrate_head(head: RetrievalHead, Xi: torch.Tensor, labels: np.ndarray, rows: dict) -> tuple[dict, dict]:
    """Temperature of the abnormal estimate fitted on val, ECE/reliability on test (evaluation.calibration)."""
    from evaluation.calibration import calibration_report, head_logits

    logits = {k: head_logits(head, project(head, Xi[rows[k]], "image")) for k in ("val", "test")}
    return calibration_report(logits["val"], labels[rows["val"]], logits["test"], labels[rows["test"]])
