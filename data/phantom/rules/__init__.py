"""Finding rules, by organ system. Each rule module is imported here by name (no discovery), so
importing ``data.phantom.rules`` registers every rule; tests pin ``known_findings()``."""
from data.phantom.rules import anatomy, bones, devices, lungs, mediastinum, nodules  # noqa: F401  (registration)
from data.phantom.rules.registry import ANATOMY_RULES, DRAW_RULES, known_findings

__all__ = ["ANATOMY_RULES", "DRAW_RULES", "known_findings"]
