"""The base of every typed config: strict Pydantic models, and the threat-model vocabulary they share.

Also the options models a strategy declares beside itself (:class:`OptionsModel`: a pruner's, a
certificate's) and the spec sections that compose them (:class:`OptionsSection`), which still accept
the flat fields the options were before they were nested (:func:`nest_flat_options`).

Free of torch itself; note that ``core.spec`` is not: it builds its enumerations from the registries,
whose modules (objectives, datasets) import torch, so the API process loads torch when it validates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

EPS_8_255 = 8 / 255
STEP_2_255 = 2 / 255

Norm = Literal["linf", "l2"]

# The ball an attack objective trains on when the spec names only the norm: (eps, step size).
# l_inf: the reference's CIFAR setting, 8/255 with step 2/255 (docs/METHOD.md). Read as an l_2 radius,
# 8/255 is a tiny ball (the l_inf ball of 8/255 reaches l_2 distance 8/255 * sqrt(3072) = 1.74 on a
# 3x32x32 image): no robustness to speak of. So l_2 takes the common CIFAR-10 l_2 threat model, eps 0.5
# (RobustBench's l_2 track; Rice et al. 2020), with step 0.125 = 2.5 * eps / 10 (Madry et al.'s
# 2.5·eps/steps rule for the default 10 steps; the same ratio eps/4 as 2/255 to 8/255).
NORM_DEFAULTS: dict[str, tuple[float, float]] = {"linf": (EPS_8_255, STEP_2_255), "l2": (0.5, 0.125)}


def norm_defaults(norm: str) -> dict[str, float]:
    """The default ``eps`` and ``step_size`` of an attack in ``norm`` (see ``NORM_DEFAULTS``)."""
    eps, step = NORM_DEFAULTS[norm]
    return {"eps": eps, "step_size": step}


class StrictModel(BaseModel):
    """Unknown fields are refused (a typo never falls back to a default); assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def field_error(loc: tuple[str | int, ...], code: str, message: str, value: Any) -> ValidationError:
    """A validation error located at ``loc`` (relative to the model being validated), so that a
    cross-field rule raised by a model validator names the field, not the model."""
    return ValidationError.from_exception_data(
        "JobSpec", [InitErrorDetails(type=PydanticCustomError(code, message), loc=loc, input=value)]
    )


class OptionsModel(StrictModel):
    """A strategy's own options, declared beside the strategy (a pruner's in ``core.pruning.pruners``,
    a certificate's in ``core.certify``) and composed by the spec section that holds it
    (:class:`OptionsSection`) under one field: ``pruning.learned``, ``evaluation.smoothing``.

    ``flat_prefix``: before the options were nested they were flat fields ``<flat_prefix><name>`` of the
    section (``learned_tau`` for ``learned.tau``); the section still accepts them (stored jobs and
    checkpoints keep their specs) and moves them in. ``shorthand``: the field a bare non-mapping value
    of the section's field stands for (``evaluation.bounds: [ibp]`` is ``{methods: [ibp]}``)."""

    model_config = ConfigDict(frozen=True)
    flat_prefix: ClassVar[str] = ""
    shorthand: ClassVar[str | None] = None

    @classmethod
    def flat_fields(cls) -> dict[str, str]:
        """The flat field of the enclosing section for each option: ``{"learned_tau": "tau", ...}``."""
        return {cls.flat_prefix + name: name for name in cls.model_fields} if cls.flat_prefix else {}


#: The error code of a spec that gives one option both flat and nested, with different values.
CONFLICTING_OPTIONS = "conflicting_options"


class OptionsSection(StrictModel):
    """A spec section composing strategies' :class:`OptionsModel` fields; accepts their flat fields."""

    @classmethod
    def options_fields(cls) -> dict[str, type[OptionsModel]]:
        """The section's fields that hold an options model: ``{"learned": LearnedOptions}``."""
        out = {}
        for name, info in cls.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, OptionsModel):
                out[name] = info.annotation
        return out

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_options(cls, data: Any) -> Any:
        return nest_flat_options(data, cls.options_fields())


def nest_flat_options(data: Any, fields: dict[str, type[OptionsModel]]) -> Any:
    """``data`` (one section's raw mapping) with the options given in their flat or shorthand form
    moved into their options field, the nested form every dump has. An option given in both forms with
    different values is refused (``conflicting_options``, naming the flat field)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for field, model in fields.items():
        nested = out.get(field)
        if model.shorthand is not None and nested is not None and not isinstance(nested, (dict, BaseModel)):
            out[field] = nested = {model.shorthand: nested}
        flat = {name: option for name, option in model.flat_fields().items() if name in out}
        if not flat:
            continue
        if isinstance(nested, BaseModel):
            nested = nested.model_dump(exclude_unset=True)
        elif nested is None:
            nested = {}
        elif not isinstance(nested, dict):
            continue  # the field's own validation names the wrong type (and the flat fields as unknown)
        nested = dict(nested)
        for name, option in flat.items():
            value = out.pop(name)
            if option in nested and nested[option] != value:
                raise field_error(
                    (name,),
                    CONFLICTING_OPTIONS,
                    f"{name} is the old spelling of {field}.{option}, which is also given, with another "
                    f"value ({nested[option]!r}); give it once, as {field}.{option}",
                    value,
                )
            nested[option] = value
        out[field] = nested
    return out


@dataclass(frozen=True)
class Ball:
    """The threat model an objective trains against: an l_p ball (``step_size`` None = eps / 4)."""

    norm: str
    eps: float
    step_size: float | None = None
