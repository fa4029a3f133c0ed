"""The second wording set (test only) and the side-swap rate of image queries (i2t, i2i)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from data.findings import VOCABULARY, Finding
from evaluation.phrase_benchmark import PHRASES, benchmark
from evaluation.phrase_other_wording import OTHER_PHRASES
from model.phrase_views import NEGATED, NORMAL, finding_views, wordings
from evaluation.relevance_metrics import encode_profiles
from evaluation.side_metrics import side_swap_rate


def _generator_outputs() -> set[str]:
    """Every phrase the training generator can write, for every finding, side and size."""
    names = {p.finding for p in OTHER_PHRASES if p.finding} | set(VOCABULARY)
    out = set(NORMAL)
    for name, side, sev in itertools.product(names, ("", "left", "right", "bilateral"), ("", "mild", "moderate", "severe")):
        out |= {v.text for v in finding_views(Finding(name, side, severity=sev))}
        out |= {t.format(n=n) for t in NEGATED for n in wordings(name)}
    return out


def test_at_least_60_phrases_in_other_words():
    texts = [p.text for p in OTHER_PHRASES]
    assert len(texts) >= 60 and len(set(texts)) == len(texts)
    assert not set(texts) & {p.text for p in PHRASES}
    assert not set(texts) & _generator_outputs()
    kinds = {("normal" if p.finding is None else "negated" if p.negated else p.side or "unsided") for p in OTHER_PHRASES}
    assert kinds == {"normal", "negated", "left", "right", "bilateral", "unsided"}


@pytest.mark.parametrize("text, findings, gain, hit", [
    ("effusion of the left pleural space", (Finding("pleural effusion", "left"),), 1.0, True),
    ("effusion of the left pleural space", (Finding("pleural effusion", "right"),), 0.25, False),
    ("effusion of the left pleural space", (Finding("pleural effusion", "bilateral"),), 0.5, True),
    ("effusion of the left pleural space", (Finding("cardiomegaly"),), 0.0, False),
    ("pneumothorax on the right side", (Finding("pneumothorax", "right"),), 1.0, True),
    ("tiny effusion layering on the left", (Finding("pleural effusion", "left"),), 0.75, True),
    ("heart is enlarged", (Finding("cardiomegaly"),), 1.0, True),
    ("pneumothorax is not seen", (Finding("pleural effusion", "left"),), 1.0, True),
    ("pneumothorax is not seen", (Finding("pneumothorax", "left"),), 0.0, False),
    ("chest film within normal limits", (), 1.0, True),
    ("chest film within normal limits", (Finding("cardiomegaly"),), 0.0, False),
])
def test_relevance_rules(text, findings, gain, hit):
    phrase = next(p for p in OTHER_PHRASES if p.text == text)
    assert phrase.gain(findings) == gain and phrase.hit(findings) == hit


def test_the_benchmark_runs_any_phrase_list():
    findings = [(Finding("pleural effusion", "left"),), (Finding("pleural effusion", "right"),), ()]
    phrases = [p for p in OTHER_PHRASES if p.text in ("effusion of the left pleural space", "chest film within normal limits")]
    image = np.eye(3)
    result = benchmark(np.array([[1.0, 0.5, 0], [0, 0, 1.0]]), image, findings, phrases, k=2, per_phrase=True)
    assert result["n_phrases"] == 2 and result["side_swap_rate"] == 0.5  # the right effusion is 2nd for "left"
    np.testing.assert_allclose(result["_per_phrase"]["finding_P@10"], [0.5, 0.5])


def test_side_swap_rate_of_image_queries_on_a_hand_built_case():
    profiles = [{"pleural effusion": frozenset({"left"})}, {"pleural effusion": frozenset({"right"})},
                {"pleural effusion": frozenset({"left", "right"})}, {"pleural effusion": frozenset()},
                {"cardiomegaly": frozenset()}]
    codes, _ = encode_profiles(profiles)
    # query 0 (left effusion): top 2 = right (swapped), bilateral (shares the left); unsided and normal do not count
    sim = np.array([[9, 8, 7, 1, 0], [0, 9, 1, 2, 3], [0, 0, 9, 0, 0], [0, 0, 0, 9, 0], [0, 0, 0, 0, 9]], float)
    r = side_swap_rate(sim, codes, codes, k=2)
    # queries: 0 -> hits 0 (same), 1 (swap); 1 -> hits 1 (same), 4 (none); 2, 3, 4 are not one-sided queries
    assert r["n_sided_hits"] == 3 and r["side_swap_rate"] == pytest.approx(1 / 3)
    i2i = side_swap_rate(sim, codes, codes, exclude_self=True, k=2)  # 0 -> 1 (swap), 2 (both); 1 -> 4, 3 (neither sided)
    assert i2i["n_sided_hits"] == 2 and i2i["side_swap_rate"] == 0.5
    # chance over all candidates but self: query 0 sees 1 (swap), 2 (ok); query 1 sees 0 (swap), 2 (ok)
    assert i2i["chance_side_swap_rate"] == 0.5
