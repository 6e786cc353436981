"""Channel rates under a MAC budget (``pruning.budget: macs`` at ``granularity: channel``).

At channel granularity ``k`` is by default the fraction of channels every coupled group keeps. With
``budget: macs`` it is the fraction of the network's conv/linear **multiply-accumulates** kept: a
channel of an early, wide-resolution conv costs far more than one of the classifier, so equal channel
fractions are not equal compute.

**Cost model** (:class:`ChannelCost`). Each conv/linear layer costs ``base_l · f_out(l) · f_in(l)``:
``base_l`` its dense MACs per sample (weight entries × output positions, measured by one forward of the
example input, as ``core.pipeline.measure.sparse_macs`` counts them), ``f_out``/``f_in`` the kept
fractions of its output and input channels (from the group that owns each position; 1 where none does:
the image, the logits). For a chain or residual network this is exactly the conv/linear MACs of the
rebuilt network (``core.pruning.structured.rebuild_pruned``); it is differentiable in the per-group
fractions.

* ``allocation: uniform`` (:func:`uniform_counts`) — the L1-filter and channel-HYDRA baselines at the
  same MACs: one channel fraction ``q`` for every group, the largest (bisection) whose rebuilt network
  stays within ``k`` of the dense MACs, then single channels added to the groups with the smallest
  fraction while the budget allows (fractions equal up to one channel per group; the MACs at most
  ``k`` and within one channel's cost of it, as for the learned rates).
* ``allocation: learned`` (:class:`LearnedChannelPruner`) — HARP's FLOPs-constrained allocation
  (Zhao & Wressnegger, ICLR 2023) at channel level: a trainable rate ``r_g = sigmoid(ρ_g)`` per group
  (started at the uniform ``q``), the group keeping its ``round(n_g · r_g)`` channels of largest
  ``|score|``; the task-loss gradient reaches the rates by the rank-space soft threshold of
  ``core.pruning.allocation`` over the group's channel scores, and HARP's hinge
  ``γ_t · max(0, C(r)/(k·C_dense) − 1)²`` on the MACs joins the loss (the same stepwise ``γ_t`` and
  Adam step of the rates as the weight-level learned allocation: ``pruning.learned_*``). At the end of
  the prune stage (:func:`project_counts_to_cost`) all ``ρ`` shift by one constant (bisection) to the
  largest integer counts whose MACs do not exceed the budget, then single channels are added greedily
  (largest rate deficit first) while the budget allows: the result is at most ``k`` of the dense MACs
  and short of it by less than the cheapest channel that did not fit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from core.pruning.allocation import RateTraining, rank_rate_grad
from core.pruning.masked import masked_layers
from core.pruning.structured import ChannelPruning


class ChannelCost:
    """The conv/linear MACs of a channel-pruned network as a function of its groups' kept fractions."""

    def __init__(self, model: nn.Module, channels: ChannelPruning, example_input: Tensor) -> None:
        positions: dict[str, int] = {}
        layers = masked_layers(model)
        names = {id(layer): name for name, layer in layers}

        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            positions[names[id(module)]] = output[0].numel() // output.shape[1] if output.dim() > 2 else 1

        handles = [layer.register_forward_hook(hook) for _, layer in layers]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(example_input[:1])
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        self.sizes = [g.size for g in channels.groups]
        # per layer: base MACs, then per dimension (uncovered positions, [(group, positions)], dim size)
        self.layers: list[tuple[float, list[tuple[int, list[tuple[int, int]], int]]]] = []
        for name, layer in layers:
            w = layer.weight
            plan = channels._plan.get(name, {0: [], 1: []})
            dims = []
            for dim in (0, 1):
                terms = [(gi, int(pos.numel())) for gi, pos, _ in plan[dim]]
                dims.append((w.shape[dim] - sum(n for _, n in terms), terms, w.shape[dim]))
            self.layers.append((float(w.numel() * positions.get(name, 1)), dims))
        self.dense = float(sum(base for base, _ in self.layers))

    def cost(self, fractions: Tensor | list[float]) -> Tensor:
        """MACs per sample at these per-group kept fractions (differentiable when ``fractions`` is)."""
        f = fractions if isinstance(fractions, Tensor) else torch.tensor(fractions, dtype=torch.float64)
        total = f.new_zeros(())
        for base, dims in self.layers:
            term = f.new_tensor(base)
            for uncovered, terms, size in dims:
                kept = f.new_tensor(float(uncovered))
                for gi, n in terms:
                    kept = kept + n * f[gi]
                term = term * kept / size
            total = total + term
        return total

    def cost_of_counts(self, counts: list[int]) -> float:
        return float(self.cost([c / n for c, n in zip(counts, self.sizes)]))


