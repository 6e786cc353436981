"""AutoAttack (the reference pyautoattack code) as evaluation attacks: one per component.

Why ``pyautoattack``: it is the reference implementation of AutoAttack (Croce & Hein, ICML 2020), by
its authors, packaged on PyPI (0.2.0, Dec 2024) with the fixed hyper-parameters of the published
"standard" version — APGD-CE (100 steps), APGD-T (DLR, 9 target classes, 100 steps), FAB-T (9 targets)
and Square (5,000 queries). torchattacks re-implements it (last release 2023, not the reference code)
and adversarial-robustness-toolbox wraps its own ports of each attack in a framework-agnostic
estimator layer (a heavy dependency for four attacks). For fewer than 10 classes the targeted attacks
use every other class as a target; below 4 classes the targeted DLR loss is undefined (it reads the
4th-largest logit), so APGD-DLR (untargeted, >= 3 classes) and Square replace APGD-T and FAB-T, and
the report names exactly what ran.

Each component is one :class:`Attack` (its own metric), runs alone over every clean-correct example of
the 'robust' sample, and belongs to the group ``AUTOATTACK`` (``autoattack_acc``: the worst case over
the components that ran).

Stopping: pyautoattack runs its own batch loop, calling each component's ``perturb`` once per batch.
The component's run wraps those ``perturb`` calls on its own ``AutoAttack`` object: ``should_stop`` is
asked before every batch and, through a forward hook that is live only inside ``perturb``, on every
forward pass of the attack (each APGD/FAB iteration, each Square query). Only inside ``perturb``:
pyautoattack's ``check_dynamic`` runs a forward under ``sys.settrace`` and would leave the trace
function installed if that forward raised. The call structure, and so every number, is the same as
without a stop check: each ``perturb`` reseeds from the fixed seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.robust.suite.base import (
    Attack,
    AttackGroup,
    AttackSettings,
    ShouldStop,
    never_stop,
    register_attack,
    stop_if_asked,
)


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


def _reference_autoattack(
    model: nn.Module, device: torch.device, norm: str, eps: float, num_classes: int, seed: int
) -> Any:
    """pyautoattack's ``AutoAttack`` configured as the standard version (targets, restarts, queries)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:
        raise CoreError(
            "autoattack_unavailable",
            "evaluation.autoattack",
            "AutoAttack needs the pyautoattack package (a dependency of this project)",
        ) from exc
    aa = AutoAttack(
        model,
        attacks=[],
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
    return aa


@contextmanager
def _stoppable(aa: Any, model: nn.Module, should_stop: ShouldStop, where: str) -> Iterator[None]:
    """Ask ``should_stop`` before every batch of ``aa``'s components and on every forward pass inside one."""
    inside = False

    def on_forward(_module: nn.Module, _inputs: Any) -> None:
        if inside:
            stop_if_asked(should_stop, where)

    def checked(perturb: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def run_batch(*args: Any, **kwargs: Any) -> Tensor:
            nonlocal inside
            stop_if_asked(should_stop, where)
            inside = True
            try:
                return perturb(*args, **kwargs)
            finally:
                inside = False

        return run_batch

    components = (aa.apgd, aa.apgd_targeted, aa.fab, aa.square)
    for component in components:
        component.perturb = checked(component.perturb)
    handle = model.register_forward_pre_hook(on_forward)
    try:
        yield
    finally:
        handle.remove()
        for component in components:
            del component.perturb  # back to the class's method


def autoattack_component_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    attack: str,
    *,
    norm: str,
    eps: float,
    num_classes: int,
    seed: int,
    batch_size: int,
    should_stop: ShouldStop = never_stop,
) -> Tensor:
    """Per example: is the output of the AutoAttack component ``attack`` (run on its own over every
    clean-correct example) classified correctly. Clean-wrong examples are False."""
    flags = torch.zeros_like(clean)
    idx = torch.nonzero(clean).view(-1)
    if not idx.numel():
        return flags
    aa = _reference_autoattack(model, x.device, norm, eps, num_classes, seed)
    aa.attacks_to_run = [attack]
    with _stoppable(aa, model, should_stop, f"in AutoAttack {attack.upper()}"):
        x_adv, _ = aa.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
    with torch.no_grad():
        pred = torch.cat([model(x_adv[i : i + batch_size]).argmax(1) for i in range(0, len(idx), batch_size)])
    flags[idx] = pred == y[idx]
    return flags


def autoattack_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    *,
    num_classes: int,
    version: str = "standard",
    **options: Any,
) -> tuple[dict[str, Tensor], str]:
    """Per example and per AutoAttack attack of the plan (each run on its own over every clean-correct
    example): is the attack's output classified correctly. Returns the flags and a description of what
    ran. ``options`` are :func:`autoattack_component_flags`' (``norm``, ``eps``, ``seed``, ``batch_size``,
    ``should_stop``). (The evaluation runs the components one by one as registered attacks; this is for
    scripts.)"""
    attacks, description = autoattack_plan(num_classes, version)
    flags = {
        attack: autoattack_component_flags(model, x, y, clean, attack, num_classes=num_classes, **options)
        for attack in attacks
    }
    return flags, description


