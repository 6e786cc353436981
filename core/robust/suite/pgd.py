"""Our PGD (the paper's attack) and the same PGD through the smooth ReLU backward, as evaluation attacks.

Both run :func:`core.robust.attacks.pgd` (cross-entropy, random start(s), per-example worst over
``evaluation.pgd_restarts``) batch by batch over the whole 'final' sample, from the global RNG that the
evaluation seeds once before the first attack (``order``: PGD first, then the smooth-ReLU PGD, which
continues the stream).
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from core.errors import RunCanceled
from core.robust.attacks import pgd, skip_random_starts, smooth_relu_backward
from core.robust.suite.base import Attack, AttackSettings, ShouldStop, never_stop, register_attack, stop_if_asked


def pgd_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    relu_tau: float | None = None,
    should_stop: ShouldStop = never_stop,
    **ball_and_steps: Any,
) -> Tensor:
    """Per example: is the PGD example (CE, random start, worst of ``restarts``) classified correctly.
    ``ball_and_steps`` go to :func:`core.robust.attacks.pgd` as they are (``norm``, ``eps``, ``step_size``,
    ``steps``, ``restarts``). With ``relu_tau`` the attack follows the smooth ReLU backward
    (``smooth_relu_backward``). ``should_stop`` is asked before every batch and every attack step
    (``RunCanceled``)."""
    where = "in PGD" if relu_tau is None else "in the smooth-ReLU PGD"
    out = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(0, len(x), batch_size):
        stop_if_asked(should_stop, where)
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        try:
            with smooth_relu_backward(model, relu_tau) if relu_tau else contextlib.nullcontext():
                x_adv = pgd(model, xb, yb, random_start=True, loss="ce", should_stop=should_stop, **ball_and_steps)
        except RunCanceled as exc:  # asked between two steps: say which attack it stopped
            raise RunCanceled(f"canceled during the final evaluation, {where}") from exc
        with torch.no_grad():
            out[i : i + batch_size] = model(x_adv).argmax(1) == yb
    return out


def skip_pgd(x: Tensor, settings: AttackSettings) -> None:
    """The random starts :func:`pgd_flags` draws for ``x`` (``Attack.skip``)."""
    ev = settings.evaluation
    skip_random_starts(
        x, norm=settings.norm, eps=settings.eps, restarts=ev.pgd_restarts, batch_size=settings.batch_size
    )


class _PGDAttack(Attack):
    """Our PGD over the whole 'final' sample (:func:`pgd_flags`), named ``PGD-<steps>`` in the headline and
    the procedure; a subclass says whether it goes through the smooth ReLU backward (:meth:`relu_tau`)."""

    gradient_free = False
    #: What its label adds to ``PGD-<steps>``.
    variant: ClassVar[str] = ""

    def relu_tau(self, settings: AttackSettings) -> float | None:
        """The smooth ReLU backward's temperature, or None for the plain gradient."""
        return None

    @abstractmethod
    def how(self, settings: AttackSettings) -> str:
        """The procedure's text between ``PGD-<steps>`` and the sample."""

    def label(self, settings: AttackSettings) -> str:
        return f"PGD-{settings.evaluation.pgd_steps}{self.variant}"

    def procedure(self, settings: AttackSettings, on: str) -> str:
        return f"PGD-{settings.evaluation.pgd_steps} {self.how(settings)} {on}"

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
        ev = settings.evaluation
        return pgd_flags(
            model,
            x,
            y,
            norm=settings.norm,
            eps=settings.eps,
            step_size=settings.step_size,
            steps=ev.pgd_steps,
            restarts=ev.pgd_restarts,
            batch_size=settings.batch_size,
            relu_tau=self.relu_tau(settings),
            should_stop=should_stop,
        )

    def skip(self, x: Tensor, settings: AttackSettings) -> None:
        skip_pgd(x, settings)


@register_attack
class PGD(_PGDAttack):
    name = "pgd"
    metric = "pgd_acc"
    description = "PGD (ours, the paper's attack): cross-entropy, random start(s)"
    order = 10

    def how(self, settings: AttackSettings) -> str:
        return (
            f"(ours; {settings.ball}, step={settings.step_size:.4g}, {settings.evaluation.pgd_restarts} random "
            "start(s), cross-entropy, per-example worst case)"
        )


@register_attack
class SmoothReLUPGD(_PGDAttack):
    name = "pgd_smooth"
    metric = "pgd_smooth_acc"
    description = "PGD through the smooth ReLU backward (a BPDA-style surrogate gradient)"
    order = 20
    variant = " smooth-ReLU"

    def applies(self, settings: AttackSettings) -> bool:
        return settings.evaluation.pgd_smooth_relu

    def relu_tau(self, settings: AttackSettings) -> float | None:
        return settings.evaluation.pgd_smooth_tau

    def how(self, settings: AttackSettings) -> str:
        return (
            f"as pgd_acc but through the smooth ReLU backward (sigmoid(x/{settings.evaluation.pgd_smooth_tau:g}), "
            "a BPDA-style surrogate that sees past inactive ReLUs; forward unchanged)"
        )
