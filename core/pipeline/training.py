"""The training loop's pieces: one optimizer step, the learning-rate schedule, the optimizer."""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Protocol

import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.objectives import Objective
from core.pipeline.resources import GradSync, Precision
from core.pruning.masked import refresh_masks
from core.pruning.pruner import PruneStep
from core.spec import StageSpec


class StepHook(Protocol):
    """What a pruner (``core.pruning.pruner.Pruner``) adds to a prune step. Each hook sees the step
    (:class:`core.pruning.pruner.PruneStep`: model, objective, optimizer, batch): its own gradients
    cleared with the optimizer's, a term added to the loss, a pass after ``backward`` before the
    optimizer steps (where it may run its own forward/backward) and the mask update after the step."""

    def zero_grad(self, step: PruneStep) -> None: ...

    def penalty(self, step: PruneStep) -> Tensor | None: ...

    def after_backward(self, step: PruneStep) -> None: ...

    def after_step(self, step: PruneStep) -> bool: ...

    def own_parameters(self) -> list[nn.Parameter]: ...


def train_step(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    refresh: bool = False,
    hook: StepHook | None = None,
    forward_model: nn.Module | None = None,
    precision: Precision | None = None,
    sync: GradSync | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimizer step on ``objective``; ``refresh=True`` (prune stage) updates the masks after the
    step — the only place a mask changes. Returns the detached loss and the clean logits.

    ``hook`` (the variant's pruner, in the prune stage) adds its penalty to the loss that is
    back-propagated (the returned loss is the objective's alone), runs after ``backward`` and updates
    the masks after the step; when its ``after_step`` returns False (HYDRA as published), the masks
    are every layer's own top-k (``refresh_masks``).

    ``forward_model``: what the objective runs (a ``torch.compile`` of ``model``; default ``model``
    itself); the hooks always see ``model``. ``precision``: the objective's loss (its training-time
    attack included) under autocast, fp16 with the gradient scaler (the penalty is computed in fp32).
    ``sync`` (data-parallel ranks): gradients averaged over the ranks right after ``backward`` (so the
    hooks read the global gradient and the scaler sees the same overflow on every rank) and again after
    the hook's ``after_backward`` when there is a hook (a hook may run its own backward; averaging
    gradients that are already equal on every rank changes nothing).

    The same code serves dense and masked networks in every stage, so a masked step costs only the
    mask (see ``bench/prune_step.py``)."""
    step = PruneStep(model, objective, optimizer, x, y)
    optimizer.zero_grad(set_to_none=True)
    if hook is not None:
        hook.zero_grad(step)
    with precision.autocast() if precision is not None else nullcontext():
        loss, logits = objective.loss(forward_model if forward_model is not None else model, x, y)
    penalty = hook.penalty(step) if hook is not None else None
    total = loss if penalty is None else loss + penalty
    scaler = precision.scaler if precision is not None else None
    (scaler.scale(total) if scaler is not None else total).backward()
    own = hook.own_parameters() if hook is not None else []
    if sync is not None:
        sync.average([*model.parameters(), *_optimizer_params(optimizer), *own])
    if precision is not None:
        precision.unscale_others([*model.parameters(), *own], optimizer)
    if hook is not None:
        hook.after_backward(step)
        if sync is not None:
            sync.average([*model.parameters(), *_optimizer_params(optimizer), *own])
    if precision is not None:
        precision.step(optimizer)
    else:
        optimizer.step()
    updated = hook is not None and hook.after_step(step)
    if refresh and not updated:
        refresh_masks(model)
    return loss.detach(), logits.float()


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def lr_at(stage: StageSpec, iteration: int, total: int) -> float:
    """Learning rate after ``iteration`` of ``total`` iterations (linear warmup, then the schedule)."""
    per_epoch = max(1, total // max(1, stage.epochs))
    warm = stage.warmup_epochs * per_epoch
    if iteration < warm:
        return stage.lr * (iteration + 1) / warm
    t = (iteration - warm) / max(1, total - warm)
    if stage.schedule == "cosine":
        return stage.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if stage.schedule == "step":
        # lr/10 from 75% and lr/100 from 90% of the (post-warmup) training, the reference's step
        # schedule (utils/schedules.py) as written. Its if/elif chain tests ">= 0.75" first, so its
        # ">= 0.9" branch is unreachable and it actually stays at lr/10 to the end; we do the /100 it names.
        return stage.lr * (0.1 ** (int(t >= 0.75) + int(t >= 0.9)))
    return stage.lr


def make_optimizer(
    model: nn.Module, stage: StageSpec, params: Iterable[nn.Parameter] | None = None
) -> torch.optim.Optimizer:
    """The stage's optimizer over ``params`` (default: every parameter of ``model`` that requires grad)."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not params:
        raise CoreError("nothing_to_train", "stages", "this stage has no trainable parameters")
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
