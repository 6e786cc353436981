"""The three verifiable objectives — randomized smoothing, MixTrain, CROWN-IBP — and their certificates.

Each objective follows the ``core.objectives.adversarial`` protocol: ``loss(model, x, y) -> (loss, clean_logits)``,
``name``, ``describe()``, plus ``set_epoch(epoch, stage, iteration_fraction)`` which the training loop
calls before every batch (the eps ramps and the MixTrain λ depend on it). Ramps apply in ``pretrain``
only; ``prune`` and ``finetune`` use the target eps from the first batch (METHOD.md). Before any
``set_epoch`` call an objective behaves as in prune/finetune at epoch 0.

:func:`evaluate_certified` produces the certified numbers of a trained network, each with the exact
procedure that produced it.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.certify.bounds import (
    BOUND_METHODS,
    METHOD_DESCRIPTIONS,
    check_supported,
    crown_ibp_bounds,
    margin_spec,
    mixed_lower_bound,
    pad_margins,
    verified_counts,
)
from core.errors import CoreError
from core.certify.smoothing import CERTIFY_METHOD, certify_dataset

STAGES = ("pretrain", "prune", "finetune")
MIXTRAIN_BOUND = (
    "CROWN-IBP linear relaxation (IBP pre-activation bounds, CROWN backward pass of the margin "
    "specification, adaptive ReLU lower slope) — a sound bound used in place of MixTrain's symbolic "
    "interval analysis"
)


def _opt(cfg: Any, name: str, default: Any) -> Any:
    value = getattr(cfg, name, None)
    return default if value is None else value


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise CoreError("invalid_stage", "stage", f"unknown stage {stage!r}; expected one of {STAGES}")


def ramp_fraction(epoch: int, stage: str, iteration_fraction: float, ramp_epochs: int) -> float:
    """Linear ramp 0 → 1 over the first ``ramp_epochs`` epochs of pretraining, per iteration
    (``epoch + iteration_fraction``); 1 throughout prune and finetune, and when ``ramp_epochs == 0``."""
    _check_stage(stage)
    if stage != "pretrain" or ramp_epochs <= 0:
        return 1.0
    return min(1.0, max(0.0, (epoch + iteration_fraction) / ramp_epochs))


def robust_ce(lower_margins: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy of the negated margin lower bounds: logits ``-m`` with ``m_j <= z_y - z_j``
    (``m_y = 0``), i.e. CE of the upper bounds of ``z_j - z_y`` — the loss of CROWN-IBP and MixTrain."""
    return F.cross_entropy(-pad_margins(lower_margins, y, num_classes), y)


