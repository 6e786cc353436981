"""What an evaluation attack is, and the registry of them.

An attack of the final evaluation is one class (an :class:`Attack`) registered in ``ATTACKS`` with
:func:`register_attack`, in one module of ``core/robust/suite/`` (the package imports every module of
itself, so dropping the file in is the whole registration; CONTRIBUTING.md, "Adding an evaluation
attack"). It says what the report calls it (``metric``), whether it is gradient-free (the
gradient-masking check compares the best gradient-free attack with the best gradient attack), the
exact procedure text the report prints, when it applies (``applies``: a switch of ``evaluation:``, the
number of classes, the norm) and how it runs: :meth:`Attack.run` returns, per example, whether the
network still classifies the attacked input correctly.

``core.pipeline.evaluate.evaluate_variant`` runs every attack that applies, in ``order``, each alone over
its whole sample, and counts an example as robust only if it is correct clean and under every attack
(the per-example worst case); it knows no attack by name.

Stopping: ``run`` receives ``should_stop`` (the run's ``RunCallbacks.should_cancel``, which also answers
True on shutdown) and asks it at least once per batch, raising :class:`core.errors.RunCanceled`, so a
cancel or SIGTERM during a long attack takes effect within one batch (or one forward pass), not after
the attack. :func:`stop_checked_forward` does this for loops we do not own (pyautoattack's, a
certificate's) by asking on every forward pass of the network.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from core.errors import RunCanceled
from core.registry import Registry

if TYPE_CHECKING:
    from core.spec import EvaluationSpec

#: Asked during an attack; True stops the evaluation with ``RunCanceled``.
ShouldStop = Callable[[], bool]
#: The sample an attack runs on: ``final`` (``evaluation.max_samples``) or ``robust`` (the class-stratified
#: sample of ``evaluation.autoattack_max_samples`` nested in it, for the slow attacks). When any attack
#: runs on ``robust``, the headline ``robust_acc`` is the worst case on that sample.
Sample = Literal["final", "robust"]


def never_stop() -> bool:
    return False


def stop_if_asked(should_stop: ShouldStop, where: str) -> None:
    """Raise ``RunCanceled`` when ``should_stop()`` says so; ``where`` names the stage for the log
    ("in PGD", "before the certification")."""
    if should_stop():
        raise RunCanceled(f"canceled during the final evaluation, {where}")


@contextlib.contextmanager
def stop_checked_forward(model: nn.Module, should_stop: ShouldStop, where: str) -> Iterator[None]:
    """Inside the block every forward pass of ``model`` first asks ``should_stop`` (``RunCanceled`` if
    True): a loop we do not own (a certificate's noise batches or bound batches) stops within one
    forward pass. The hook is removed on exit, also when the block raises."""

    def check(_module: nn.Module, _inputs: Any) -> None:
        stop_if_asked(should_stop, where)

    handle = model.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def clean_flags(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Per example: is the clean input classified correctly."""
    return torch.cat(
        [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, len(x), batch_size)]
    )


@dataclass(frozen=True)
class AttackSettings:
    """What every attack of one evaluation shares: the ball, the seed, the batch size, the number of
    classes and the ``evaluation:`` section of the spec (each attack reads its own switches there)."""

    norm: str
    eps: float
    step_size: float
    seed: int
    batch_size: int
    num_classes: int
    evaluation: EvaluationSpec

    @property
    def ball(self) -> str:
        """The ball as the procedures print it, e.g. ``linf eps=0.03137``."""
        return f"{self.norm} eps={self.eps:.4g}"


@dataclass(frozen=True)
class AttackGroup:
    """Attacks that are also reported together (AutoAttack's components): the per-example worst case
    over the members that ran, under ``metric``, after the last of them."""

    name: str
    metric: str
    #: ``procedure(settings, on)``: the report's text for the group metric (``on``: the sample text).
    procedure: Callable[[AttackSettings, str], str]


class Attack(ABC):
    """One attack of the final evaluation. Subclasses set the class attributes and implement
    :meth:`procedure` and :meth:`run`; :func:`register_attack` registers an instance."""

    #: The registry name (also the key of the gradient-masking check's accuracies).
    name: ClassVar[str]
    #: The report's metric key (e.g. ``pgd_acc``); never change it: renderers read it.
    metric: ClassVar[str]
    #: Uses no gradient (takes the gradient-free side of the gradient-masking check).
    gradient_free: ClassVar[bool]
    #: One line for the catalogue.
    description: ClassVar[str]
    #: Position in the evaluation (ascending). The evaluation seeds torch's global RNG with the sample
    #: seed once, before the first attack, so an attack that draws from it (our PGD's random starts)
    #: gives the same numbers only in the same position; one that must not depend on what ran before
    #: seeds its own ``torch.Generator``.
    order: ClassVar[int]
    sample: ClassVar[Sample] = "final"
    group: ClassVar[AttackGroup | None] = None
    #: The examples :meth:`run` attacks, in batches of ``settings.batch_size`` in the sample's order:
    #: ``all`` of them, or only the ``clean``-correct ones (the others count as broken). A data-parallel
    #: evaluation (``core.pipeline.evaluate``) gives each rank whole batches of these, so that every
    #: example is attacked in the same batch as in a one-process run.
    attacks: ClassVar[Literal["all", "clean"]] = "all"

    def applies(self, settings: AttackSettings) -> bool:
        """Whether this attack runs in an evaluation with ``settings`` (its switch, classes, norm)."""
        return True

    def label(self, settings: AttackSettings) -> str:
        """Its name in the headline's "worst case over ..." list."""
        return self.name.upper()

    @abstractmethod
    def procedure(self, settings: AttackSettings, on: str) -> str:
        """The exact procedure behind its metric, ending with ``on`` (which sample, how many)."""

    @abstractmethod
    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        settings: AttackSettings,
        *,
        clean: Tensor,
        should_stop: ShouldStop = never_stop,
    ) -> Tensor:
        """Per example of ``(x, y)`` (bool, on ``x``'s device): is the attacked input still classified
        correctly. ``clean`` are the clean flags of the same examples (an attack may skip the examples
        that are already wrong: they count as broken). The model is in eval mode. ``should_stop`` is
        asked at least once per batch (``stop_if_asked``)."""

    def skip(self, x: Tensor, settings: AttackSettings) -> None:
        """Draw from torch's global RNG exactly what :meth:`run` would draw for ``x``, without attacking
        it: a rank of a data-parallel evaluation skips the other ranks' batches this way, so its own
        batches start from the RNG state of a one-process run. Nothing by default (an attack that draws
        nothing from the global RNG, or reseeds it itself before every batch)."""
        return None


ATTACKS: Registry[Attack] = Registry("attack", "evaluation")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    ATTACKS.register(cls.name, cls())
    return cls


def planned_attacks(settings: AttackSettings) -> list[Attack]:
    """The registered attacks that apply to ``settings``, in evaluation order."""
    return sorted((a for _, a in ATTACKS.items() if a.applies(settings)), key=lambda a: (a.order, a.name))
