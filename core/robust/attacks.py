"""Projected gradient descent (PGD) in [0, 1] pixel space: Madry's CE attack and TRADES' KL attack.

This is the training hot path (10 attack steps per training step), so it is our own rather than a
library's, written to do no more work than the maths needs:
- the TRADES target (the clean logits) is passed in, computed once per batch by the caller — never
  recomputed in every attack step as the reference code does;
- no ``model.train()``/``model.eval()`` toggling in here: the caller chooses the mode once per step;
- gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so nothing accumulates in
  ``param.grad`` and no parameter gradient is ever computed;
- masked layers reuse one ``W ⊙ M`` for every step (``shared_effective_weights``): weights and masks do
  not change inside an attack, so a masked network attacks at dense cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import CoreError, RunCanceled
from core.pruning.masked import shared_effective_weights

NORMS = ("linf", "l2")
LOSSES = ("ce", "kl")
TRADES_START_STD = 0.001


class _SmoothBackwardReLU(torch.autograd.Function):
    """ReLU forward; backward through ``sigmoid(x / tau)`` instead of the step ``1[x > 0]``."""

    @staticmethod
    def forward(ctx, x: Tensor, tau: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.tau = tau
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x / ctx.tau), None


@contextlib.contextmanager
def smooth_relu_backward(model: nn.Module, tau: float = 0.1) -> Iterator[nn.Module]:
    """Inside the block every ``nn.ReLU`` of ``model`` computes the same forward, but its backward
    lets a little gradient through inactive units (``sigmoid(x / tau)``, a BPDA-style surrogate).

    Why: in a very sparse network many ReLUs are off over the whole neighbourhood of an input except
    near its corners, so the exact input gradient says nothing about the perturbations that switch
    them on; PGD then stalls where a gradient-free search (Square) succeeds — gradient masking. The
    network's outputs, and so what an attack's examples are scored on, are unchanged."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for m in relus:
        m.forward = lambda x, _tau=tau: _SmoothBackwardReLU.apply(x, _tau)  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for m in relus:
            del m.forward  # back to the class's forward


