"""What an objective is, and the registry of them.

An objective is one module of ``core/objectives/`` holding two classes:

* its **spec model** (a :class:`ObjectiveSpec`, Pydantic, no torch): the fields a job spec writes under
  ``objective:``, with their defaults and bounds, and ``type: Literal["<name>"]``;
* its **training class** (an :class:`Objective`, registered with :func:`register_objective`): the loss,
  what ``describe()`` tells the report, the schedule hook ``set_epoch``, and the evaluation the pipeline
  runs for it: ``attacked`` (an l_p ball an attack can search, evaluated by the attack suite of
  ``core.robust``), ``certify`` (a certificate, see ``core.certify``), ``headline`` (the report's
  robust number) and ``needs_bounds`` (architectures checked for bound support at submission).

``core.spec`` builds the ``objective`` union from the registry, so the module is the whole change
(CONTRIBUTING.md, "Adding an objective").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ValidationError

from core.config import Ball, StrictModel
from core.errors import CoreError
from core.registry import Registry
from core.vocab import TRAIN_STAGES

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from core.certify.certificates import Certificate
    from core.spec import EvaluationSpec


class ObjectiveSpec(StrictModel):
    """The ``objective:`` section of a job spec; subclasses set ``type: Literal["<name>"]``."""

    type: str = ""  # every subclass sets Literal["<name>"] with that default

    def ball(self) -> Ball | None:
        """The l_p ball this objective trains for; the evaluation attacks it unless the evaluation
        names its own (``evaluation.eps`` / ``norm``). None: no ball (8/255 l_inf is attacked)."""
        return None


class Objective(ABC):
    """A training objective. Built from its validated spec: ``Objective(spec)`` or ``Objective(**fields)``."""

    #: The registry name: the ``type`` of its ``Spec`` (set by :func:`register_objective`).
    name: ClassVar[str]
    Spec: ClassVar[type[ObjectiveSpec]]
    #: Evaluated by the attack suite over its ball (False: the threat model is not an l_p ball an
    #: attack on the network can search, e.g. randomized smoothing's smoothed classifier).
    attacked: ClassVar[bool] = True
    #: Its training loss or certificate propagates bounds: architectures are checked at submission.
    needs_bounds: ClassVar[bool] = False

    def __init__(self, cfg: ObjectiveSpec | None = None, **fields: Any) -> None:
        if cfg is None:
            try:
                cfg = self.Spec(type=self.name, **fields)
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(["objective", *(str(p) for p in first["loc"])])
                raise CoreError("invalid_objective", field, first["msg"]) from None
        elif fields:
            raise TypeError("pass either a spec or fields, not both")
        if not isinstance(cfg, self.Spec):
            raise TypeError(f"{type(self).__name__} needs a {self.Spec.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    def set_epoch(self, epoch: int, stage: str, iteration_fraction: float = 0.0) -> None:
        """Called by the training loop before every batch; schedules (eps ramps, λ) hang on it."""
        check_stage(stage)

    @abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss (to backpropagate) and the clean logits (for train accuracy; detached)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What exactly is optimised, for the report."""

    def certificate(self, evaluation: EvaluationSpec, seed: int) -> Certificate | None:
        """This objective's certificate with the settings of ``evaluation`` (the noise of a randomized one
        seeded by ``seed``), or None (no certificate). Objectives with a certificate override this; the
        methods below run it."""
        return None

    def certify(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, evaluation: EvaluationSpec, seed: int
    ) -> dict[str, Any] | None:
        """The certified numbers of ``model`` on the sample ``(x, y)``, or None (no certificate).

        Returns metrics at the top level, ``procedures`` (how each fraction of the sample was measured;
        those get counts and intervals), ``methods`` (the method behind each number), ``details``: the
        :meth:`summarize_certificate` of the :meth:`certify_examples` of the whole sample."""
        examples = self.certify_examples(model, x, y, evaluation, seed)
        return None if examples is None else self.summarize_certificate(examples, y, evaluation, seed)

    def certify_examples(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        evaluation: EvaluationSpec,
        seed: int,
        start: int = 0,
        stop: int | None = None,
    ) -> dict[str, torch.Tensor] | None:
        """The certificate's per-example results (CPU tensors, one entry per example) on the contiguous
        block ``[start, stop)`` of the sample ``(x, y)``, equal to what a run over the whole sample gives
        for those examples (a data-parallel evaluation shards the sample, ``core.pipeline.evaluate``);
        None when the objective has no certificate. ``start`` is a multiple of
        :meth:`certificate_batch`."""
        cert = self.certificate(evaluation, seed)
        return None if cert is None else cert.examples(model, x, y, start, stop)

    def summarize_certificate(
        self, examples: dict[str, torch.Tensor], y: torch.Tensor, evaluation: EvaluationSpec, seed: int
    ) -> dict[str, Any]:
        """:meth:`certify`'s result from the per-example results of the whole sample."""
        cert = self.certificate(evaluation, seed)
        if cert is None:
            raise NotImplementedError(f"{type(self).__name__} has no certificate")
        return cert.summary(examples, y)

    def certificate_batch(self, evaluation: EvaluationSpec) -> int:
        """The batch the certificate runs its examples in: a shard starts on a multiple of it, so every
        example is computed in the same batch as in a one-process run."""
        cert = self.certificate(evaluation, seed=0)  # the batch never depends on the noise seed
        return 1 if cert is None else cert.batch

    @property
    def certifies(self) -> bool:
        """True when this objective has a certificate (overrides :meth:`certificate`)."""
        return type(self).certificate is not Objective.certificate

    @classmethod
    def headline(cls, metric_keys: list[str]) -> str | None:
        """The report's headline robust metric among ``metric_keys`` (None: the empirical worst case)."""
        return None


def check_stage(stage: str) -> None:
    if stage not in TRAIN_STAGES:
        raise CoreError("invalid_stage", "stage", f"unknown stage {stage!r}; expected one of {TRAIN_STAGES}")


OBJECTIVES: Registry[type[Objective]] = Registry("objective", "objective.type")


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: register ``cls`` under its spec's ``type``, which names it (``cls.name``): the name
    is written once, in the spec's ``Literal``. A ``name`` the class sets itself must be that type."""
    default = cls.Spec.model_fields["type"].default
    if "name" not in vars(cls):
        cls.name = default
    elif default != cls.name:
        raise ValueError(f"{cls.Spec.__name__}.type defaults to {default!r}, not the objective's name {cls.name!r}")
    return OBJECTIVES.register(cls.name, cls)
