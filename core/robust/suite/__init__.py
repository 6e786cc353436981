"""The final robustness evaluation: every registered attack, each alone, and their per-example worst case.

A robust accuracy we report must survive an attack we did not write: our PGD (``pgd``), the same PGD
through the smooth ReLU backward (``pgd_smooth``) and the reference AutoAttack (``autoattack``: APGD-CE,
APGD-T/APGD-DLR, FAB-T, Square). Each attack runs on its own over its whole sample (so every attack's
number is its own, not what was left by the previous one); the headline ``robust_acc`` counts an example
as robust only if it is classified correctly clean and under *every* attack (the per-example worst
case, as AutoAttack and RobustBench count it).

An attack is one :class:`~core.robust.suite.base.Attack` in one module of this package, registered in
``ATTACKS``; importing the package imports every module of it, so the module is the whole change
(CONTRIBUTING.md, "Adding an evaluation attack"). ``core.pipeline.evaluate`` runs
:func:`planned_attacks`.

Gradient masking: a gradient-free attack (Square) that beats the best gradient attack by more than
``MASKING_MARGIN`` says the gradients the other attacks follow are uninformative, and the report says
so (``checks.gradient_masking.possible_gradient_masking``).
"""

from __future__ import annotations

from typing import Any

from core.registry import import_submodules
from core.robust.suite.base import (
    ATTACKS,
    Attack,
    AttackGroup,
    AttackSettings,
    ShouldStop,
    clean_flags,
    never_stop,
    planned_attacks,
    register_attack,
    stop_checked_forward,
    stop_if_asked,
)

MASKING_MARGIN = 0.02


def masking_check(accuracies: dict[str, float]) -> dict[str, Any]:
    """Flag possible gradient masking: the best gradient-free attack beats the best gradient attack
    (lowest accuracy) by more than ``MASKING_MARGIN``."""
    free = {a: v for a, v in accuracies.items() if ATTACKS.get(a).gradient_free}
    grad = {a: v for a, v in accuracies.items() if not ATTACKS.get(a).gradient_free}
    if not free or not grad:
        return {"possible_gradient_masking": False, "reason": "needs a gradient-free and a gradient attack"}
    best_free = min(free, key=free.__getitem__)
    best_grad = min(grad, key=grad.__getitem__)
    gap = grad[best_grad] - free[best_free]
    flagged = gap > MASKING_MARGIN
    return {
        "possible_gradient_masking": bool(flagged),
        "gap": gap,
        "best_gradient_attack": best_grad,
        "best_gradient_free_attack": best_free,
        "rule": f"flagged when {best_free} beats the best gradient attack by more than "
        f"{100 * MASKING_MARGIN:.0f} points",
    }


# Last, so that a plug-in module may import anything above: each module registers its attacks.
MODULES = import_submodules(__name__, skip=("base",))

from core.robust.suite.autoattack import autoattack_flags, autoattack_plan  # noqa: E402  (imported above)
from core.robust.suite.pgd import pgd_flags  # noqa: E402

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackGroup",
    "AttackSettings",
    "MASKING_MARGIN",
    "MODULES",
    "ShouldStop",
    "autoattack_flags",
    "autoattack_plan",
    "clean_flags",
    "masking_check",
    "never_stop",
    "pgd_flags",
    "planned_attacks",
    "register_attack",
    "stop_checked_forward",
    "stop_if_asked",
]
