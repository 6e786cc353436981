"""The final robustness evaluation: our PGD **and** the reference AutoAttack, per-example worst case.

A robust accuracy we report must survive an attack we did not write. Each attack runs on its own over
the whole sample (so every attack's number is its own, not what was left by the previous one); the
headline ``robust_acc`` counts an example as robust only if it is classified correctly clean and under
*every* attack (the per-example worst case, as AutoAttack and RobustBench count it).

Why ``pyautoattack``: it is the reference implementation of AutoAttack (Croce & Hein, ICML 2020), by
its authors, packaged on PyPI (0.2.0, Dec 2024) with the fixed hyper-parameters of the published
"standard" version — APGD-CE (100 steps), APGD-T (DLR, 9 target classes, 100 steps), FAB-T (9 targets)
and Square (5,000 queries). torchattacks re-implements it (last release 2023, not the reference code)
and adversarial-robustness-toolbox wraps its own ports of each attack in a framework-agnostic
estimator layer (a heavy dependency for four attacks). For fewer than 10 classes the targeted attacks
use every other class as a target; below 4 classes the targeted DLR loss is undefined (it reads the
4th-largest logit), so APGD-DLR (untargeted, >= 3 classes) and Square replace APGD-T and FAB-T, and
the report names exactly what ran.

Gradient masking: a gradient-free attack (Square) that beats the best gradient attack by more than
``MASKING_MARGIN`` says the gradients the other attacks follow are uninformative, and the report says
so (``checks.possible_gradient_masking``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.registry import Registry
from core.robust.attacks import pgd, smooth_relu_backward

MASKING_MARGIN = 0.02


@dataclass(frozen=True)
class AttackInfo:
    """One attack of the evaluation suite: the report's metric key for it and what it is."""

    name: str
    metric: str
    gradient_free: bool
    description: str


ATTACKS: Registry[AttackInfo] = Registry("attack", "evaluation")


def register_attack(info: AttackInfo) -> AttackInfo:
    return ATTACKS.register(info.name, info)


for _info in (
    AttackInfo("pgd", "pgd_acc", False, "PGD (ours, the paper's attack): cross-entropy, random start(s)"),
    AttackInfo(
        "pgd_smooth", "pgd_smooth_acc", False, "PGD through the smooth ReLU backward (a BPDA-style surrogate gradient)"
    ),
    AttackInfo("apgd-ce", "apgd_ce_acc", False, "APGD with the cross-entropy loss (AutoAttack, reference code)"),
    AttackInfo("apgd-t", "apgd_t_acc", False, "APGD-T, targeted DLR loss (AutoAttack, reference code)"),
    AttackInfo("apgd-dlr", "apgd_dlr_acc", False, "APGD with the untargeted DLR loss (AutoAttack, reference code)"),
    AttackInfo("fab-t", "fab_t_acc", False, "FAB-T, targeted minimum-norm attack (AutoAttack, reference code)"),
    AttackInfo("square", "square_acc", True, "Square, gradient-free random search (AutoAttack, reference code)"),
):
    register_attack(_info)
GRADIENT_FREE = frozenset(name for name, info in ATTACKS.items() if info.gradient_free)


def autoattack_plan(num_classes: int, version: str = "standard") -> tuple[list[str], str]:
    """The AutoAttack attacks that are well defined for ``num_classes`` and their description."""
    if version != "standard":
        raise CoreError(
            "invalid_autoattack_version",
            "evaluation.autoattack_version",
            f"only the 'standard' version is offered, got {version!r}",
        )
    if num_classes >= 4:
        targets = min(9, num_classes - 1)
        return (
            ["apgd-ce", "apgd-t", "fab-t", "square"],
            f"AutoAttack standard (reference code, pyautoattack): APGD-CE 100 steps, APGD-T and FAB-T "
            f"with {targets} target classes, Square 5000 queries",
        )
    if num_classes == 3:
        return (
            ["apgd-ce", "apgd-dlr", "square"],
            "AutoAttack (reference code, pyautoattack) for 3 classes: APGD-CE, APGD-DLR (untargeted; "
            "the targeted DLR of APGD-T/FAB-T needs >= 4 classes), Square 5000 queries",
        )
    return (
        ["apgd-ce", "square"],
        "AutoAttack (reference code, pyautoattack) for 2 classes: APGD-CE and Square 5000 queries "
        "(DLR-based attacks need >= 3 classes)",
    )


def autoattack_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    *,
    norm: str,
    eps: float,
    num_classes: int,
    seed: int,
    batch_size: int,
    version: str = "standard",
) -> tuple[dict[str, Tensor], str]:
    """Per example and per AutoAttack attack (each run on its own over every clean-correct example):
    is the attack's output classified correctly. Returns the flags and a description of what ran."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:
        raise CoreError(
            "autoattack_unavailable",
            "evaluation.autoattack",
            "AutoAttack needs the pyautoattack package (a dependency of this project)",
        ) from exc
    attacks, description = autoattack_plan(num_classes, version)
    device = x.device
    aa = AutoAttack(
        model,
        attacks=list(attacks),
        device=device,
        eps=float(eps),
        norm="Linf" if norm == "linf" else "L2",
        seed=int(seed),
        version="custom",
    )
    aa.verbose = False
    aa.logger.setLevel(logging.WARNING)
    targets = min(9, num_classes - 1)
    aa.apgd_targeted.n_target_classes = targets
    aa.fab.n_target_classes = targets
    aa.fab.n_restarts = 1
    aa.apgd.n_restarts = 1
    aa.square.n_queries = 5000
    out: dict[str, Tensor] = {}
    idx = torch.nonzero(clean).view(-1)
    for attack in attacks:
        flags = torch.zeros_like(clean)
        if idx.numel():
            aa.attacks_to_run = [attack]
            x_adv, _ = aa.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
            with torch.no_grad():
                pred = torch.cat([model(x_adv[i : i + batch_size]).argmax(1) for i in range(0, len(idx), batch_size)])
            flags[idx] = pred == y[idx]
        out[attack] = flags
    return out, description


@torch.no_grad()
def clean_flags(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Per example: is the clean input classified correctly."""
    return torch.cat(
        [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, len(x), batch_size)]
    )


def pgd_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    restarts: int,
    batch_size: int,
    relu_tau: float | None = None,
) -> Tensor:
    """Per example: is the PGD example (CE, random start, worst of ``restarts``) classified correctly.
    With ``relu_tau`` the attack follows the smooth ReLU backward (``smooth_relu_backward``)."""
    out = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with smooth_relu_backward(model, relu_tau) if relu_tau else contextlib.nullcontext():
            x_adv = pgd(
                model,
                xb,
                yb,
                norm=norm,
                eps=eps,
                step_size=step_size,
                steps=steps,
                restarts=restarts,
                random_start=True,
                loss="ce",
            )
        with torch.no_grad():
            out[i : i + batch_size] = model(x_adv).argmax(1) == yb
    return out


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


__all__ = [
    "ATTACKS",
    "AttackInfo",
    "register_attack",
    "clean_flags",
    "pgd_flags",
    "autoattack_flags",
    "masking_check",
    "autoattack_plan",
    "MASKING_MARGIN",
]
