"""``smoothing``: randomized-smoothing training, certified by Cohen et al.'s CERTIFY."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from core.certify.certificates import SmoothingCertificate
from core.certify.smoothing import CERTIFY_METHOD, CertifySettings
from core.objectives.base import Objective, ObjectiveSpec, register_objective

if TYPE_CHECKING:
    from core.spec import EvaluationSpec


class SmoothingObjective(ObjectiveSpec):
    """Randomized smoothing training: stability training (default) or Gaussian augmentation."""

    type: Literal["smoothing"] = "smoothing"
    sigma: float = Field(0.25, gt=0)
    beta: float = Field(6.0, ge=0)
    mode: Literal["stability", "gaussian"] = "stability"


@register_objective
class SmoothingTraining(Objective):
    """Stability training ``CE(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x + δ))``, δ ~ N(0, σ²I)
    (mode "stability", the HYDRA reference), or Gaussian augmentation ``CE(f(x + δ), y)`` (mode
    "gaussian", Cohen et al.). In Gaussian mode the returned logits are those of the noisy inputs
    (no extra clean forward pass), so the training accuracy it feeds is the accuracy under noise."""

    Spec = SmoothingObjective
    # The certificate is of the smoothed classifier; a white-box attack on the base network does
    # not measure it, so the attack suite does not run.
    attacked = False
    cfg: SmoothingObjective

    @property
    def sigma(self) -> float:
        return self.cfg.sigma

    @property
    def beta(self) -> float:
        return self.cfg.beta

    @property
    def mode(self) -> str:
        return self.cfg.mode

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noisy = x + torch.randn_like(x) * self.cfg.sigma  # not clipped: the certificate adds unclipped noise
        if self.cfg.mode == "gaussian":
            logits = model(noisy)
            return F.cross_entropy(logits, y), logits.detach()
        logits = model(x)
        noisy_logits = model(noisy)
        kl = F.kl_div(F.log_softmax(noisy_logits, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.cfg.beta * kl, logits.detach()

    def describe(self) -> dict[str, Any]:
        loss = (
            "CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x + delta)), delta ~ N(0, sigma^2 I)"
            if self.cfg.mode == "stability"
            else "CE(f(x + delta), y), delta ~ N(0, sigma^2 I)"
        )
        return {
            "type": self.name,
            "mode": self.cfg.mode,
            "sigma": self.cfg.sigma,
            "beta": self.cfg.beta,
            "loss": loss,
            "certificate": f"{CERTIFY_METHOD} (l_2 radius sigma * PhiInv(pA_lower))",
        }

    def certificate(self, evaluation: EvaluationSpec, seed: int) -> SmoothingCertificate:
        options = evaluation.smoothing
        settings = CertifySettings(
            sigma=self.cfg.sigma, n0=options.n0, n=options.n, alpha=options.alpha, seed=int(seed)
        )
        return SmoothingCertificate(settings, radii=options.radii, batch_size=options.batch_size)

    @classmethod
    def headline(cls, metric_keys: list[str]) -> str | None:
        # At radius 0 it is only the smoothed classifier's accuracy: headline the first radius > 0.
        keys = [k for k in metric_keys if k.startswith("certified_acc@")]
        positive = [k for k in keys if float(k.split("@", 1)[1]) > 0]
        chosen = positive or keys
        return chosen[0] if chosen else None
