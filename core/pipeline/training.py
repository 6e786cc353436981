"""The training loop's pieces: one optimizer step, the learning-rate schedule, the optimizer."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.objectives import Objective
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


def train_step(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    refresh: bool = False,
    hook: StepHook | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimizer step on ``objective``; ``refresh=True`` (prune stage) updates the masks after the
    step — the only place a mask changes. Returns the detached loss and the clean logits.

    ``hook`` (the variant's pruner, in the prune stage) adds its penalty to the loss that is
    back-propagated (the returned loss is the objective's alone), runs after ``backward`` and updates
    the masks after the step; when its ``after_step`` returns False (HYDRA as published), the masks
    are every layer's own top-k (``refresh_masks``).

    The same code serves dense and masked networks in every stage, so a masked step costs only the
    mask (see ``bench/prune_step.py``)."""
    step = PruneStep(model, objective, optimizer, x, y)
    optimizer.zero_grad(set_to_none=True)
    if hook is not None:
        hook.zero_grad(step)
    loss, logits = objective.loss(model, x, y)
    penalty = hook.penalty(step) if hook is not None else None
    (loss if penalty is None else loss + penalty).backward()
    if hook is not None:
        hook.after_backward(step)
    optimizer.step()
    updated = hook is not None and hook.after_step(step)
    if refresh and not updated:
        refresh_masks(model)
    return loss.detach(), logits


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
