"""What the bound-trained objectives (mixtrain, crown_ibp) share: the l_inf radius they train for
(``BoundSpec``), the eps ramp, the robust CE, the shape of their description, the certificate (verified
accuracy under IBP and CROWN-IBP) and its headline.

Ramps apply in ``pretrain`` only; ``prune`` and ``finetune`` use the target eps from the first batch
(docs/METHOD.md). Before any ``set_epoch`` call an objective behaves as in prune/finetune at epoch 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from core.certify.bounds import pad_margins
from core.certify.certificates import BoundCertificate
from core.config import Ball
from core.objectives.base import Objective, ObjectiveSpec, check_stage

if TYPE_CHECKING:
    from core.spec import EvaluationSpec

CERTIFICATE = "verified accuracy under IBP and CROWN-IBP (l_inf ball ∩ [0, 1])"


def ramp_fraction(epoch: int, stage: str, iteration_fraction: float, ramp_epochs: int) -> float:
    """Linear ramp 0 → 1 over the first ``ramp_epochs`` epochs of pretraining, per iteration
    (``epoch + iteration_fraction``); 1 throughout prune and finetune, and when ``ramp_epochs == 0``."""
    check_stage(stage)
    if stage != "pretrain" or ramp_epochs <= 0:
        return 1.0
    return min(1.0, max(0.0, (epoch + iteration_fraction) / ramp_epochs))


def robust_ce(lower_margins: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy of the negated margin lower bounds: logits ``-m`` with ``m_j <= z_y - z_j``
    (``m_y = 0``), i.e. CE of the upper bounds of ``z_j - z_y`` — the loss of CROWN-IBP and MixTrain."""
    return F.cross_entropy(-pad_margins(lower_margins, y, num_classes), y)


class BoundSpec(ObjectiveSpec):
    """The settings of a bound-trained objective: the l_inf radius it trains (and is certified) for."""

    eps: float = Field(
        0.007, gt=0, le=1, description="l_inf radius in pixel space [0, 1] (at most 1: the whole input range)."
    )

    def ball(self) -> Ball:
        return linf_ball(self.eps)


class BoundTraining(Objective):
    """An objective whose loss propagates bounds over the l_inf ball of ``cfg.eps``."""

    needs_bounds = True
    cfg: BoundSpec
    #: The report's text of the loss and of the bound it propagates (:meth:`describe`).
    loss_text: ClassVar[str]
    bound_text: ClassVar[str]

    @property
    def eps(self) -> float:
        return self.cfg.eps

    def schedule(self) -> dict[str, Any]:
        """The description's settings between ``eps`` and the loss (ramps, weights, sampling)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "eps": self.cfg.eps,
            **self.schedule(),
            "loss": self.loss_text,
            "bound": self.bound_text,
            "certificate": CERTIFICATE,
        }

    def certificate(self, evaluation: EvaluationSpec, seed: int) -> BoundCertificate:
        bounds = evaluation.bounds
        return BoundCertificate(
            eps=self._eps(evaluation),
            bounds=bounds.methods,
            batch_size=bounds.batch_size,
            extra_details=self.certificate_details(),
        )

    def _eps(self, evaluation: EvaluationSpec) -> float:
        ball = self.cfg.ball()
        assert ball is not None
        return float(evaluation.eps or ball.eps)

    def certificate_details(self) -> dict[str, Any]:
        return {}

    @classmethod
    def headline(cls, metric_keys: list[str]) -> str | None:
        # MixTrain's training bound L_sym is the CROWN-IBP bound: its headline is that bound at test time.
        for key in ("verified_acc_crown_ibp", "verified_acc_ibp"):
            if key in metric_keys:
                return key
        return None


def linf_ball(eps: float) -> Ball:
    return Ball("linf", float(eps))