# ---------------------------------------------------------------- randomized smoothing
class SmoothingTraining:
    """Stability training ``CE(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x + δ))``, δ ~ N(0, σ²I)
    (mode "stability", the HYDRA reference), or Gaussian augmentation ``CE(f(x + δ), y)`` (mode
    "gaussian", Cohen et al.). In Gaussian mode the returned logits are those of the noisy inputs
    (no extra clean forward pass), so the training accuracy it feeds is the accuracy under noise."""

    name = "smoothing"

    def __init__(self, sigma: float = 0.25, beta: float = 6.0, mode: str = "stability") -> None:
        if not sigma > 0:
            raise CoreError("invalid_sigma", "objective.sigma", f"sigma must be > 0, got {sigma}")
        if mode not in ("stability", "gaussian"):
            raise CoreError("invalid_mode", "objective.mode", f"mode must be 'stability' or 'gaussian', got {mode!r}")
        self.sigma, self.beta, self.mode = float(sigma), float(beta), mode

    def set_epoch(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> None:
        _check_stage(stage)  # nothing is scheduled

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noisy = x + torch.randn_like(x) * self.sigma  # not clipped: the certificate adds unclipped noise
        if self.mode == "gaussian":
            logits = model(noisy)
            return F.cross_entropy(logits, y), logits.detach()
        logits = model(x)
        noisy_logits = model(noisy)
        kl = F.kl_div(F.log_softmax(noisy_logits, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * kl, logits.detach()

    def describe(self) -> dict[str, Any]:
        loss = (
            "CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x + delta)), delta ~ N(0, sigma^2 I)"
            if self.mode == "stability"
            else "CE(f(x + delta), y), delta ~ N(0, sigma^2 I)"
        )
        return {
            "type": self.name,
            "mode": self.mode,
            "sigma": self.sigma,
            "beta": self.beta,
            "loss": loss,
            "certificate": f"{CERTIFY_METHOD} (l_2 radius sigma * PhiInv(pA_lower))",
        }


# ---------------------------------------------------------------- MixTrain
class MixTrain:
    """Wang et al. 2018: natural CE, plus with probability ``sample_prob`` the term ``λ · L_sym`` on
    ``subset_size`` examples drawn from the batch, where ``L_sym`` is the CE of the upper bounds of
    ``z_j - z_y`` (0 at y) over the l_inf ball of the current eps (see ``MIXTRAIN_BOUND``)."""

    name = "mixtrain"

    def __init__(
        self,
        eps: float = 0.007,
        sample_prob: float = 0.8,
        subset_size: int = 5,
        ramp_epochs: int = 15,
        lambda_init: float = 0.1,
        lambda_growth: float = 2.5,
        lambda_every: int = 5,
        lambda_max: float = 50.0,
    ) -> None:
        if not eps > 0:
            raise CoreError("invalid_eps", "objective.eps", f"eps must be > 0, got {eps}")
        if subset_size < 1 or lambda_every < 1:
            raise CoreError("invalid_objective", "objective.subset_size", "subset_size and lambda_every must be >= 1")
        self.eps, self.sample_prob, self.subset_size = float(eps), float(sample_prob), int(subset_size)
        self.ramp_epochs, self.lambda_every = int(ramp_epochs), int(lambda_every)
        self.lambda_init, self.lambda_growth, self.lambda_max = float(lambda_init), float(lambda_growth), float(lambda_max)
        self.current_eps, self.current_lambda = self.eps, self.lambda_at(0, "finetune")

    def eps_at(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> float:
        """eps ramps linearly from 0 over the first ``ramp_epochs`` pretraining epochs; target after."""
        return self.eps * ramp_fraction(epoch, stage, iteration_fraction, self.ramp_epochs)

    def lambda_at(self, epoch: int, stage: str) -> float:
        """``λ = lambda_init · lambda_growth^⌊max(e − L, 0) / lambda_every⌋``, capped at ``lambda_max``;
        ``L = ramp_epochs`` in pretraining, 0 in prune and finetune; ``e`` the 0-based epoch."""
        _check_stage(stage)
        offset = self.ramp_epochs if stage == "pretrain" else 0
        steps = max(epoch - offset, 0) // self.lambda_every
        if self.lambda_init <= 0 or self.lambda_max <= 0:
            return 0.0
        # compared in log space: growth**steps overflows a float long before a long schedule ends
        if math.log(self.lambda_init) + steps * math.log(self.lambda_growth) >= math.log(self.lambda_max):
            return self.lambda_max
        return self.lambda_init * self.lambda_growth**steps

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
        if self.current_lambda > 0 and float(torch.rand(())) < self.sample_prob:
            pick = torch.randperm(len(y))[: self.subset_size].to(y.device)
            loss = loss + self.current_lambda * self.sym_loss(model, x[pick], y[pick], logits.shape[1])
        return loss, logits.detach()

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "eps": self.eps,
            "sample_prob": self.sample_prob,
            "subset_size": self.subset_size,
            "ramp_epochs": self.ramp_epochs,
            "lambda": f"{self.lambda_init} * {self.lambda_growth}^floor(max(e - L, 0) / {self.lambda_every}), "
            f"capped at {self.lambda_max}",
            "loss": "CE(f(x), y) + [with prob. sample_prob] lambda * CE(upper bounds of z_j - z_y) on subset_size examples",
            "bound": MIXTRAIN_BOUND,
            "certificate": "verified accuracy under IBP and CROWN-IBP (l_inf ball ∩ [0, 1])",
        }


# ---------------------------------------------------------------- CROWN-IBP
class CrownIBP:
    """Zhang et al. 2020: ``κ·CE(f(x), y) + (1 − κ)·CE(−m, y)`` where ``m`` lower-bounds the margins
    ``z_y − z_j`` as ``β·CROWN-IBP + (1 − β)·IBP``, ``β = 1 − eps_t/eps``, the specification folded
    into the last linear layer; eps_t ramps linearly per iteration over ``ramp_epochs`` pretraining
    epochs, so prune and finetune are pure IBP at the target eps."""

    name = "crown_ibp"

    def __init__(self, eps: float = 0.007, ramp_epochs: int = 120, kappa: float = 0.0) -> None:
        if not eps > 0:
            raise CoreError("invalid_eps", "objective.eps", f"eps must be > 0, got {eps}")
        if not 0 <= kappa <= 1:
            raise CoreError("invalid_kappa", "objective.kappa", f"kappa must be in [0, 1], got {kappa}")
        self.eps, self.ramp_epochs, self.kappa = float(eps), int(ramp_epochs), float(kappa)
        self.current_eps, self.current_beta = self.eps, 0.0

    def eps_at(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> float:
        return self.eps * ramp_fraction(epoch, stage, iteration_fraction, self.ramp_epochs)

    def beta_at(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> float:
        """``β = 1 − eps_t / eps``: all CROWN at the start of the ramp, pure IBP once it is done."""
        return 1.0 - ramp_fraction(epoch, stage, iteration_fraction, self.ramp_epochs)

    def set_epoch(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> None:
        self.current_eps = self.eps_at(epoch, stage, iteration_fraction)
        self.current_beta = self.beta_at(epoch, stage, iteration_fraction)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kappa > 0:
            logits = model(x)
        else:  # the reference trains on the robust term only; the clean logits are for monitoring
            with torch.no_grad():
                logits = model(x)
        num_classes = logits.shape[1]
        lower = mixed_lower_bound(
            model, x, self.current_eps, margin_spec(y, num_classes).to(x.dtype), self.current_beta
        )
        robust = robust_ce(lower, y, num_classes)
        if self.kappa > 0:
            return self.kappa * F.cross_entropy(logits, y) + (1 - self.kappa) * robust, logits.detach()
        return robust, logits

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "eps": self.eps,
            "ramp_epochs": self.ramp_epochs,
            "kappa": self.kappa,
            "loss": "kappa * CE(f(x), y) + (1 - kappa) * CE(-m, y), m = beta * CROWN-IBP + (1 - beta) * IBP "
            "lower bounds of z_y - z_j, beta = 1 - eps_t / eps",
            "bound": f"{METHOD_DESCRIPTIONS['crown_ibp']}; {METHOD_DESCRIPTIONS['ibp']}",
            "certificate": "verified accuracy under IBP and CROWN-IBP (l_inf ball ∩ [0, 1])",
        }


# ---------------------------------------------------------------- factories and registration
def make_smoothing(cfg: Any) -> SmoothingTraining:
    return SmoothingTraining(sigma=_opt(cfg, "sigma", 0.25), beta=_opt(cfg, "beta", 6.0), mode=_opt(cfg, "mode", "stability"))


def make_mixtrain(cfg: Any) -> MixTrain:
    return MixTrain(
        eps=_opt(cfg, "eps", 0.007),
        sample_prob=_opt(cfg, "sample_prob", 0.8),
        subset_size=_opt(cfg, "subset_size", 5),
        ramp_epochs=_opt(cfg, "ramp_epochs", 15),
        lambda_init=_opt(cfg, "lambda_init", 0.1),
        lambda_growth=_opt(cfg, "lambda_growth", 2.5),
        lambda_every=_opt(cfg, "lambda_every", 5),
        lambda_max=_opt(cfg, "lambda_max", 50.0),
    )


def make_crown_ibp(cfg: Any) -> CrownIBP:
    return CrownIBP(eps=_opt(cfg, "eps", 0.007), ramp_epochs=_opt(cfg, "ramp_epochs", 120), kappa=_opt(cfg, "kappa", 0.0))


FACTORIES: dict[str, Callable[[Any], Any]] = {
    "smoothing": make_smoothing,
    "mixtrain": make_mixtrain,
    "crown_ibp": make_crown_ibp,
}


def register(register_objective: Callable[[str, Callable[[Any], Any]], None]) -> None:
    """Hand the three factories to ``core.objectives.adversarial.register_objective``."""
    for type_name, factory in FACTORIES.items():
        register_objective(type_name, factory)


# ---------------------------------------------------------------- certification
def evaluate_certified(
    model: nn.Module, objective_cfg: Any, test_tensors: tuple[torch.Tensor, torch.Tensor], eval_cfg: Any,
    seed: int = 0,
) -> dict[str, Any]:
    """The certified numbers of ``model`` for its objective type, on ``test_tensors`` = (x, y).

    smoothing → Cohen et al. CERTIFY: ``certified_acc@<r>`` per radius, ``smoothed_acc``,
    ``abstain_rate``, ``mean_certified_radius``; crown_ibp and mixtrain → ``verified_acc_<bound>`` for
    each of ``eval_cfg.bounds`` at ``eval_cfg.eps`` (default: the objective's eps). Top-level numbers
    are metrics; ``procedures`` says how each fraction was measured, ``methods`` tags every number
    with its method, ``details`` holds the raw settings. ``test_tensors`` is already the sample to
    certify (the caller draws it class-stratified); ``seed`` seeds the smoothing noise."""
    kind = getattr(objective_cfg, "type", None)
    x, y = test_tensors
    n_test = len(y)
    if kind == "smoothing":
        sigma = float(_opt(objective_cfg, "sigma", 0.25))
        res = certify_dataset(
            model,
            (x, y),
            sigma=sigma,
            n0=int(_opt(eval_cfg, "smoothing_n0", 100)),
            n=int(_opt(eval_cfg, "smoothing_n", 10_000)),
            alpha=float(_opt(eval_cfg, "smoothing_alpha", 0.001)),
            radii=list(_opt(eval_cfg, "smoothing_radii", [0.0, 0.25, 0.5, 0.75, 1.0])),
            max_samples=None,
            batch_size=int(_opt(eval_cfg, "smoothing_batch_size", 256)),
            seed=int(seed),
        )
        setting = (
            f"{CERTIFY_METHOD} (sigma={sigma:g}, n0={res['n0']}, n={res['n']}, alpha={res['alpha']:g}) "
            f"on {res['num_samples']} test samples"
        )
        out: dict[str, Any] = {}
        procedures: dict[str, str] = {}
        for r, acc in res["certified_accuracy_at"].items():
            key = f"certified_acc@{r:g}"
            out[key] = acc
            procedures[key] = f"certified accuracy of the smoothed classifier at l_2 radius {r:g}: {setting}"
        out["smoothed_acc"] = res["clean_smoothed_accuracy"]
        procedures["smoothed_acc"] = f"accuracy of the smoothed classifier's plurality vote over the n samples: {setting}"
        out["abstain_rate"] = res["abstain_rate"]
        procedures["abstain_rate"] = f"fraction of abstentions (pA_lower < 1/2): {setting}"
        out["mean_certified_radius"] = res["mean_certified_radius"]  # a radius, not a fraction: no procedure row
        methods = {key: CERTIFY_METHOD for key in out}
        return {**out, "procedures": procedures, "methods": methods, "details": res, "method": CERTIFY_METHOD}
    if kind in ("crown_ibp", "mixtrain"):
        check_supported(model)
        eps = float(_opt(eval_cfg, "eps", None) or _opt(objective_cfg, "eps", 0.007))
        bounds = list(_opt(eval_cfg, "bounds", list(BOUND_METHODS)))
        batch_size = int(_opt(eval_cfg, "bound_batch_size", 64))
        out, procedures, methods = {}, {}, {}
        details: dict[str, Any] = {"eps": eps, "num_samples": n_test, "norm": "linf", "domain": "[0, 1]"}
        for method in bounds:
            verified, correct, total = verified_counts(model, (x, y), eps, method, batch_size)
            key = f"verified_acc_{method}"
            out[key] = verified / max(1, total)
            methods[key] = METHOD_DESCRIPTIONS[method]
            procedures[key] = (
                f"verified robust accuracy: every margin z_y - z_j lower-bounded above 0 by {METHOD_DESCRIPTIONS[method]}, "
                f"over the l_inf ball eps={eps:.4g} intersected with [0, 1], on {total} test samples"
            )
            details["clean_acc"] = correct / max(1, total)
        if kind == "mixtrain":
            details["training_bound"] = MIXTRAIN_BOUND
        return {**out, "procedures": procedures, "methods": methods, "details": details}
    raise CoreError("not_certified", "objective.type", f"objective {kind!r} has no certificate")


__all__ = [
    "CrownIBP",
    "FACTORIES",
    "MIXTRAIN_BOUND",
    "MixTrain",
    "SmoothingTraining",
    "evaluate_certified",
    "make_crown_ibp",
    "make_mixtrain",
    "make_smoothing",
    "ramp_fraction",
    "register",
    "robust_ce",
]
