"""Phrase views (model.phrase_views): variety, negations, normal wordings, independence from the
benchmark, multi-positive targets, and the phrase-view loss learning side on a toy."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.findings import VOCABULARY, Finding
from data.records import Study
from model import phrase_views as pv
from model.loss import CompositeLoss, phrase_view_loss, side_swap_loss
from evaluation.phrase_benchmark import PHRASES

ROOT = Path(__file__).resolve().parents[1]
_SIDE = re.compile(r"\b(left|right)\b")
_SIZE = re.compile(r"\b(small|large|mild|minimal|moderate|extensive)\b")


def _study(i: int, tags: tuple[str, ...], report: str) -> Study:
    return Study(study_id=f"s{i}", patient_id=f"p{i}", image_paths=(f"/none/{i}.png",), findings=report, impression="",
                 label=int(tags != ("normal",)), tags=tags)


def test_variety_per_finding_and_side():
    left = pv.finding_views(Finding("pleural effusion", "left", severity="mild"))
    texts = {v.text for v in left}
    assert len(texts) >= 20  # synonyms x side wordings x sizes
    for wording in ("left pleural effusion", "left-sided effusion", "effusion on the left",
                    "pleural effusion at the left lung base", "small left pleural effusion"):
        assert wording in texts
    assert all(v.side == "left" and _SIDE.sub("", v.text) == _SIDE.sub("", v.twin) and "right" in v.twin for v in left)
    right = {v.text for v in pv.finding_views(Finding("pleural effusion", "right"))}
    assert "effusion on the right" in right and not right & texts
    bilateral = {v.text for v in pv.finding_views(Finding("pleural effusion", "bilateral"))}
    assert "bilateral pleural effusion" in bilateral and all(v.twin == "" for v in pv.finding_views(Finding("edema", "bilateral")))
    assert {"cardiomegaly", "enlarged heart", "mild cardiomegaly"} <= {v.text for v in pv.finding_views(Finding("cardiomegaly", severity="mild"))}


def test_negations_from_the_report_and_normal_wordings():
    views = pv.study_views((Finding("cardiomegaly"),), "Heart is enlarged. No pleural effusion or pneumothorax. No cardiomegaly.")
    neg = {v.text for v in views if v.negated}
    assert {"no pleural effusion", "no pneumothorax", "without effusion"} <= neg
    assert not any("cardiomegaly" in t or "heart" in t for t in neg)  # the tags assert it: never "no X"
    normal = pv.study_views((), "The lungs are clear. No acute disease.")
    assert {v.text for v in normal if v.finding is None} == set(pv.NORMAL)


def test_no_shared_code_or_template_with_the_benchmark():
    tree = ast.parse((ROOT / "model" / "phrase_views.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("phrase_benchmark" in (m or "") for m in imported)
    bench_patterns = {_SIZE.sub("{z}", _SIDE.sub("{s}", p.text)) for p in PHRASES}
    bench_patterns |= {p.text for p in PHRASES}
    assert not set(pv.templates()) & bench_patterns
    assert len(pv.templates()) >= 25


def test_views_targets_and_sampling():
    studies = [_study(0, ("Pleural Effusion/left",), "Small left effusion."),
               _study(1, ("Pleural Effusion/right",), "Right effusion."),
               _study(2, ("Pleural Effusion/bilateral",), "Bilateral effusions."),
               _study(3, ("normal",), "No pleural effusion. Lungs are clear."),
               _study(4, ("Cardiomegaly",), "Enlarged heart.")]
    views = pv.PhraseViews.build(studies, np.array([0, 1, 3]))
    assert views.offsets[5] - views.offsets[4] == 0 and views.offsets[3] - views.offsets[2] == 0  # not training rows
    row = {t: i for i, t in enumerate(views.texts)}
    ids = np.array([row["effusion on the left"], row["no pleural effusion"], row["normal chest radiograph"]])
    t = views.targets(ids, np.arange(5))
    np.testing.assert_allclose(t, [[1, 0, 0.5, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 1, 0]])
    assert views.texts[views.twin[ids[0]]] == "effusion on the right"
    at, sampled = views.sample(torch.tensor([3, 4, 0]), torch.Generator().manual_seed(0))
    assert at.tolist() == [0, 2]  # study 4 has no phrases
    assert sampled[1].item() in views.ids[views.offsets[0]:views.offsets[1]]


def test_phrase_view_loss_learns_side_on_a_toy():
    """Frozen text features that barely tell left from right (as the real text tower: cos ~0.97);
    a linear text map trained with the phrase-view term and the phrases' side-swap twins learns it."""
    g = torch.Generator().manual_seed(0)
    n, d = 64, 16
    side = torch.tensor([1.0, -1.0]).repeat(n // 2)  # +1 left, -1 right
    finding = torch.randn(d, generator=g)
    axis = torch.randn(d, generator=g)
    images = F.normalize(finding + 2.0 * side[:, None] * axis + 0.3 * torch.randn(n, d, generator=g), dim=1)
    phrases = finding + 0.1 * side[:, None] * torch.randn(d, generator=g) + 0.05 * torch.randn(n, d, generator=g)
    twins = finding - 0.1 * side[:, None] * torch.randn(d, generator=g)
    targets = (side[:, None] == side[None, :]).float()
    with torch.random.fork_rng():  # the map's start must not depend on which tests ran before in this worker
        torch.manual_seed(0)
        text_map = torch.nn.Linear(d, d)
    opt = torch.optim.Adam(text_map.parameters(), lr=0.05)

    def accuracy() -> float:
        with torch.no_grad():
            sim = F.normalize(text_map(phrases), dim=1) @ images.T
        return float((side[sim.argmax(dim=1)] == side).float().mean())

    before = accuracy()
    for _ in range(150):
        p, tw = F.normalize(text_map(phrases), dim=1), F.normalize(text_map(twins), dim=1)
        loss = phrase_view_loss(images, p, targets, 2.0) + side_swap_loss(images, p, tw, 2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy() == 1.0 and before < 0.9


def test_composite_loss_phrase_term_off_changes_nothing():
    torch.manual_seed(0)
    out = {"image_emb": F.normalize(torch.randn(6, 8), dim=1), "text_emb": F.normalize(torch.randn(6, 8), dim=1),
           "logit_scale": torch.tensor(2.0), "image_logit": torch.randn(6), "text_logit": torch.randn(6)}
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    phrases = (F.normalize(torch.randn(3, 8), dim=1), torch.ones(3, 6))
    base = CompositeLoss.from_preset("clip+supcon+bce")
    t0, p0 = base(out, y)
    t1, p1 = base(out, y, phrases=phrases)
    assert float(t0) == float(t1) and "phrase" not in p1
    t2, p2 = CompositeLoss(1, 1, 1, w_phrase=1.0)(out, y, phrases=phrases)
    assert p2["phrase"] > 0 and abs(float(t2) - float(t0) - p2["phrase"]) < 1e-5


def test_vocabulary_names_exist():
    assert set(pv.NAMES) - {"hypoinflation"} <= set(VOCABULARY)