def _check(norm: str, loss: str, eps: float, step_size: float, steps: int, restarts: int) -> None:
    if norm not in NORMS:
        raise CoreError("invalid_norm", "attack.norm", f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if loss not in LOSSES:
        raise CoreError("invalid_attack_loss", "attack.loss", f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if not eps >= 0:
        raise CoreError("invalid_eps", "attack.eps", f"eps must be >= 0, got {eps}")
    if not step_size >= 0:
        raise CoreError("invalid_step_size", "attack.step_size", f"step size must be >= 0, got {step_size}")
    if int(steps) != steps or steps < 0:
        raise CoreError("invalid_steps", "attack.steps", f"steps must be an integer >= 0, got {steps}")
    if int(restarts) != restarts or restarts < 1:
        raise CoreError("invalid_restarts", "attack.restarts", f"restarts must be an integer >= 1, got {restarts}")


def _l2_norms(t: Tensor) -> Tensor:
    """Per-example l2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project(x_adv: Tensor, x: Tensor, norm: str, eps: float) -> Tensor:
    if norm == "linf":
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        delta = delta * (eps / _l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
        x_adv = x + delta
    return x_adv.clamp_(0.0, 1.0)


def _random_start(x: Tensor, norm: str, eps: float, loss: str) -> Tensor:
    if loss == "kl":  # TRADES: a tiny Gaussian step away from x (where the KL gradient vanishes)
        return x + TRADES_START_STD * torch.randn_like(x)
    if norm == "linf":
        return x + torch.empty_like(x).uniform_(-eps, eps)
    # uniform in the l2 ball: Gaussian direction, radius eps * U^(1/d)
    direction = torch.randn_like(x)
    direction = direction / _l2_norms(direction).clamp_min(1e-12)
    d = x[0].numel()
    radius = eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype).pow(1.0 / d)
    return x + direction * radius.view(-1, *([1] * (x.dim() - 1)))


def skip_random_starts(x: Tensor, *, norm: str, eps: float, restarts: int, batch_size: int, loss: str = "ce") -> None:
    """Draw from the global RNG what :func:`pgd` (``random_start=True``, ``restarts``) draws when run
    on ``x`` in batches of ``batch_size``, without attacking: each run of each batch draws its random
    start and nothing else. (A data-parallel evaluation's rank skips the other ranks' batches with it.)"""
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].detach()
            for _ in range(restarts):
                _random_start(xb, norm, eps, loss)


def _per_example_loss(logits: Tensor, y: Tensor | None, target_prob: Tensor | None, loss: str) -> Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return F.kl_div(F.log_softmax(logits, dim=1), target_prob, reduction="none").sum(dim=1)


def _one_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    target_prob: Tensor | None,
    *,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool,
    loss: str,
    should_stop: Callable[[], bool] | None = None,
) -> Tensor:
    x_adv = _project(_random_start(x, norm, eps, loss), x, norm, eps) if random_start else x.clone()
    for _ in range(steps):
        if should_stop is not None and should_stop():
            raise RunCanceled("canceled during a PGD attack")
        x_adv.requires_grad_(True)
        # Summed (not averaged) loss: each example's step does not depend on the batch size.
        objective = _per_example_loss(model(x_adv), y, target_prob, loss).sum()
        (grad,) = torch.autograd.grad(objective, x_adv)
        with torch.no_grad():
            if norm == "linf":
                x_adv = x_adv + step_size * grad.sign()
            else:
                x_adv = x_adv + step_size * grad / _l2_norms(grad).clamp_min(1e-12)
            x_adv = _project(x_adv, x, norm, eps)
    return x_adv.detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    norm: str = "linf",
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    loss: str = "ce",
    target_logits: Tensor | None = None,
    restarts: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> Tensor:
    """Return ``x_adv`` in [0, 1] with ``‖x_adv − x‖ ≤ eps`` (l_inf or l_2) that maximises the loss.

    ``loss="ce"``: cross-entropy with labels ``y`` (Madry et al.); random start uniform in the ball.
    ``loss="kl"``: ``KL(softmax(target_logits) ‖ softmax(f(x_adv)))`` (TRADES); ``target_logits`` are
    the clean logits, computed once by the caller (computed here under ``no_grad`` when omitted);
    random start ``x + 0.001·N(0, 1)``. l_inf takes signed-gradient steps, l_2 normalised-gradient
    steps, each followed by projection onto the ball and [0, 1]. With ``restarts > 1`` each example
    keeps its worst run (CE: a misclassifying run first, then the largest loss; KL: the largest KL).
    The model's mode is left as the caller set it; no parameter gradient is computed.
    ``should_stop`` (a run's cancel/shutdown check) is asked before every step: True raises
    ``RunCanceled``, so a stop during a long evaluation attack takes effect within one step.
    """
    _check(norm, loss, eps, step_size, steps, restarts)
    x = x.detach()
    if loss == "ce" and y is None:
        raise CoreError("missing_labels", "attack.loss", "the CE attack needs labels y")
    with shared_effective_weights(model):
        target_prob = None
        if loss == "kl":
            if target_logits is None:
                with torch.no_grad():
                    target_logits = model(x)
            target_prob = F.softmax(target_logits.detach(), dim=1)
        kwargs = dict(
            norm=norm,
            eps=eps,
            step_size=step_size,
            steps=steps,
            random_start=random_start,
            loss=loss,
            should_stop=should_stop,
        )
        best = _one_run(model, x, y, target_prob, **kwargs)
        if restarts == 1:
            return best
        best_score = _worst_case_score(model, best, y, target_prob, loss)
        for _ in range(restarts - 1):
            cand = _one_run(model, x, y, target_prob, **kwargs)
            score = _worst_case_score(model, cand, y, target_prob, loss)
            better = score > best_score
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), cand, best)
            best_score = torch.where(better, score, best_score)
        return best


@torch.no_grad()
def _worst_case_score(
    model: nn.Module, x_adv: Tensor, y: Tensor | None, target_prob: Tensor | None, loss: str
) -> Tensor:
    logits = model(x_adv)
    score = _per_example_loss(logits, y, target_prob, loss)
    if loss == "ce":  # a misclassified example beats any correctly classified one
        score = score + 1e6 * (logits.argmax(dim=1) != y).to(score.dtype)
    return score