def _plan(settings: AttackSettings) -> tuple[list[str], str]:
    return autoattack_plan(settings.num_classes, settings.evaluation.autoattack_version)


AUTOATTACK = AttackGroup(
    "autoattack",
    "autoattack_acc",
    lambda settings, on: f"{_plan(settings)[1]}; {settings.ball}, per-example worst case over its attacks {on}",
)


class AutoAttackComponent(Attack):
    """One attack of AutoAttack's plan; on when ``evaluation.autoattack`` is and the plan has it."""

    sample = "robust"
    group = AUTOATTACK
    attacks = "clean"  # pyautoattack reseeds before every batch: no skip() needed

    def applies(self, settings: AttackSettings) -> bool:
        return settings.evaluation.autoattack and self.name in _plan(settings)[0]

    def procedure(self, settings: AttackSettings, on: str) -> str:
        return f"{self.name.upper()} alone, from {_plan(settings)[1]}; {settings.ball} {on}"

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        settings: AttackSettings,
        *,
        clean: Tensor,
        should_stop: ShouldStop = never_stop,
    ) -> Tensor:
        return autoattack_component_flags(
            model,
            x,
            y,
            clean,
            self.name,
            norm=settings.norm,
            eps=settings.eps,
            num_classes=settings.num_classes,
            seed=settings.seed,
            batch_size=settings.batch_size,
            should_stop=should_stop,
        )


@register_attack
class APGDCE(AutoAttackComponent):
    name = "apgd-ce"
    metric = "apgd_ce_acc"
    gradient_free = False
    description = "APGD with the cross-entropy loss (AutoAttack, reference code)"
    order = 30


@register_attack
class APGDT(AutoAttackComponent):
    name = "apgd-t"
    metric = "apgd_t_acc"
    gradient_free = False
    description = "APGD-T, targeted DLR loss (AutoAttack, reference code)"
    order = 31


@register_attack
class APGDDLR(AutoAttackComponent):
    name = "apgd-dlr"
    metric = "apgd_dlr_acc"
    gradient_free = False
    description = "APGD with the untargeted DLR loss (AutoAttack, reference code)"
    order = 32


@register_attack
class FABT(AutoAttackComponent):
    name = "fab-t"
    metric = "fab_t_acc"
    gradient_free = False
    description = "FAB-T, targeted minimum-norm attack (AutoAttack, reference code)"
    order = 33


@register_attack
class Square(AutoAttackComponent):
    name = "square"
    metric = "square_acc"
    gradient_free = True
    description = "Square, gradient-free random search (AutoAttack, reference code)"
    order = 34
