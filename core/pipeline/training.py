"""The training loop's pieces: one optimizer step, the learning-rate schedule, the optimizer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.objectives import Objective
from core.pruning.masked import refresh_masks
from core.spec import StageSpec


def train_step(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    refresh: bool = False,
) -> tuple[Tensor, Tensor]:
    """One optimizer step on ``objective``; ``refresh=True`` (prune stage) recomputes the masks after
    the step — the only place a mask changes. Returns the detached loss and the clean logits.

    The same code serves dense and masked networks in every stage, so a masked step costs only the
    mask (see ``bench/prune_step.py``)."""
    optimizer.zero_grad(set_to_none=True)
    loss, logits = objective.loss(model, x, y)
    loss.backward()
    optimizer.step()
    if refresh:
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


def make_optimizer(model: nn.Module, stage: StageSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CoreError("nothing_to_train", "stages", "this stage has no trainable parameters")
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
