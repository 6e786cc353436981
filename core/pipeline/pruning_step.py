"""The pruning modes beyond HYDRA's default, for one variant: global or learned allocation, channel granularity.

The default — ``pruning.allocation: uniform`` at ``pruning.granularity: unstructured`` — is HYDRA as
published and stays the runner's own code path (``init_scores``, ``set_keep_fraction``, ``refresh_masks``
after every prune step), untouched by this module. Every other combination is a :class:`VariantPruning`,
built at variant entry, which the runner calls at four points:

* **entry** — :meth:`VariantPruning.enter`: the variant's first mask from the initial scores
  (global: one top-k over all layers; learned: rates at the uniform ``k``; channel: channel scores at
  the summed normalised filter L1 norms, top-k channels of every coupled group);
* **every prune step** — it is the ``hook`` of :func:`core.pipeline.training.train_step` (learned: the
  budget penalty joins the loss, the rate gradient is read from the scores' gradient after ``backward``,
  the rates take their own Adam step; channel: the probes' gradient is reduced to the channel scores;
  then the masks are re-chosen: global top-k, learned rates, channel top-k) and the runner sets the
  iteration fraction (:meth:`set_progress`, the learned penalty's schedule);
* **end of prune** — :meth:`finish` (learned: projection onto the exact budget ``kept_count(N, k)``;
  channel: exact keep fractions in the layers); the masks are final from here on, nothing else is
  needed for finetune, evaluation or export (the channel rebuild reads the effective weights);
* **checkpoints** — :meth:`state_dict` / :meth:`load_state_dict` (learned rates and their optimizer,
  channel scores: tensors and primitives only, for the weights-only checkpoint loader), so a resumed
  prune stage continues bit-for-bit. The stage optimizer of a channel prune stage trains the channel
  scores (:meth:`optimizer_parameters`), so its state is the runner's ordinary optimizer state.

**LWM under global allocation** keeps the top-k ``|w|`` of the whole network (global magnitude
pruning, the usual baseline), not the top-k of the layer-normalised scaled scores HYDRA starts from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from core.pruning.allocation import LearnedAllocation, apply_allocation
from core.pruning.masked import init_scores, masked_layers
from core.pruning.methods import METHODS
from core.pruning.structured import ChannelPruning
from core.spec import PruningSpec


def needs_variant_pruning(pruning: PruningSpec) -> bool:
    """False for HYDRA's default (uniform, unstructured): the runner's own path serves it."""
    return pruning.allocation != "uniform" or pruning.granularity != "unstructured"


class VariantPruning:
    """One variant's global/learned/channel pruning state (see the module docstring).

    ``model`` is the masked network (already on its device), ``example_input`` a batch of real inputs
    on the same device (channel granularity traces its groups with it)."""

    def __init__(self, pruning: PruningSpec, method: str, k: float, model: nn.Module, example_input: Tensor) -> None:
        self.options = pruning
        self.method, self.k = method, float(k)
        self.trains_scores = METHODS.get(method).trains_scores
        self.kind = "channel" if pruning.granularity == "channel" else pruning.allocation
        self.channels: ChannelPruning | None = None
        self.learned: LearnedAllocation | None = None
        if self.kind == "channel":
            self.channels = ChannelPruning(model, example_input)
        elif self.kind == "learned":
            self.learned = LearnedAllocation(
                model,
                self.k,
                tau=pruning.learned_tau,
                gamma=pruning.learned_gamma,
                gamma_steps=pruning.learned_gamma_steps,
                gamma_ratio=pruning.learned_gamma_ratio,
                lr=pruning.learned_lr,
            )

    # -- entry ----------------------------------------------------------------------------------
    @torch.no_grad()
    def enter(self, model: nn.Module, score_init: str) -> None:
        """The variant's first mask from scores initialised by ``score_init``."""
        if self.channels is not None:
            self.channels.init_scores(model, score_init)
            self.channels.set_keep(self.k)
            self.channels.refresh(model)
            return
        init_scores(model, score_init)
        if self.learned is not None:
            self.learned.refresh(model)
            return
        if not self.trains_scores:  # global magnitude pruning: raw |w| across layers
            for _, layer in masked_layers(model):
                layer.scores.copy_(layer.weight.detach())
        self._global(model)

    def _global(self, model: nn.Module) -> None:
        apply_allocation(model, "global", self.k, min_per_layer=self.options.global_min_per_layer)

    def optimizer_parameters(self, model: nn.Module) -> list[nn.Parameter] | None:
        """What the prune stage's optimizer trains (None: the runner's default, every parameter that
        requires grad). Channel: the channel scores and the BatchNorm affine, not the per-weight probes."""
        return self.channels.optimizer_parameters(model) if self.channels is not None else None

    # -- the prune step (core.pipeline.training.StepHook) ----------------------------------------
    def set_progress(self, fraction: float) -> None:
        """The fraction of the prune stage done before this step (the learned penalty's schedule)."""
        if self.learned is not None:
            self.learned.set_progress(fraction)

    def zero_grad(self) -> None:
        if self.learned is not None:
            self.learned.zero_grad()

    def penalty(self) -> Tensor | None:
        return self.learned.penalty(self.k) if self.learned is not None else None

    def after_backward(self, model: nn.Module) -> None:
        if self.learned is not None:
            self.learned.accumulate_grad(model)
        elif self.channels is not None:
            self.channels.accumulate_grad(model)

    def after_step(self, model: nn.Module) -> None:
        if self.learned is not None:
            self.learned.step()
            self.learned.refresh(model)
        elif self.channels is not None:
            self.channels.refresh(model)
        else:
            self._global(model)

    # -- end of prune ---------------------------------------------------------------------------
    def finish(self, model: nn.Module) -> None:
        """Make the masks final (learned: exactly ``kept_count(N, k)`` weights kept; channel: exact
        keep fractions). Called at the end of the prune stage, or right after :meth:`enter` when the
        variant has no prune stage (a one-shot baseline)."""
        if self.learned is not None:
            self.learned.finalize(model, self.k)
        elif self.channels is not None:
            self.channels.finalize(model)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"kind", "learned" | "channels": state dict}``: tensors, numbers and dicts only."""
        state: dict[str, Any] = {"kind": self.kind}
        if self.learned is not None:
            state["learned"] = self.learned.state_dict()
        if self.channels is not None:
            state["channels"] = self.channels.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Continue from :meth:`state_dict` (``model`` already holds the checkpoint's weights and masks)."""
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint holds {state.get('kind')!r} pruning state, the spec asks for {self.kind!r}")
        if self.learned is not None:
            self.learned.load_state_dict(state["learned"])
        if self.channels is not None:
            self.channels.load_state_dict(state["channels"])
            self.channels.refresh(model)  # the same masks again, and the per-layer plans accumulate_grad reads
