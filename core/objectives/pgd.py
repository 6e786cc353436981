"""``pgd``: Madry et al., cross-entropy on PGD adversarial examples."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.objectives._attack import AttackSpec, AttackTraining
from core.objectives.base import register_objective
from core.pruning.masked import shared_effective_weights


class PGDObjective(AttackSpec):
    """Madry et al.: cross-entropy on PGD adversarial examples.

    ``eps`` and ``step_size`` left out (or null) take the default of ``norm``, each on its own: l_inf
    8/255 and 2/255, l_2 0.5 and 0.125 (``NORM_DEFAULTS``). A validated objective always holds numbers.
    """

    type: Literal["pgd"] = "pgd"


@register_objective
class PGDTraining(AttackTraining):
    """Madry et al.: CE on PGD examples (attack in eval mode, loss in the caller's mode)."""

    Spec = PGDObjective

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        was_training = model.training
        with shared_effective_weights(model):  # one W ⊙ M per layer for the whole step
            model.eval()
            with torch.no_grad():
                clean = model(x)  # train accuracy only; costs one no-grad forward
            x_adv = self.attack(model, x, y, loss="ce")
            model.train(was_training)
            loss = F.cross_entropy(model(x_adv), y)
        return loss, clean

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "loss": "CE(f(x'), y), x' = PGD maximising CE (model in eval mode)",
            "attack": {
                **self.attack_settings(),
                "relu_backward": self.cfg.relu_backward,
                "relu_tau": self.cfg.relu_tau,
            },
        }
