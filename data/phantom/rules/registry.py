"""The two rule registries: tag heading -> anatomy rule (edits ``Anatomy``) or draw rule (draws in ``Scene``).

Rule modules register with the decorators; ``data.phantom.rules`` imports every rule module.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from data.phantom.anatomy import Anatomy
from data.phantom.scene import Scene
from data.phantom.tags import Tag

AnatomyRule = Callable[[Anatomy, Tag, np.random.Generator], None]
DrawRule = Callable[[Scene, Tag, np.random.Generator], None]
ANATOMY_RULES: dict[str, AnatomyRule] = {}
DRAW_RULES: dict[str, DrawRule] = {}


def anatomy_rule(*names: str):
    def deco(fn: AnatomyRule) -> AnatomyRule:
        for n in names:
            ANATOMY_RULES[n] = fn
        return fn

    return deco


def draw_rule(*names: str):
    def deco(fn: DrawRule) -> DrawRule:
        for n in names:
            DRAW_RULES[n] = fn
        return fn

    return deco


def known_findings() -> set[str]:
    """Lower-case tag headings the renderer draws (the rest are ignored)."""
    return set(ANATOMY_RULES) | set(DRAW_RULES)
