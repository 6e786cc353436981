"""HYDRA (Sehwag et al. 2020): importance scores trained under the robust objective, top-k kept.

At ``allocation: uniform``, ``granularity: unstructured`` this is HYDRA as published
(``core.pruning.pruners.UniformPruner``); the other allocations and channel granularity are the same
trained scores under another budget rule (``core.pruning.pruners.SCORE_PRUNERS``).
"""

from __future__ import annotations

from core.pruning.methods import PruningMethod, register_method
from core.pruning.pruners import SCORE_PRUNERS

HYDRA = register_method(
    PruningMethod(
        "hydra",
        "HYDRA (Sehwag et al. 2020): importance scores trained by SGD under the robust objective, "
        "the top-k of each layer kept, then the kept weights finetuned",
        trains_scores=True,
        uses_score_init=True,
        pruners=SCORE_PRUNERS,
    )
)