def uniform_counts(cost: ChannelCost, k: float) -> list[int]:
    """One channel fraction for every group, the largest whose MACs stay within ``k`` of the dense
    network's, then single channels added to the groups with the smallest fraction while the budget
    allows (so the fractions differ by at most one channel per group): :func:`project_counts_to_cost`
    with equal rates."""
    return project_counts_to_cost([0.0] * len(cost.sizes), cost, k, max_extra=1)


def project_counts_to_cost(
    logits: list[float], cost: ChannelCost, k: float, *, max_extra: int | None = None
) -> list[int]:
    """The counts closest to the rates ``sigmoid(ρ_g + c)`` whose MACs stay within ``k`` of the dense
    ones (module docstring): common shift by bisection, then greedy single-channel fill (at most
    ``max_extra`` channels per group when given)."""
    target = k * cost.dense
    sizes = cost.sizes

    def ideal(shift: float) -> list[float]:
        return [n / (1.0 + math.exp(-max(-700.0, min(700.0, lg + shift)))) for lg, n in zip(logits, sizes)]

    def counts(shift: float) -> list[int]:
        return [min(n, max(1, int(math.floor(x)))) for x, n in zip(ideal(shift), sizes)]

    lo, hi = -60.0, 60.0
    if cost.cost_of_counts(counts(lo)) > target:
        return [1] * len(sizes)  # even one channel per group is over the budget: the least there is
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if cost.cost_of_counts(counts(mid)) <= target:
            lo = mid
        else:
            hi = mid
    best, want = counts(lo), ideal(lo)
    cap = [n if max_extra is None else min(n, c + max_extra) for c, n in zip(best, sizes)]
    while True:  # add the channel the rates want most that still fits (the MACs stay <= target)
        order = sorted((g for g in range(len(sizes)) if best[g] < cap[g]), key=lambda g: best[g] - want[g])
        for g in order:
            trial = best[:g] + [best[g] + 1] + best[g + 1 :]
            if cost.cost_of_counts(trial) <= target:
                best = trial
                break
        else:
            return best


class ChannelRates(nn.Module):
    """The learned per-group rates (module docstring): logits, their Adam optimizer, the stepwise γ."""

    def __init__(self, cost: ChannelCost, start: list[int], training: RateTraining) -> None:
        super().__init__()
        q = [min(1 - 1e-6, max(1e-6, c / n)) for c, n in zip(start, cost.sizes)]
        self.logits = nn.Parameter(torch.tensor([math.log(x / (1 - x)) for x in q], dtype=torch.float64))
        self.register_buffer("gamma_now", torch.tensor(training.gamma_at(0.0), dtype=torch.float64))
        self.cost, self.rate_training = cost, training
        self.optimizer = torch.optim.Adam([self.logits], lr=training.lr)

    def rates(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def counts(self) -> list[int]:
        return [min(n, max(1, round(n * r))) for r, n in zip(self.rates().tolist(), self.cost.sizes)]

    def set_progress(self, fraction: float) -> None:
        self.gamma_now.fill_(self.rate_training.gamma_at(fraction))

    def penalty(self, k: float) -> Tensor:
        """HARP's hinge on the MACs: ``γ_t · max(0, C(r)/(k·C_dense) − 1)²``."""
        over = torch.relu(self.cost.cost(self.rates()) / (k * self.cost.dense) - 1.0)
        return (float(self.gamma_now) * over**2).float()

    @torch.no_grad()
    def accumulate_grad(self, channels: ChannelPruning) -> None:
        """The task loss's gradient to the rates from the channel scores' (straight-through) gradient."""
        rates = self.rates().tolist()
        grad = torch.zeros_like(self.logits)
        for gi, (score, r) in enumerate(zip(channels.scores, rates)):
            if score.grad is not None:
                grad[gi] = rank_rate_grad(score.detach(), score.grad, r, self.rate_training.tau) * (1.0 - r)
        self.logits.grad = grad if self.logits.grad is None else self.logits.grad.add_(grad)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the rates' gradient (their own optimizer's)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


__all__ = ["ChannelCost", "ChannelRates", "project_counts_to_cost", "uniform_counts"]
