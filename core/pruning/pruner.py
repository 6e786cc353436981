"""The pruner protocol: everything one pruning method does to one variant, behind five hooks.

A :class:`Pruner` is built for one variant (method, ``k``) at variant entry by
``core.pruning.methods.build_pruner`` — the registry picks the class for the spec's
``(method, pruning.allocation, pruning.granularity)`` — and the runner (``core.pipeline.runner``) calls
it, knowing no method by name:

* **options** — :attr:`Pruner.Options`, a Pydantic model of the method's own settings, read from the
  spec's ``pruning`` section (:meth:`PrunerOptions.from_pruning`); a pruner's own options model is
  nested there under its ``section`` (``pruning.learned``);
* **at job start** — :meth:`Pruner.check_supported`: refuse a network the pruner cannot serve before
  any training (channel: grouped convolutions);
* **variant entry** — :meth:`Pruner.enter`: scores initialised from the pretrained weights and the
  first mask; :meth:`Pruner.optimizer_parameters`: what the prune stage's optimizer trains;
* **every prune step** — the pruner is the step hook of ``core.pipeline.training.train_step``
  (:meth:`zero_grad`, :meth:`penalty`, :meth:`after_backward`, :meth:`after_step`), each given the
  :class:`PruneStep` (model, objective, optimizer, batch), so a method may run its own extra
  forward/backward (e.g. a sharpness-aware perturbation of the scores) in :meth:`after_backward`;
  :meth:`after_step` produces the masks from the updated scores; the runner also reports the stage's
  progress (:meth:`set_progress`);
* **end of the prune stage** — :meth:`Pruner.finish` makes the masks final (also right after
  :meth:`enter` for a variant with no prune stage: a one-shot baseline);
* **checkpoint** — :meth:`Pruner.state_dict` / :meth:`Pruner.load_state_dict`: ``None`` for a pruner
  whose whole state is the model's scores and masks, else ``{"kind": state_kind, ...}`` of tensors,
  numbers and dicts (the weights-only checkpoint loader), so a resumed prune stage continues bit-for-bit.

The mask is the masked layers' ``mask`` buffer (``core.pruning.masked``); the finetune stage,
evaluation and export read only that, so nothing after :meth:`finish` depends on the pruner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from core.config import OptionsModel
from core.pruning.masked import masked_layers, refresh_masks

if TYPE_CHECKING:  # the objective is handed in by the pipeline; pruning sits below objectives
    from core.objectives import Objective


class PrunerOptions(OptionsModel):
    """A pruner's own settings (:attr:`Pruner.Options`), read from the spec's ``pruning`` section by
    :meth:`from_pruning`. Options only one pruner has are declared beside it with their defaults, bounds
    and descriptions, and the spec nests them under ``pruning.<section>``: ``core.spec.PruningSpec``
    composes the model as its field ``section`` (``pruning.learned`` is
    ``core.pruning.pruners.LearnedOptions``). Without a ``section``, each option is the ``pruning``
    field ``<flat_prefix><name>`` (``budget``; ``global_min_per_layer`` for ``GlobalOptions``)."""

    section: ClassVar[str | None] = None

    @classmethod
    def from_pruning(cls, pruning: Any) -> PrunerOptions:
        """The options from the spec's ``pruning`` section (any object with those attributes)."""
        if cls.section is not None:
            # a spec built before the method was registered (core.spec composes the sections of the
            # methods registered when it is imported) has no such section: the defaults
            value = getattr(pruning, cls.section, None)
            if value is None:
                return cls()
            return value if isinstance(value, cls) else cls.model_validate(value, from_attributes=True)
        return cls(**{name: getattr(pruning, cls.flat_prefix + name) for name in cls.model_fields})


@dataclass(frozen=True)
class PrunerContext:
    """What a pruner is built with: the variant, the spec's ``pruning`` section, the masked network
    (on its device) and a batch of real inputs on the same device (channel pruning traces with it)."""

    method: str
    k: float
    score_init: str  # pruning.score_init, or "scaled" for a method that ignores it
    pruning: Any  # core.spec.PruningSpec (pruning sits below spec in the import layers)
    model: nn.Module
    example_input: Tensor


