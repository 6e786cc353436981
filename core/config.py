"""The base of every typed config: strict Pydantic models, and the threat-model vocabulary they share.

Free of torch itself; note that ``core.spec`` is not: it builds its enumerations from the registries,
whose modules (objectives, datasets) import torch, so the API process loads torch when it validates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

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


@dataclass(frozen=True)
class Ball:
    """The threat model an objective trains against: an l_p ball (``step_size`` None = eps / 4)."""

    norm: str
    eps: float
    step_size: float | None = None
