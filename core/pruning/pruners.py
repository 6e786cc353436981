"""The pruners the shipped methods are made of: one per ``pruning.allocation`` × ``pruning.granularity``.

* :class:`UniformPruner` — HYDRA as published (``allocation: uniform``, ``granularity: unstructured``):
  scores from ``pruning.score_init``, every layer keeps its own top ``kept_count(n_l, k)`` by
  ``|score|``, refreshed after every optimizer step of the prune stage (``train_step``'s default).
* :class:`GlobalPruner` — one top-k over all layers (``core.pruning.allocation.apply_allocation``)
  after every step, each layer's best ``global_min_per_layer`` reserved.
* :class:`LearnedPruner` — a trained keep rate per layer (``core.pruning.allocation.LearnedAllocation``):
  its budget penalty joins the loss, the rate gradient is read from the scores' gradient after
  ``backward``, the rates take their own Adam step, and :meth:`~LearnedPruner.finish` projects onto the
  exact budget.
* :class:`ChannelPruner` — channel scores over the coupled channel groups
  (``core.pruning.structured.ChannelPruning``): the prune stage's optimizer trains them (not the
  per-weight probes), the probes' gradient is reduced to them after ``backward``, the top-k channels
  of every group are kept; :meth:`~ChannelPruner.finish` sets the exact keep fractions.

A method (``core.pruning.methods``) maps each combination it supports to one of these, or to a subclass
(LWM's global magnitude pruning overrides :meth:`GlobalPruner.init_scores`). Whether scores train is
the method's ``trains_scores`` (the plan gives a prune stage only then), not the pruner's: the same
pruner serves HYDRA's trained scores and LWM's one-shot first mask.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from core.pruning.allocation import LearnedAllocation, apply_allocation
from core.pruning.masked import init_scores, refresh_masks, set_keep_fraction
from core.pruning.pruner import Pruner, PrunerContext, PrunerOptions, PruneStep
from core.pruning.structured import ChannelPruning, check_channel_supported


class UniformPruner(Pruner):
    """HYDRA as published: every layer keeps the same fraction ``k`` of its weights."""

    @torch.no_grad()
    def enter(self, model: nn.Module) -> None:
        init_scores(model, self.score_init)
        set_keep_fraction(model, self.k)
        refresh_masks(model)

    def after_step(self, step: PruneStep) -> bool:
        return False  # train_step refreshes every layer's top-k: the one place a uniform mask changes


# The options' defaults and bounds are core.spec.PruningSpec's (global_*, learned_*), validated there.
class GlobalOptions(PrunerOptions):
    prefix: ClassVar[str] = "global_"
    min_per_layer: int


class GlobalPruner(Pruner):
    """One top-``kept_count(N, k)`` over the ``|scores|`` of all layers together."""

    Options = GlobalOptions
    state_kind = "global"  # no state, but the key a checkpoint of this mode has always carried
    options: GlobalOptions

    def init_scores(self, model: nn.Module) -> None:
        init_scores(model, self.score_init)

    @torch.no_grad()
    def enter(self, model: nn.Module) -> None:
        self.init_scores(model)
        self._allocate(model)

    def after_step(self, step: PruneStep) -> bool:
        self._allocate(step.model)
        return True

    def _allocate(self, model: nn.Module) -> None:
        apply_allocation(model, "global", self.k, min_per_layer=self.options.min_per_layer)


class LearnedOptions(PrunerOptions):
    prefix: ClassVar[str] = "learned_"
    tau: float
    gamma: float
    gamma_steps: int
    gamma_ratio: float
    lr: float


class LearnedPruner(Pruner):
    """HARP-style learned per-layer keep rates (``core.pruning.allocation``, "Learned allocation")."""

    Options = LearnedOptions
    state_kind = "learned"
    options: LearnedOptions

    def __init__(self, ctx: PrunerContext) -> None:
        super().__init__(ctx)
        o = self.options
        self.learned = LearnedAllocation(
            ctx.model, self.k, tau=o.tau, gamma=o.gamma, gamma_steps=o.gamma_steps, gamma_ratio=o.gamma_ratio, lr=o.lr
        )

    @torch.no_grad()
    def enter(self, model: nn.Module) -> None:
        init_scores(model, self.score_init)
        self.learned.refresh(model)

    def set_progress(self, fraction: float) -> None:
        self.learned.set_progress(fraction)

    def zero_grad(self, step: PruneStep) -> None:
        self.learned.zero_grad()

    def penalty(self, step: PruneStep) -> Tensor | None:
        return self.learned.penalty(self.k)

    def after_backward(self, step: PruneStep) -> None:
        self.learned.accumulate_grad(step.model)

    def own_parameters(self) -> list[nn.Parameter]:
        return list(self.learned.parameters())  # the rate logits: their own Adam (LearnedAllocation.step)

    def after_step(self, step: PruneStep) -> bool:
        self.learned.step()
        self.learned.refresh(step.model)
        return True

    def finish(self, model: nn.Module) -> None:
        self.learned.finalize(model, self.k)  # exactly kept_count(N, k) weights

    def _state(self) -> dict[str, Any]:
        return {"learned": self.learned.state_dict()}

    def _load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        self.learned.load_state_dict(state["learned"])


class ChannelPruner(Pruner):
    """Whole channels of every coupled channel group; the first mask from ``scaled`` channel scores is
    L1-norm filter pruning (Li et al. 2017)."""

    state_kind = "channel"

    def __init__(self, ctx: PrunerContext) -> None:
        super().__init__(ctx)
        self.channels = ChannelPruning(ctx.model, ctx.example_input)

    @classmethod
    def check_supported(cls, model: nn.Module, example_input: Tensor) -> None:
        check_channel_supported(model, example_input)

    @torch.no_grad()
    def enter(self, model: nn.Module) -> None:
        self.channels.init_scores(model, self.score_init)
        self.channels.set_keep(self.k)
        self.channels.refresh(model)

    def optimizer_parameters(self, model: nn.Module) -> list[nn.Parameter] | None:
        return self.channels.optimizer_parameters(model)  # channel scores and BatchNorm, not the probes

    def after_backward(self, step: PruneStep) -> None:
        self.channels.accumulate_grad(step.model)

    def after_step(self, step: PruneStep) -> bool:
        self.channels.refresh(step.model)
        return True

    def finish(self, model: nn.Module) -> None:
        self.channels.finalize(model)

    def _state(self) -> dict[str, Any]:
        return {"channels": self.channels.state_dict()}

    def _load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        self.channels.load_state_dict(state["channels"])
        self.channels.refresh(model)  # the same masks again, and the per-layer plans accumulate_grad reads


#: A score-based method's pruners (HYDRA's): every allocation at unstructured granularity, uniform at channel.
SCORE_PRUNERS: dict[tuple[str, str], type[Pruner]] = {
    ("uniform", "unstructured"): UniformPruner,
    ("global", "unstructured"): GlobalPruner,
    ("learned", "unstructured"): LearnedPruner,
    ("uniform", "channel"): ChannelPruner,
}

__all__ = ["SCORE_PRUNERS", "ChannelPruner", "GlobalPruner", "LearnedPruner", "UniformPruner"]
