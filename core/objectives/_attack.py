"""What the adversarial-training objectives (pgd, trades) share: the attack's spec fields and its run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from core.config import Ball, Norm, norm_defaults
from core.objectives.base import Objective, ObjectiveSpec
from core.robust.attacks import pgd, smooth_relu_backward


class AttackSpec(ObjectiveSpec):
    """The training attack. ``eps`` and ``step_size`` left out (or null) take the default of ``norm``,
    each on its own: l_inf 8/255 and 2/255, l_2 0.5 and 0.125 (``core.config.NORM_DEFAULTS``). A
    validated spec always holds numbers."""

    norm: Norm = "linf"
    eps: float | None = Field(
        None, gt=0, description="Radius of the ball; null = the norm's default (linf 8/255, l2 0.5)."
    )
    step_size: float | None = Field(
        None, gt=0, description="PGD step; null = the norm's default (linf 2/255, l2 0.125)."
    )
    steps: int = Field(10, ge=1, le=1000)
    random_start: bool = True
    relu_backward: Literal["exact", "smooth"] = Field(
        "smooth",
        description="Gradient the training attack follows through ReLUs: 'smooth' (default) "
        "backpropagates sigmoid(x/relu_tau) through every ReLU so the attack sees perturbations that switch "
        "inactive units on (sparse networks otherwise learn to mask gradients); 'exact' is the plain gradient "
        "of the reference code. The forward, and so the loss trained on, is the network's own.",
    )
    relu_tau: float = Field(0.1, gt=0, le=10, description="Temperature of the smooth ReLU backward.")

    @model_validator(mode="after")
    def _norm_defaults(self) -> AttackSpec:
        # Refilled on every validation (also when ``norm`` is reassigned) unless the user set the value;
        # object.__setattr__ because a validated assignment here would re-enter this validator.
        for name, value in norm_defaults(self.norm).items():
            if getattr(self, name) is None or name not in self.model_fields_set:
                object.__setattr__(self, name, value)
        return self

    def ball(self) -> Ball:
        assert self.eps is not None and self.step_size is not None  # filled by the validator
        return Ball(self.norm, float(self.eps), float(self.step_size))

    @classmethod
    def defaults_by_norm(cls) -> dict[str, dict[str, Any]]:
        """The full defaults for each norm, as the catalogues show them (``eps``/``step_size`` differ)."""
        return {norm: cls(norm=norm).model_dump(mode="json") for norm in ("linf", "l2")}


class AttackTraining(Objective):
    """An objective trained on PGD examples of its spec's ball."""

    cfg: AttackSpec

    def attack(self, model: nn.Module, x: Tensor, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        """The training attack, through the smooth ReLU backward when configured (see
        ``core.robust.attacks.smooth_relu_backward`` for why)."""
        if self.cfg.relu_backward == "smooth":
            with smooth_relu_backward(model, self.cfg.relu_tau):
                return pgd(model, x, y, **self.attack_settings(), **kwargs)
        return pgd(model, x, y, **self.attack_settings(), **kwargs)

    def attack_settings(self) -> dict[str, Any]:
        ball = self.cfg.ball()
        return {
            "norm": ball.norm,
            "eps": ball.eps,
            "step_size": ball.step_size,
            "steps": self.cfg.steps,
            "random_start": self.cfg.random_start,
        }

    # the settings as attributes, for reports and tests
    @property
    def norm(self) -> str:
        return self.cfg.norm

    @property
    def eps(self) -> float:
        return self.cfg.ball().eps

    @property
    def step_size(self) -> float:
        return float(self.cfg.ball().step_size or 0.0)

    @property
    def steps(self) -> int:
        return self.cfg.steps

    @property
    def relu_backward(self) -> str:
        return self.cfg.relu_backward

    @classmethod
    def headline(cls, metric_keys: list[str]) -> str | None:
        return "robust_acc" if "robust_acc" in metric_keys else None
