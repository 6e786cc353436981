"""``mixtrain``: Wang et al. 2018, natural CE plus a sampled bound loss; certified by IBP/CROWN-IBP."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from core.certify.bounds import crown_ibp_bounds, margin_spec
from core.objectives._bounded import BoundSpec, BoundTraining, ramp_fraction, robust_ce
from core.objectives.base import check_stage, register_objective

MIXTRAIN_BOUND = (
    "CROWN-IBP linear relaxation (IBP pre-activation bounds, CROWN backward pass of the margin "
    "specification, adaptive ReLU lower slope) — a sound bound used in place of MixTrain's symbolic "
    "interval analysis"
)


class MixTrainObjective(BoundSpec):
    """Wang et al. 2018: natural CE plus a sampled symbolic-interval bound loss."""

    type: Literal["mixtrain"] = "mixtrain"
    sample_prob: float = Field(0.8, ge=0, le=1)
    subset_size: int = Field(5, ge=1, le=10_000)
    ramp_epochs: int = Field(15, ge=0, le=10_000)
    lambda_init: float = Field(0.1, ge=0)
    lambda_growth: float = Field(2.5, ge=1)
    lambda_every: int = Field(5, ge=1, le=10_000)
    lambda_max: float = Field(50.0, ge=0)


@register_objective
class MixTrain(BoundTraining):
    """Wang et al. 2018: natural CE, plus with probability ``sample_prob`` the term ``λ · L_sym`` on
    ``subset_size`` examples drawn from the batch, where ``L_sym`` is the CE of the upper bounds of
    ``z_j - z_y`` (0 at y) over the l_inf ball of the current eps (see ``MIXTRAIN_BOUND``)."""

    Spec = MixTrainObjective
    cfg: MixTrainObjective
    loss_text = "CE(f(x), y) + [with prob. sample_prob] lambda * CE(upper bounds of z_j - z_y) on subset_size examples"
    bound_text = MIXTRAIN_BOUND

    def __init__(self, cfg: MixTrainObjective | None = None, **fields: Any) -> None:
        super().__init__(cfg, **fields)
        self.current_eps, self.current_lambda = self.cfg.eps, self.lambda_at(0, "finetune")

    def eps_at(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> float:
        """eps ramps linearly from 0 over the first ``ramp_epochs`` pretraining epochs; target after."""
        return self.cfg.eps * ramp_fraction(epoch, stage, iteration_fraction, self.cfg.ramp_epochs)

    def lambda_at(self, epoch: int, stage: str) -> float:
        """``λ = lambda_init · lambda_growth^⌊max(e − L, 0) / lambda_every⌋``, capped at ``lambda_max``;
        ``L = ramp_epochs`` in pretraining, 0 in prune and finetune; ``e`` the 0-based epoch."""
        check_stage(stage)
        c = self.cfg
        offset = c.ramp_epochs if stage == "pretrain" else 0
        steps = max(epoch - offset, 0) // c.lambda_every
        if c.lambda_init <= 0 or c.lambda_max <= 0:
            return 0.0
        # compared in log space: growth**steps overflows a float long before a long schedule ends
        if math.log(c.lambda_init) + steps * math.log(c.lambda_growth) >= math.log(c.lambda_max):
            return c.lambda_max
        return c.lambda_init * c.lambda_growth**steps

    def set_epoch(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> None:
        self.current_eps = self.eps_at(epoch, stage, iteration_fraction)
        self.current_lambda = self.lambda_at(epoch, stage)

    def sym_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``L_sym`` on all of ``x``: CE of the negated CROWN-IBP margin lower bounds at the current eps."""
        lower = crown_ibp_bounds(model, x, self.current_eps, margin_spec(y, num_classes).to(x.dtype))
        return robust_ce(lower, y, num_classes)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        # CPU draws from the global generator: reproducible from the run's seed and saved RNG state.
        if self.current_lambda > 0 and float(torch.rand(())) < self.cfg.sample_prob:
            pick = torch.randperm(len(y))[: self.cfg.subset_size].to(y.device)
            loss = loss + self.current_lambda * self.sym_loss(model, x[pick], y[pick], logits.shape[1])
        return loss, logits.detach()

    def schedule(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "sample_prob": c.sample_prob,
            "subset_size": c.subset_size,
            "ramp_epochs": c.ramp_epochs,
            "lambda": f"{c.lambda_init} * {c.lambda_growth}^floor(max(e - L, 0) / {c.lambda_every}), "
            f"capped at {c.lambda_max}",
        }

    def certificate_details(self) -> dict[str, Any]:
        return {"training_bound": MIXTRAIN_BOUND}
