"""The registry of pruning methods: every module of this package registers one (``hydra``, ``lwm``).

A :class:`PruningMethod` says how a variant gets its mask from the shared pretrained network: whether
a ``prune`` stage trains its scores under the robust objective (``trains_scores``), whether its scores
start from ``pruning.score_init``, and which :class:`core.pruning.pruner.Pruner` serves each
``(pruning.allocation, pruning.granularity)`` it supports. The runner asks :func:`build_pruner` for a
variant's pruner and calls its hooks; it knows no method by name. A combination a method does not list
is refused at validation, naming ``pruning.allocation`` (or ``pruning.granularity``).

A method says *how* the mask is chosen; ``pruning.granularity`` says *what* is pruned (single weights or
whole channels) and ``pruning.allocation`` how the budget is spread over the layers. So the L1-norm
filter pruning baseline (Li et al. 2017) is not a method of its own: it is ``lwm`` at channel
granularity — the magnitude heuristic applied to filters, whose magnitude is their L1 norm
(``core.pruning.structured``: the scaled channel-score init is the normalised filter L1 norm, and
LWM keeps that first mask and only finetunes). This keeps ``methods: [hydra, lwm]`` the paper's
comparison at either granularity, and leaves no method name that is valid at one granularity only.

To add a method, add a module here (and its test): CONTRIBUTING.md, "Adding a pruning method".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from core.errors import CoreError
from core.pruning.pruner import Pruner, PrunerContext, PrunerOptions
from core.pruning.sharpness import SharpnessAwarePruner
from core.registry import Registry, import_submodules


@dataclass(frozen=True)
class PruningMethod:
    name: str
    description: str
    #: A ``prune`` stage trains the scores under the objective (HYDRA); else the mask is the scored
    #: init's and only ``finetune`` trains (LWM: |w| scores = least weight magnitude pruning).
    trains_scores: bool
    #: Scores start from ``pruning.score_init`` (else from "scaled": |w|-proportional).
    uses_score_init: bool
    #: The pruner of each (allocation, granularity) the method supports (``core.pruning.pruners``).
    pruners: Mapping[tuple[str, str], type[Pruner]]

    def pruner_class(self, allocation: str, granularity: str) -> type[Pruner]:
        """The pruner for this combination; ``CoreError`` naming the field when the method has none."""
        found = self.pruners.get((allocation, granularity))
        if found is not None:
            return found
        allowed = [a for a, g in self.pruners if g == granularity]
        if not allowed:
            grains = sorted({g for _, g in self.pruners})
            raise CoreError(
                "invalid_granularity",
                "pruning.granularity",
                f"method {self.name!r} prunes at {' / '.join(grains)} granularity, not {granularity!r}",
            )
        raise CoreError(
            "invalid_allocation",
            "pruning.allocation",
            f"method {self.name!r} at {granularity} granularity supports the {' / '.join(allowed)} "
            f"allocation, not {allocation!r}",
        )


METHODS: Registry[PruningMethod] = Registry("pruning method", "pruning.methods")


def register_method(method: PruningMethod) -> PruningMethod:
    return METHODS.register(method.name, method)


def pruner_class(method: str, allocation: str, granularity: str) -> type[Pruner]:
    """The pruner class for ``(method, allocation, granularity)`` (``CoreError`` naming the field)."""
    return METHODS.get(method).pruner_class(allocation, granularity)


def options_sections() -> dict[str, type[PrunerOptions]]:
    """The options models the registered methods' pruners nest in the spec's ``pruning`` section, by
    section (``{"learned": LearnedOptions}``): a pruner's ``Options`` with a ``section``, or such a model
    held by one of its fields (``LearnedChannelOptions.learned``). ``core.spec.PruningSpec`` composes
    them, as ``core.spec`` composes the objectives' spec models."""
    found: dict[str, type[PrunerOptions]] = {}
    for name in METHODS.names():
        for pruner in METHODS.get(name).pruners.values():
            held = (info.annotation for info in pruner.Options.model_fields.values())
            for options in (pruner.Options, *held):
                if not (isinstance(options, type) and issubclass(options, PrunerOptions) and options.section):
                    continue
                if found.setdefault(options.section, options) is not options:
                    raise TypeError(
                        f"{options.__name__} and {found[options.section].__name__} both claim pruning.{options.section}"
                    )
    return found


def build_pruner(pruning: Any, method: str, k: float, model: nn.Module, example_input: Tensor) -> Pruner:
    """One variant's pruner: ``pruning`` is the spec's ``pruning`` section, ``model`` the masked
    network on its device, ``example_input`` a batch of real inputs on the same device. With
    ``pruning.score_sharpness`` set, a method that trains scores gets its pruner wrapped in
    ``core.pruning.sharpness.SharpnessAwarePruner`` (any allocation and granularity)."""
    entry = METHODS.get(method)
    cls = entry.pruner_class(pruning.allocation, pruning.granularity)
    score_init = pruning.score_init if entry.uses_score_init else "scaled"
    pruner = cls(PrunerContext(method, float(k), score_init, pruning, model, example_input))
    sharpness = getattr(pruning, "score_sharpness", None)
    if sharpness is not None and entry.trains_scores:  # a one-shot method has no score step to perturb
        return SharpnessAwarePruner(pruner, sharpness.rho, sharpness.scope)
    return pruner


MODULES = import_submodules(__name__)

__all__ = [
    "METHODS",
    "MODULES",
    "PruningMethod",
    "build_pruner",
    "options_sections",
    "pruner_class",
    "register_method",
]
