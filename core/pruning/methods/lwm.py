"""Least weight magnitude: the pretrained network's largest weights kept, then finetuned (one-shot).

Its first mask is the scaled score init's, which is ``|w|``-proportional within each layer: so at
``allocation: uniform`` it is the top-k ``|w|`` of every layer, and at channel granularity the top-k
filters by their L1 norm (L1-norm filter pruning, Li et al. 2017). Under ``allocation: global`` it keeps
the top-k ``|w|`` of the whole network (global magnitude pruning, the usual baseline), not the top-k of
the layer-normalised scaled scores: :class:`GlobalMagnitudePruner`. No learned allocation: it trains no
scores, so nothing would train the rates.
"""

from __future__ import annotations

import torch
from torch import nn

from core.pruning.masked import masked_layers
from core.pruning.methods import PruningMethod, register_method
from core.pruning.pruners import ChannelPruner, GlobalPruner, UniformPruner


class GlobalMagnitudePruner(GlobalPruner):
    """Global top-k of the raw ``|w|`` across layers."""

    @torch.no_grad()
    def init_scores(self, model: nn.Module) -> None:
        super().init_scores(model)
        for _, layer in masked_layers(model):
            layer.scores.copy_(layer.weight.detach())


LWM = register_method(
    PruningMethod(
        "lwm",
        "Least weight magnitude: keep the top-k |w| of each layer of the pretrained network, then "
        "finetune (the heuristic baseline; at channel granularity the top-k filters by L1 norm, i.e. "
        "L1-norm filter pruning, Li et al. 2017)",
        trains_scores=False,
        uses_score_init=False,
        pruners={
            ("uniform", "unstructured"): UniformPruner,
            ("global", "unstructured"): GlobalMagnitudePruner,
            ("uniform", "channel"): ChannelPruner,
        },
    )
)
