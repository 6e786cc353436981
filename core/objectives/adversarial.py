"""Training objectives: natural CE, Madry PGD adversarial training, TRADES — and a registry.

An objective is ``loss(model, x, y) -> (loss, clean_logits)`` plus ``name`` and ``describe()``.
The same objective code and the same :func:`train_step` serve dense and masked networks in every
stage, so a masked step costs only the mask (see ``bench/prune_step.py``).

``build_objective(cfg)`` picks the class from ``cfg.type``; the verifiable objectives (smoothing,
MixTrain, CROWN-IBP) live in ``core.objectives.certified`` and are plugged in through
:func:`register_objective` (loaded on first use of an unknown type, or registered by anyone).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.robust.attacks import _check as _check_attack
from core.robust.attacks import pgd, smooth_relu_backward
from core.errors import CoreError
from core.pruning.masked import shared_effective_weights, refresh_masks

EPS_LINF, STEP_LINF = 8 / 255, 2 / 255
EPS_L2, STEP_L2 = 0.5, 0.125
DEFAULT_STEPS = 10
TRADES_BETA = 6.0
_PLUGIN_MODULES = ("core.objectives.certified",)


@runtime_checkable
class Objective(Protocol):
    name: str

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss (to backpropagate) and the clean logits (for train accuracy; detached)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What exactly is optimised, for the report."""
        ...


class NaturalObjective:
    """Cross-entropy on clean inputs."""

    name = "natural"

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits.detach()

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "loss": "CE(f(x), y)"}


class _Attacked:
    """Shared attack settings of the adversarial objectives."""

    def __init__(self, *, norm: str = "linf", eps: float | None = None, step_size: float | None = None,
                 steps: int = DEFAULT_STEPS, random_start: bool = True, relu_backward: str = "exact",
                 relu_tau: float = 0.1) -> None:
        eps = (EPS_LINF if norm == "linf" else EPS_L2) if eps is None else float(eps)
        step_size = (STEP_LINF if norm == "linf" else STEP_L2) if step_size is None else float(step_size)
        try:
            _check_attack(norm, "ce", eps, step_size, steps, 1)
        except CoreError as err:  # name the field the user wrote: objective.eps, not attack.eps
            field = err.field.replace("attack.", "objective.") if err.field else err.field
            raise CoreError(err.code, field, err.message) from None
        self.norm, self.eps, self.step_size, self.steps = norm, eps, step_size, int(steps)
        self.random_start = bool(random_start)
        if relu_backward not in ("exact", "smooth"):
            raise CoreError("invalid_relu_backward", "objective.relu_backward",
                            f"relu_backward must be 'exact' or 'smooth', got {relu_backward!r}")
        self.relu_backward, self.relu_tau = relu_backward, float(relu_tau)

    def attack(self, model: nn.Module, x: Tensor, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        """The training attack, through the smooth ReLU backward when configured (see
        ``core.robust.attacks.smooth_relu_backward`` for why)."""
        if self.relu_backward == "smooth":
            with smooth_relu_backward(model, self.relu_tau):
                return pgd(model, x, y, **self.attack_settings(), **kwargs)
        return pgd(model, x, y, **self.attack_settings(), **kwargs)

    def attack_settings(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps, "step_size": self.step_size, "steps": self.steps,
                "random_start": self.random_start}


class PGDObjective(_Attacked):
    """Madry et al.: CE on PGD examples (attack in eval mode, loss in the caller's mode)."""

    name = "pgd"

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
        return {"type": self.name, "loss": "CE(f(x'), y), x' = PGD maximising CE (model in eval mode)",
                "attack": {**self.attack_settings(), "relu_backward": self.relu_backward, "relu_tau": self.relu_tau}}


class TradesObjective(_Attacked):
    """Zhang et al. TRADES: ``CE(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x'))`` (batch mean).

    ``x'`` maximises the KL to the clean prediction by PGD from ``x + 0.001·N(0, 1)`` with the model in
    eval mode; the clean eval-mode logits are computed once per batch under ``no_grad`` (the reference
    recomputes them in every attack step). Then two train-mode forwards, on ``x`` and on ``x'``.
    """

    name = "trades"

    def __init__(self, *, beta: float = TRADES_BETA, **attack: Any) -> None:
        super().__init__(**attack)
        if not float(beta) >= 0:
            raise CoreError("invalid_beta", "objective.beta", f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

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
        return natural + self.beta * robust, logits.detach()

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "loss": "CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), batch mean",
                "beta": self.beta, "attack": {**self.attack_settings(), "relu_backward": self.relu_backward, "start": "x + 0.001 N(0, 1)",
                                              "maximises": "KL to the clean eval-mode prediction"}}


def train_step(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               *, refresh: bool = False) -> tuple[Tensor, Tensor]:
    """One optimizer step on ``objective``; ``refresh=True`` (prune stage) recomputes the masks after
    the step — the only place a mask changes. Returns the detached loss and the clean logits."""
    optimizer.zero_grad(set_to_none=True)
    loss, logits = objective.loss(model, x, y)
    loss.backward()
    optimizer.step()
    if refresh:
        refresh_masks(model)
    return loss.detach(), logits


# ------------------------------------------------------------------ registry
def _opt(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
    return default if value is None else value


def _attack_kwargs(cfg: Any) -> dict[str, Any]:
    return {"norm": _opt(cfg, "norm", "linf"), "eps": _opt(cfg, "eps"), "step_size": _opt(cfg, "step_size"),
            "steps": _opt(cfg, "steps", DEFAULT_STEPS), "random_start": _opt(cfg, "random_start", True),
            "relu_backward": _opt(cfg, "relu_backward", "exact"), "relu_tau": _opt(cfg, "relu_tau", 0.1)}


_BUILTIN: dict[str, Callable[[Any], Objective]] = {
    "natural": lambda cfg: NaturalObjective(),
    "pgd": lambda cfg: PGDObjective(**_attack_kwargs(cfg)),
    "trades": lambda cfg: TradesObjective(beta=_opt(cfg, "beta", TRADES_BETA), **_attack_kwargs(cfg)),
}
_FACTORIES: dict[str, Callable[[Any], Objective]] = dict(_BUILTIN)
_plugins_loaded = False


def register_objective(type_name: str, factory: Callable[[Any], Objective]) -> None:
    """Make ``build_objective`` build ``factory(cfg)`` for ``cfg.type == type_name``."""
    if type_name in _BUILTIN and factory is not _BUILTIN[type_name]:
        raise ValueError(f"objective type {type_name!r} is built in and cannot be replaced")
    _FACTORIES[type_name] = factory


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module_name in _PLUGIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        if hasattr(module, "register"):
            module.register(register_objective)


def build_objective(cfg: Any) -> Objective:
    """The objective named by ``cfg.type`` (a dict or an object with attributes), configured by cfg."""
    type_name = _opt(cfg, "type")
    if type_name not in _FACTORIES:
        _load_plugins()
    if type_name not in _FACTORIES:
        raise CoreError("unknown_objective", "objective.type",
                        f"unknown objective {type_name!r}; known: {', '.join(sorted(_FACTORIES))}")
    factory = _FACTORIES[type_name]
    if isinstance(cfg, dict) and factory not in _BUILTIN.values():
        cfg = SimpleNamespace(**cfg)  # plug-ins read attributes
    return factory(cfg)


def known_objectives() -> list[str]:
    """Every objective type ``build_objective`` accepts (plug-ins included)."""
    _load_plugins()
    return sorted(_FACTORIES)
