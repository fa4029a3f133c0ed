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
_ANATOMY_RULES: dict[str, AnatomyRule] = {}
_DRAW_RULES: dict[str, DrawRule] = {}


def _anatomy_rule(*names: str):
    def deco(fn: AnatomyRule) -> AnatomyRule:
        for n in names:
            _ANATOMY_RULES[n] = fn
        return fn

    return deco


def _draw_rule(*names: str):
    def deco(fn: DrawRule) -> DrawRule:
        for n in names:
            _DRAW_RULES[n] = fn
        return fn

    return deco


def known_findings() -> set[str]:
    """Lower-case tag headings the renderer draws (the rest are ignored)."""
    return set(_ANATOMY_RULES) | set(_DRAW_RULES)
