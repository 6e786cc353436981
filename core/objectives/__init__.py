"""The registry of training objectives: every module of this package registers one (see ``base``).

``build_objective(spec)`` builds the registered class of ``spec.type``; ``core.spec`` builds the job
spec's ``objective`` union from ``OBJECTIVES``. To add an objective, add a module here (and its
test): CONTRIBUTING.md, "Adding an objective".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.objectives.base import OBJECTIVES, Objective, ObjectiveSpec, check_stage, register_objective
from core.registry import import_submodules

MODULES = import_submodules(__name__, skip=("base",))


def objective_class(type_name: str) -> type[Objective]:
    """The registered class of ``type_name`` (``CoreError`` naming ``objective.type`` if unknown)."""
    return OBJECTIVES.get(type_name)


def build_objective(cfg: ObjectiveSpec | Mapping[str, Any]) -> Objective:
    """The objective of a validated spec model, or of a mapping (validated here against its spec)."""
    if isinstance(cfg, Mapping):
        fields = {k: v for k, v in cfg.items() if k != "type"}
        return objective_class(str(cfg.get("type")))(**fields)
    return objective_class(cfg.type)(cfg)


def known_objectives() -> list[str]:
    return OBJECTIVES.names()


__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveSpec",
    "build_objective",
    "check_stage",
    "known_objectives",
    "objective_class",
    "register_objective",
]
