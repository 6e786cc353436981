"""``crown_ibp``: Zhang et al. 2020 CROWN-IBP training; certified by IBP/CROWN-IBP."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from core.certify.bounds import METHOD_DESCRIPTIONS, margin_spec, mixed_lower_bound
from core.objectives._bounded import BoundSpec, BoundTraining, ramp_fraction, robust_ce
from core.objectives.base import register_objective


class CrownIBPObjective(BoundSpec):
    """Zhang et al. 2020 CROWN-IBP: CE of negated margin lower bounds, beta*CROWN + (1-beta)*IBP."""

    type: Literal["crown_ibp"] = "crown_ibp"
    ramp_epochs: int = Field(120, ge=0, le=10_000)
    kappa: float = Field(0.0, ge=0, le=1)


@register_objective
class CrownIBP(BoundTraining):
    """Zhang et al. 2020: ``κ·CE(f(x), y) + (1 − κ)·CE(−m, y)`` where ``m`` lower-bounds the margins
    ``z_y − z_j`` as ``β·CROWN-IBP + (1 − β)·IBP``, ``β = 1 − eps_t/eps``, the specification folded
    into the last linear layer; eps_t ramps linearly per iteration over ``ramp_epochs`` pretraining
    epochs, so prune and finetune are pure IBP at the target eps."""

    Spec = CrownIBPObjective
    cfg: CrownIBPObjective
    loss_text = (
        "kappa * CE(f(x), y) + (1 - kappa) * CE(-m, y), m = beta * CROWN-IBP + (1 - beta) * IBP "
        "lower bounds of z_y - z_j, beta = 1 - eps_t / eps"
    )
    bound_text = f"{METHOD_DESCRIPTIONS['crown_ibp']}; {METHOD_DESCRIPTIONS['ibp']}"

    def __init__(self, cfg: CrownIBPObjective | None = None, **fields: Any) -> None:
        super().__init__(cfg, **fields)
        self.current_eps, self.current_beta = self.cfg.eps, 0.0

    @property
    def kappa(self) -> float:
        return self.cfg.kappa

    def eps_at(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> float:
        return self.cfg.eps * ramp_fraction(epoch, stage, iteration_fraction, self.cfg.ramp_epochs)

    def beta_at(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> float:
        """``β = 1 − eps_t / eps``: all CROWN at the start of the ramp, pure IBP once it is done."""
        return 1.0 - ramp_fraction(epoch, stage, iteration_fraction, self.cfg.ramp_epochs)

    def set_epoch(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> None:
        self.current_eps = self.eps_at(epoch, stage, iteration_fraction)
        self.current_beta = self.beta_at(epoch, stage, iteration_fraction)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kappa = self.cfg.kappa
        if kappa > 0:
            logits = model(x)
        else:  # the reference trains on the robust term only; the clean logits are for monitoring
            with torch.no_grad():
                logits = model(x)
        num_classes = logits.shape[1]
        lower = mixed_lower_bound(
            model, x, self.current_eps, margin_spec(y, num_classes).to(x.dtype), self.current_beta
        )
        robust = robust_ce(lower, y, num_classes)
        if kappa > 0:
            return kappa * F.cross_entropy(logits, y) + (1 - kappa) * robust, logits.detach()
        return robust, logits

    def schedule(self) -> dict[str, Any]:
        return {"ramp_epochs": self.cfg.ramp_epochs, "kappa": self.cfg.kappa}
