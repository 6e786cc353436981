"""The registry of pruning methods: how a variant gets its mask from the pretrained network.

Every method starts from the shared pretrained network with importance scores initialised from it
(``core.pruning.masked.init_scores``) and the top-k mask of each layer; what differs is whether a
``prune`` stage then trains the scores under the robust objective. Torch-free, so the job spec
(``pruning.methods``) can list the names.

A method says *how* the mask is chosen; ``pruning.granularity`` says *what* is pruned (single weights or
whole channels) and ``pruning.allocation`` how the budget is spread over the layers. So the L1-norm
filter pruning baseline (Li et al. 2017) is not a method of its own: it is ``lwm`` at channel
granularity — the magnitude heuristic applied to filters, whose magnitude is their L1 norm
(``core.pruning.structured``: the scaled channel-score init is the normalised filter L1 norm, and
LWM keeps that first mask and only finetunes). This keeps ``methods: [hydra, lwm]`` the paper's
comparison at either granularity, and leaves no method name that is valid at one granularity only
(an ``l1_filter`` method would be refused at unstructured granularity and would duplicate ``lwm`` at
channel granularity).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.registry import Registry


@dataclass(frozen=True)
class PruningMethod:
    name: str
    description: str
    #: A ``prune`` stage trains the scores under the objective (HYDRA); else the mask is the scored
    #: init's and only ``finetune`` trains (LWM: |w| scores = least weight magnitude pruning).
    trains_scores: bool
    #: Scores start from ``pruning.score_init`` (else from "scaled": |w|-proportional).
    uses_score_init: bool


METHODS: Registry[PruningMethod] = Registry("pruning method", "pruning.methods")


def register_method(method: PruningMethod) -> PruningMethod:
    return METHODS.register(method.name, method)


register_method(
    PruningMethod(
        "hydra",
        "HYDRA (Sehwag et al. 2020): importance scores trained by SGD under the robust objective, "
        "the top-k of each layer kept, then the kept weights finetuned",
        trains_scores=True,
        uses_score_init=True,
    )
)
register_method(
    PruningMethod(
        "lwm",
        "Least weight magnitude: keep the top-k |w| of each layer of the pretrained network, then "
        "finetune (the heuristic baseline; at channel granularity the top-k filters by L1 norm, i.e. "
        "L1-norm filter pruning, Li et al. 2017)",
        trains_scores=False,
        uses_score_init=False,
    )
)
