"""A second findings-phrase set, in other words than the benchmark and the training generator.

Why: the phrase-view training (``model.phrase_views``) and the benchmark (``evaluation.phrase_benchmark``)
were written by the same hands; a head that learnt their wording could score well on one set and
still miss "effusion of the left pleural space". These phrases use other words, other orders and
other side wordings; each has its relevance rule (the benchmark's :class:`Phrase`). TEST ONLY:
nothing is chosen or tuned on them (eval.json ``phrase_benchmark_other_wording``).
"""
from __future__ import annotations

from data.findings import BILATERAL, LEFT, RIGHT
from evaluation.phrase_benchmark import Phrase


def _sides(name: str, *wordings: str) -> list[Phrase]:
    """Each wording ({s} = left / right) on both sides."""
    return [Phrase(w.format(s=s), name, s) for w in wordings for s in (LEFT, RIGHT)]


OTHER_PHRASES: tuple[Phrase, ...] = tuple(
    _sides("pleural effusion", "effusion of the {s} pleural space", "{s} hemithorax pleural fluid collection",
           "blunting from a {s} effusion")
    + [Phrase("tiny effusion layering on the left", "pleural effusion", LEFT, "mild"),
       Phrase("moderate to large right pleural fluid", "pleural effusion", RIGHT, "severe"),
       Phrase("fluid in both pleural spaces", "pleural effusion", BILATERAL)]
    + _sides("pneumothorax", "pneumothorax on the {s} side", "collapsed {s} lung from pneumothorax",
             "air in the {s} pleural space")
    + [Phrase("tiny apical pneumothorax on the left", "pneumothorax", LEFT, "mild")]
    + _sides("opacity", "{s} basilar airspace disease", "hazy density in the {s} lung")
    + [Phrase("patchy opacities in both lungs", "opacity", BILATERAL)]
    + _sides("atelectasis", "plate-like atelectasis at the {s} base", "{s} lower lung collapse")
    + [Phrase("atelectatic change at both bases", "atelectasis", BILATERAL)]
    + _sides("consolidation", "dense consolidation within the {s} lung", "{s} lung consolidative change")
    + _sides("pneumonia", "{s} lung infiltrate concerning for pneumonia")
    + _sides("nodule", "solitary nodule within the {s} lung")
    + _sides("granuloma", "old granulomatous calcification, {s} lung")
    + _sides("scarring", "scar at the {s} apex")
    + _sides("elevated diaphragm", "raised {s} hemidiaphragm")
    + _sides("fracture", "healed fracture of a {s} rib")
    + [Phrase("heart is enlarged", "cardiomegaly"), Phrase("enlargement of the cardiac silhouette", "cardiomegaly"),
       Phrase("borderline heart size enlargement", "cardiomegaly", severity="mild"),
       Phrase("overexpanded lungs", "hyperinflation"), Phrase("chronic obstructive lung disease", "emphysema"),
       Phrase("poor inspiration with small lung volumes", "hypoinflation"),
       Phrase("spondylotic change of the spine", "degenerative change"),
       Phrase("curvature of the spine", "scoliosis"), Phrase("uncoiled aorta", "aortic tortuosity"),
       Phrase("calcified plaque in the aortic knob", "atherosclerosis"),
       Phrase("stomach herniated above the diaphragm", "hiatal hernia"),
       Phrase("fluid overload in the lungs", "edema"), Phrase("engorged pulmonary vessels", "congestion"),
       Phrase("indwelling line in good position", "support device")]
    + [Phrase("pleural spaces are clear of fluid", "pleural effusion", negated=True),
       Phrase("pneumothorax is not seen", "pneumothorax", negated=True),
       Phrase("lungs free of consolidation", "consolidation", negated=True),
       Phrase("heart not enlarged", "cardiomegaly", negated=True),
       Phrase("nothing to suggest pneumonia", "pneumonia", negated=True)]
    + [Phrase(t) for t in ("chest film within normal limits", "no radiographic abnormality of the chest",
                           "lungs and heart look normal", "negative chest study", "healthy chest x ray",
                           "clear lung fields and normal heart")]
)