@dataclass(frozen=True)
class PruneStep:
    """One optimizer step of the prune stage as a pruner's step hooks see it."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    x: Tensor
    y: Tensor


class Pruner(ABC):
    """One variant's pruning (see the module docstring for when each hook runs)."""

    #: The method's own options (an empty model: none).
    Options: ClassVar[type[PrunerOptions]] = PrunerOptions
    #: ``"kind"`` of this pruner's checkpoint state; None: it keeps no state beyond the model's.
    state_kind: ClassVar[str | None] = None
    #: It trains per-layer keep rates in the prune stage under the budget ``k`` (a learned allocation):
    #: the spec then needs a prune stage that runs and every ``k`` below 1 (``core.spec`` checks both,
    #: ``api/openapi.py`` writes both into the JSON Schema from this flag).
    trains_rates: ClassVar[bool] = False

    def __init__(self, ctx: PrunerContext) -> None:
        self.method, self.k, self.score_init = ctx.method, float(ctx.k), ctx.score_init
        self.options = self.Options.from_pruning(ctx.pruning)

    @classmethod
    def check_supported(cls, model: nn.Module, example_input: Tensor) -> None:
        """Refuse (``CoreError`` naming the field) a network this pruner cannot serve; called once at
        job start, before any training."""
        return None  # a hook with nothing to do by default

    # -- variant entry --------------------------------------------------------------------------
    @abstractmethod
    def enter(self, model: nn.Module) -> None:
        """Initialise the scores from the variant's starting weights and set the first mask."""

    def optimizer_parameters(self, model: nn.Module) -> list[nn.Parameter] | None:
        """What the prune stage's optimizer trains (None: every parameter that requires grad)."""
        return None

    # -- every prune step (core.pipeline.training.StepHook) -------------------------------------
    def set_progress(self, fraction: float) -> None:
        """The fraction of the prune stage done before the coming step."""
        return None  # a hook with nothing to do by default

    def zero_grad(self, step: PruneStep) -> None:
        """Clear the pruner's own gradients (with the optimizer's, before the forward)."""
        return None  # a hook with nothing to do by default

    def penalty(self, step: PruneStep) -> Tensor | None:
        """A term added to the loss that is back-propagated (None: none)."""
        return None

    def after_backward(self, step: PruneStep) -> None:
        """After ``backward``, before the optimizer steps: read or change the gradients, or run an
        extra forward/backward of ``step.objective`` on ``step.x, step.y``."""
        return None  # a hook with nothing to do by default

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters the pruner trains with an optimizer of its own (not the prune stage's): their
        gradients are averaged across data-parallel ranks and unscaled under fp16 like the model's."""
        return []

    @abstractmethod
    def after_step(self, step: PruneStep) -> bool:
        """After the optimizer step: produce the masks from the updated scores. Return False to leave
        it to ``train_step``'s default, every layer's own top-k (``refresh_masks``)."""

    # -- what a wrapper (core.pruning.sharpness) needs to perturb the scores --------------------
    def score_tensors(self, model: nn.Module) -> list[Tensor]:
        """The tensors that hold the trained scores; after :meth:`after_backward` their ``.grad`` is
        the loss gradient in score space (per-weight scores by default)."""
        return [layer.scores for _, layer in masked_layers(model)]

    def collect_score_grad(self, step: PruneStep) -> None:
        """After ``backward``: make :meth:`score_tensors`' ``.grad`` the loss gradient, and nothing else
        (no rate gradient): the part of :meth:`after_backward` a wrapper needs at a point it discards.
        Default: nothing (per-weight scores get theirs from ``backward``)."""
        return None  # the per-weight scores' .grad is already the gradient

    def refresh(self, model: nn.Module) -> None:
        """The masks from the current scores by this pruner's rule, with no training side effect (no
        rate step): what :meth:`after_step` does to the masks. Default: every layer's own top-k."""
        refresh_masks(model)

    # -- end of the prune stage -----------------------------------------------------------------
    def finish(self, model: nn.Module) -> None:
        """Make the masks final (nothing to do when :meth:`after_step`'s masks already are)."""
        return None  # a hook with nothing to do by default

    # -- checkpoint -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """``None``, or ``{"kind": state_kind, ...}``: tensors, numbers and dicts only."""
        return None if self.state_kind is None else {"kind": self.state_kind, **self._state()}

    def load_state_dict(self, state: dict[str, Any] | None, model: nn.Module) -> None:
        """Continue from :meth:`state_dict` (``model`` already holds the checkpoint's weights and masks)."""
        kind = None if state is None else state.get("kind")
        if kind != self.state_kind:
            raise ValueError(f"checkpoint holds {kind!r} pruning state, the spec asks for {self.state_kind!r}")
        if state is not None:
            self._load_state(state, model)

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        return None  # no state beyond "kind"


__all__ = ["PruneStep", "Pruner", "PrunerContext", "PrunerOptions"]
