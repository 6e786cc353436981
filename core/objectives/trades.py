"""``trades``: Zhang et al. TRADES, CE plus β·KL between clean and adversarial predictions."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from core.objectives._attack import AttackSpec, AttackTraining
from core.objectives.base import register_objective
from core.pruning.masked import shared_effective_weights


class TradesObjective(AttackSpec):
    """Zhang et al. TRADES: CE(f(x), y) + beta * KL(f(x) || f(x')), x' by PGD on the KL term."""

    type: Literal["trades"] = "trades"
    beta: float = Field(6.0, ge=0)


@register_objective
class TradesTraining(AttackTraining):
    """Zhang et al. TRADES: ``CE(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x'))`` (batch mean).

    ``x'`` maximises the KL to the clean prediction by PGD from ``x + 0.001·N(0, 1)`` with the model in
    eval mode; the clean eval-mode logits are computed once per batch under ``no_grad`` (the reference
    recomputes them in every attack step). Then two train-mode forwards, on ``x`` and on ``x'``.
    """

    Spec = TradesObjective
    cfg: TradesObjective

    @property
    def beta(self) -> float:
        return self.cfg.beta

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        was_training = model.training
        with shared_effective_weights(model):  # one W ⊙ M per layer for the whole step
            model.eval()
            with torch.no_grad():
                target = model(x)
            x_adv = self.attack(model, x, loss="kl", target_logits=target)
            model.train(was_training)
            logits = model(x)
            logits_adv = model(x_adv)
        natural = F.cross_entropy(logits, y)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return natural + self.cfg.beta * robust, logits.detach()

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "loss": "CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), batch mean",
            "beta": self.cfg.beta,
            "attack": {
                **self.attack_settings(),
                "relu_backward": self.cfg.relu_backward,
                "start": "x + 0.001 N(0, 1)",
                "maximises": "KL to the clean eval-mode prediction",
            },
        }
