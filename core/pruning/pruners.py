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
  of every group are kept; :meth:`~ChannelPruner.finish` sets the exact keep fractions. With
  ``pruning.budget: macs`` every group keeps the one channel fraction whose MACs are ``k`` of the dense
  network's (``core.pruning.channel_budget``).
* :class:`LearnedChannelPruner` — ``allocation: learned`` at channel granularity under the MAC budget:
  HARP-style per-group rates with the MAC hinge, projected onto the budget at the end.

A method (``core.pruning.methods``) maps each combination it supports to one of these, or to a subclass
(LWM's global magnitude pruning overrides :meth:`GlobalPruner.init_scores`). Whether scores train is
the method's ``trains_scores`` (the plan gives a prune stage only then), not the pruner's: the same
pruner serves HYDRA's trained scores and LWM's one-shot first mask.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from core.errors import CoreError
from core.pruning.allocation import LearnedAllocation, RateTraining, apply_allocation
from core.pruning.channel_budget import ChannelCost, ChannelRates, project_counts_to_cost, uniform_counts
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


class GlobalOptions(PrunerOptions):
    """The global allocation's option, the flat field ``pruning.global_min_per_layer`` (its default and
    bounds are ``core.spec.PruningSpec``'s)."""

    flat_prefix: ClassVar[str] = "global_"
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

    def refresh(self, model: nn.Module) -> None:
        self._allocate(model)

    def _allocate(self, model: nn.Module) -> None:
        apply_allocation(model, "global", self.k, min_per_layer=self.options.min_per_layer)


class LearnedOptions(PrunerOptions):
    """Learned allocation (allocation: learned, unstructured or channel): the options of the per-layer
    keep rates it trains with the scores, HARP-style (core.pruning.allocation.LearnedAllocation,
    core.pruning.channel_budget.ChannelRates). Formerly the flat fields learned_<name>, still accepted."""

    section: ClassVar[str | None] = "learned"
    flat_prefix: ClassVar[str] = "learned_"

    gamma: float = Field(10.0, gt=0, le=1e6, description="Final weight of the budget penalty gamma·(K/k − 1)².")
    gamma_steps: int = Field(
        4,
        ge=1,
        le=1000,
        description="The penalty weight grows in this many equal steps over the prune stage "
        "(gamma·ratio^(steps−1), ..., gamma).",
    )
    gamma_ratio: float = Field(0.1, gt=0, le=1, description="Ratio between consecutive penalty weights.")
    tau: float = Field(
        0.05,
        gt=0,
        le=10,
        description="Temperature of the soft rank threshold that carries the loss gradient to the per-layer rates.",
    )
    lr: float = Field(0.01, gt=0, le=10, description="Adam learning rate of the per-layer rate logits.")

    def rate_training(self) -> RateTraining:
        """These options as the rates' training settings."""
        return RateTraining(
            tau=self.tau, gamma=self.gamma, gamma_steps=self.gamma_steps, gamma_ratio=self.gamma_ratio, lr=self.lr
        )


class _TrainsRates(Pruner):
    """What the learned pruners share: keep rates, ``self.rates``, that train with the scores under HARP's
    stepwise budget penalty (``RateTraining``, from ``pruning.learned``), built by :meth:`_make_rates`
    once the pruner's own setup is done: :class:`LearnedPruner`'s per-layer ``LearnedAllocation``,
    :class:`LearnedChannelPruner`'s per-group ``ChannelRates``."""

    trains_rates = True
    rates: LearnedAllocation | ChannelRates

    def __init__(self, ctx: PrunerContext) -> None:
        super().__init__(ctx)
        self.rates = self._make_rates(ctx)

    @abstractmethod
    def _make_rates(self, ctx: PrunerContext) -> LearnedAllocation | ChannelRates:
        """The rates at the start of the prune stage."""

    def set_progress(self, fraction: float) -> None:
        self.rates.set_progress(fraction)

    def zero_grad(self, step: PruneStep) -> None:
        self.rates.zero_grad()

    def penalty(self, step: PruneStep) -> Tensor | None:
        return self.rates.penalty(self.k)

    def own_parameters(self) -> list[nn.Parameter]:
        # The rate logits train with their own Adam: averaged across ranks, unscaled under fp16 (the
        # penalty's gradient reaches them through the scaled loss), and compared by the ranks' check.
        return list(self.rates.parameters())


class LearnedPruner(_TrainsRates):
    """HARP-style learned per-layer keep rates (``core.pruning.allocation``, "Learned allocation")."""

    Options = LearnedOptions
    state_kind = "learned"
    options: LearnedOptions
    rates: LearnedAllocation

    def _make_rates(self, ctx: PrunerContext) -> LearnedAllocation:
        return LearnedAllocation(ctx.model, self.k, self.options.rate_training())

    @torch.no_grad()
    def enter(self, model: nn.Module) -> None:
        init_scores(model, self.score_init)
        self.rates.refresh(model)

    def after_backward(self, step: PruneStep) -> None:
        self.rates.accumulate_grad(step.model)

    def after_step(self, step: PruneStep) -> bool:
        self.rates.step()
        self.rates.refresh(step.model)
        return True

    def refresh(self, model: nn.Module) -> None:
        self.rates.refresh(model)

    def finish(self, model: nn.Module) -> None:
        self.rates.finalize(model, self.k)  # exactly kept_count(N, k) weights

    def _state(self) -> dict[str, Any]:
        return {"learned": self.rates.state_dict()}

    def _load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        self.rates.load_state_dict(state["learned"])


class ChannelOptions(PrunerOptions):
    budget: str  # pruning.budget: "params" (k = channels of every group) or "macs" (k = MACs kept)


class ChannelPruner(Pruner):
    """Whole channels of every coupled channel group; the first mask from ``scaled`` channel scores is
    L1-norm filter pruning (Li et al. 2017). With ``pruning.budget: macs`` every group keeps the one
    channel fraction whose MACs are ``k`` of the dense network's (``core.pruning.channel_budget``)."""

    Options: ClassVar[type[PrunerOptions]] = ChannelOptions
    state_kind = "channel"
    options: ChannelOptions

    def __init__(self, ctx: PrunerContext) -> None:
        super().__init__(ctx)
        self.channels = ChannelPruning(ctx.model, ctx.example_input)
        self.cost = ChannelCost(ctx.model, self.channels, ctx.example_input) if self.options.budget == "macs" else None

    @classmethod
    def check_supported(cls, model: nn.Module, example_input: Tensor) -> None:
        check_channel_supported(model, example_input)

    def _set_budget(self) -> None:
        self.channels.set_keep(self.k)
        if self.cost is not None:
            self.channels.set_counts(uniform_counts(self.cost, self.k))

    @torch.no_grad()
    def enter(self, model: nn.Module) -> None:
        self.channels.init_scores(model, self.score_init)
        self._set_budget()
        self.channels.refresh(model)

    def optimizer_parameters(self, model: nn.Module) -> list[nn.Parameter] | None:
        return self.channels.optimizer_parameters(model)  # channel scores and BatchNorm, not the probes

    def after_backward(self, step: PruneStep) -> None:
        self.channels.accumulate_grad(step.model)

    def after_step(self, step: PruneStep) -> bool:
        self.channels.refresh(step.model)
        return True

    def collect_score_grad(self, step: PruneStep) -> None:
        self.channels.accumulate_grad(step.model)

    def score_tensors(self, model: nn.Module) -> list[Tensor]:
        return list(self.channels.scores)  # after accumulate_grad their .grad is the channel gradient

    def refresh(self, model: nn.Module) -> None:
        self.channels.refresh(model)

    def finish(self, model: nn.Module) -> None:
        self.channels.finalize(model)

    def _state(self) -> dict[str, Any]:
        return {"channels": self.channels.state_dict()}

    def _load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        self.channels.load_state_dict(state["channels"])
        if self.cost is not None:  # the per-group counts follow from k (uniform) or the rates (learned)
            self._set_budget()
        self.channels.refresh(model)  # the same masks again, and the per-layer plans accumulate_grad reads


class LearnedChannelOptions(ChannelOptions):
    learned: LearnedOptions  # pruning.learned: the learned rates' options, as at unstructured granularity


class LearnedChannelPruner(_TrainsRates, ChannelPruner):
    """HARP-style learned per-group channel rates under the MAC budget (``pruning.budget: macs``; see
    ``core.pruning.channel_budget``): the rates start at the uniform MAC-matching fraction, train with
    the scores, and :meth:`finish` projects them onto the budget."""

    Options = LearnedChannelOptions
    state_kind = "learned_channel"
    options: LearnedChannelOptions
    rates: ChannelRates

    def _make_rates(self, ctx: PrunerContext) -> ChannelRates:
        if self.cost is None:
            raise CoreError("invalid_budget", "pruning.budget", "learned channel rates need budget: macs")
        return ChannelRates(self.cost, uniform_counts(self.cost, self.k), self.options.learned.rate_training())

    def _set_budget(self) -> None:
        self.channels.set_keep(self.k)
        self.channels.set_counts(self.rates.counts())

    def after_backward(self, step: PruneStep) -> None:
        super().after_backward(step)
        self.rates.accumulate_grad(self.channels)

    def after_step(self, step: PruneStep) -> bool:
        self.rates.optimizer.step()
        self._set_budget()
        self.channels.refresh(step.model)
        return True

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        assert self.cost is not None
        counts = project_counts_to_cost(self.rates.logits.tolist(), self.cost, self.k)
        self.channels.set_counts(counts)
        self.channels.refresh(model)
        self.channels.finalize(model)
        exact = [min(1 - 1e-12, max(1e-12, c / n)) for c, n in zip(counts, self.cost.sizes)]
        self.rates.logits.copy_(torch.tensor([math.log(x / (1 - x)) for x in exact], dtype=torch.float64))

    def _state(self) -> dict[str, Any]:
        return {"channels": self.channels.state_dict(), "rates": self.rates.state_dict()}

    def _load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        self.rates.load_state_dict(state["rates"])
        super()._load_state(state, model)


#: A score-based method's pruners (HYDRA's): every allocation at unstructured granularity, uniform at channel.
SCORE_PRUNERS: dict[tuple[str, str], type[Pruner]] = {
    ("uniform", "unstructured"): UniformPruner,
    ("global", "unstructured"): GlobalPruner,
    ("learned", "unstructured"): LearnedPruner,
    ("uniform", "channel"): ChannelPruner,
    ("learned", "channel"): LearnedChannelPruner,
}

__all__ = [
    "SCORE_PRUNERS",
    "ChannelPruner",
    "GlobalOptions",
    "GlobalPruner",
    "LearnedChannelPruner",
    "LearnedOptions",
    "LearnedPruner",
    "UniformPruner",
]
