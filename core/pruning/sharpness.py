"""Sharpness-aware score steps (``pruning.score_sharpness``): a wrapper around any score-training pruner.

Mechanism
---------
S2AP (Piras, Zhao, Brau, Pintor, Wressnegger, Biggio, "S2AP: Score-space Sharpness Minimization for
Adversarial Pruning", arXiv 2510.18381, 2025) observes that the robust loss as a function of the
importance scores ``s`` is sharp around mask transitions (a small score change swaps weights in the
top-k and the loss jumps), so the mask search settles in sharp minima and the mask is unstable. It
searches the scores by the min–max problem ``min_s max_{||z_l|| <= γ ||s_l||} L(w ⊙ M(s + z, k))`` —
SAM (Foret et al., ICLR 2021) applied to the scores instead of the weights, with a layer-wise radius
proportional to each layer's score norm. We implemented it from that description (the paper's code was
not consulted), as SAM's one-step approximation of the inner maximisation, per prune step:

1. the pipeline's ``backward`` gives ``g = ∂L/∂s`` at the current scores (the inner pruner's
   ``collect_score_grad``: channel scores get theirs from the probes; no rate gradient is computed at
   this point, it would be discarded);
2. ascent: ``e = rho · g / ||g||`` — ``scope: layer`` (S2AP's constraint, the default):
   ``e_l = rho · ||s_l|| · g_l / ||g_l||`` per score tensor; ``scope: global`` (plain SAM):
   ``e = rho · g / ||g||`` with one norm over all scores, ``rho`` an absolute radius;
3. ``s ← s + e`` and the masks re-chosen **by the inner pruner's own rule** (uniform top-k, global
   top-k, learned rates, channel groups: :meth:`~core.pruning.pruner.Pruner.refresh`), since the
   forward sees the scores only through the mask;
4. the gradients are cleared and the loss (plus the inner pruner's penalty) recomputed and
   back-propagated at the perturbed point — one extra forward/backward of the objective, attack
   included — then the inner ``after_backward`` again (learned allocation: its rate gradient is the
   perturbed point's too);
5. ``s ← s − e``: the optimizer steps from the original scores with the perturbed point's gradient,
   and the inner ``after_step`` re-chooses the masks from the updated scores.

It applies to what the prune stage trains — every allocation and channel granularity; a one-shot
method (LWM, L1 filters) has no prune stage, so its variants are unchanged. The perturbed forward runs
in train mode, so BatchNorm running statistics see one extra batch per step (as in SAM).

Hyper-parameters: ``rho`` (required; S2AP's ``γ`` with ``scope: layer``). S2AP tunes ``γ`` per
setting; we ship no default and the benchmark (``bench/fashion_benchmark.py``) states the value it used.
Cost: one extra forward/backward per prune step, about 2× the prune step (``bench/prune_step.py
--sharpness``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from core.pruning.pruner import Pruner, PruneStep

Scope = Literal["layer", "global"]
SCOPES: tuple[str, ...] = ("layer", "global")
_TINY = 1e-12


@torch.no_grad()
def ascent_shifts(scores: list[Tensor], grads: list[Tensor | None], rho: float, scope: str) -> list[Tensor]:
    """The ascent step ``e`` for every score tensor (zeros where there is no gradient)."""
    gs = [g if g is not None else torch.zeros_like(s) for s, g in zip(scores, grads)]
    if scope == "global":
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gs])) + _TINY
        return [(rho * g / norm).to(s.dtype) for s, g in zip(scores, gs)]
    if scope == "layer":
        return [
            (rho * torch.linalg.vector_norm(s.float()) * g / (torch.linalg.vector_norm(g.float()) + _TINY)).to(s.dtype)
            for s, g in zip(scores, gs)
        ]
    raise ValueError(f"unknown sharpness scope {scope!r}; known: {', '.join(SCOPES)}")


class SharpnessAwarePruner(Pruner):
    """``inner`` with a sharpness-aware score gradient (module docstring). Every other hook, the
    checkpoint state and the options are the inner pruner's."""

    def __init__(self, inner: Pruner, rho: float, scope: str = "layer") -> None:
        # no super().__init__: the options and the variant are the inner pruner's
        if not rho > 0:
            raise ValueError(f"rho must be positive, got {rho}")
        if scope not in SCOPES:
            raise ValueError(f"unknown sharpness scope {scope!r}; known: {', '.join(SCOPES)}")
        self.inner, self.rho, self.scope = inner, float(rho), scope
        self.method, self.k, self.score_init, self.options = inner.method, inner.k, inner.score_init, inner.options
        self.last_shift_norm = 0.0  # ||e|| of the latest step (diagnostics, tests)

    def enter(self, model: nn.Module) -> None:
        self.inner.enter(model)

    def optimizer_parameters(self, model: nn.Module) -> list[nn.Parameter] | None:
        return self.inner.optimizer_parameters(model)

    def set_progress(self, fraction: float) -> None:
        self.inner.set_progress(fraction)

    def zero_grad(self, step: PruneStep) -> None:
        self.inner.zero_grad(step)

    def penalty(self, step: PruneStep) -> Tensor | None:
        return self.inner.penalty(step)

    def after_backward(self, step: PruneStep) -> None:
        self.inner.collect_score_grad(step)  # the gradient at s (channel: reduced from the probes)
        scores = self.inner.score_tensors(step.model)
        shifts = ascent_shifts(scores, [s.grad for s in scores], self.rho, self.scope)
        self.last_shift_norm = float(torch.linalg.vector_norm(torch.stack([e.float().norm() for e in shifts])))
        with torch.no_grad():
            for s, e in zip(scores, shifts):
                s.add_(e)
            self.inner.refresh(step.model)  # the forward sees the scores only through the masks
        step.optimizer.zero_grad(set_to_none=True)
        self.inner.zero_grad(step)
        for s in scores:  # channel scores may not be the optimizer's only parameters: clear them too
            s.grad = None
        loss, _ = step.objective.loss(step.model, step.x, step.y)
        penalty = self.inner.penalty(step)
        (loss if penalty is None else loss + penalty).backward()
        self.inner.after_backward(step)  # the gradient at s + e: what the optimizer steps with
        with torch.no_grad():
            for s, e in zip(scores, shifts):
                s.sub_(e)
        # the masks stay the perturbed ones until after_step re-chooses them from the updated scores

    def after_step(self, step: PruneStep) -> bool:
        return self.inner.after_step(step)

    def score_tensors(self, model: nn.Module) -> list[Tensor]:
        return self.inner.score_tensors(model)

    def refresh(self, model: nn.Module) -> None:
        self.inner.refresh(model)

    def finish(self, model: nn.Module) -> None:
        self.inner.finish(model)

    def state_dict(self) -> dict[str, Any] | None:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None, model: nn.Module) -> None:
        self.inner.load_state_dict(state, model)


__all__ = ["SCOPES", "Scope", "SharpnessAwarePruner", "ascent_shifts"]
