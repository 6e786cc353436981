"""``natural``: plain cross-entropy on clean inputs (the benign baseline; evaluated by the attacks)."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from core.objectives.base import Objective, ObjectiveSpec, register_objective


class NaturalObjective(ObjectiveSpec):
    """Plain cross-entropy on clean inputs."""

    type: Literal["natural"] = "natural"


@register_objective
class NaturalTraining(Objective):
    """Cross-entropy on clean inputs."""

    Spec = NaturalObjective

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits.detach()

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "loss": "CE(f(x), y)"}
