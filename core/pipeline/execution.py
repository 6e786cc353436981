"""How one process of a run trains (``resources``): its device, precision, memory format, compiled
forward, its rank's shard of every batch and the agreement between ranks. The runner
(``core.pipeline.runner``) owns the plan, the state and the checkpoint; this holds the rest, so a
one-process run and a rank of a data-parallel run differ only here (core/pipeline/distributed.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from core.data.datasets import in_memory_tensors, train_loader
from core.data.loaders import DeviceBatches, EpochSampler
from core.errors import CoreError, RunCanceled
from core.objectives import Objective
from core.pipeline.evaluate import Shard
from core.pipeline.resources import (
    CompiledForward,
    GradSync,
    Precision,
    World,
    input_format,
    rank_device,
    sync_batchnorm,
    to_memory_format,
    uses_channels_last,
)
from core.pipeline.training import train_step
from core.pruning.pruner import Pruner
from core.spec import JobSpec


class Execution:
    def __init__(self, spec: JobSpec, world: World, cpu_group: Any = None) -> None:
        r = spec.resources
        self.resources, self.world, self.num_workers = r, world, spec.dataset.num_workers
        self.device = rank_device(spec.device, r.gpus, world)
        self.precision = Precision(r.precision, self.device)
        if r.eval_precision == "fp16" and self.device.type != "cuda":
            raise CoreError("unsupported_precision", "resources.eval_precision", "fp16 needs CUDA; use bf16 on CPU")
        self.sync = GradSync(world.size, cpu_group) if world.size > 1 else None
        self.rank_batch = spec.dataset.batch_size // world.size  # the spec refuses a batch that does not divide
        self.channels_last = False
        self.device_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.forward_model: CompiledForward | None = None  # the training forward while compile is on
        self.compile_failed = False  # a torch.compile failure switches the rest of the run to eager

    def prepare(self, model: nn.Module, train_ds: Dataset) -> None:
        """Decide the memory format for this network; on CUDA, move a small in-memory training set to
        the device once for the whole run (no per-batch copies)."""
        self.channels_last = uses_channels_last(model, self.device, self.resources.channels_last)
        tensors = in_memory_tensors(train_ds) if self.device.type == "cuda" else None
        if tensors is not None:
            self.device_data = (tensors[0].to(self.device), tensors[1].to(self.device))
        self.train_ds = train_ds

    # -- a training stage ---------------------------------------------------------------------
    def start_stage(self, model: nn.Module, on_fallback: Callable[[str], None]) -> nn.Module:
        """Memory format, SyncBatchNorm, rank 0's network on every rank, the compiled forward."""
        to_memory_format(model, self.channels_last)
        if self.resources.sync_bn:  # multi-GPU only (the spec refuses it elsewhere)
            model = sync_batchnorm(model, True)
        if self.sync is not None:  # the ranks start every stage from rank 0's network (bit-identical)
            self.sync.broadcast_model(model)
        if self.resources.compile and not self.compile_failed:

            def warn(message: str) -> None:
                self.compile_failed = True
                on_fallback(message)

            self.forward_model = CompiledForward(model, warn)
        return model

    def end_stage(self, model: nn.Module) -> nn.Module:
        self.forward_model = None
        return sync_batchnorm(model, False) if self.resources.sync_bn else model

    def end_epoch(self, model: nn.Module, pruner: Pruner | None, where: str) -> None:
        """Ranks: BatchNorm statistics averaged, then weights, scores, masks and learned rates compared."""
        if self.sync is None:
            return
        self.sync.average_batchnorm_stats(model)
        own = pruner.own_parameters() if pruner is not None else []
        self.sync.check_identical([*model.state_dict().values(), *own], where)

    # -- batches ------------------------------------------------------------------------------
    def loader(self, seed: int, epoch: int) -> Any:
        """This rank's batches of the epoch: its shard of the global batch (core.data.loaders)."""
        w = self.world
        if self.device_data is not None:
            sampler = EpochSampler(len(self.device_data[1]), seed, epoch, w.size, w.rank)
            return DeviceBatches(self.device_data[0], self.device_data[1], sampler, self.rank_batch)
        pin = self.device.type == "cuda"
        return train_loader(
            self.train_ds,
            self.rank_batch,
            seed,
            epoch,
            self.num_workers,
            num_replicas=w.size,
            rank=w.rank,
            pin_memory=pin,
        )

    def inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return input_format(x, self.channels_last), y

    def step(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        refresh: bool,
        hook: Pruner | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``train_step`` under this process's precision and gradient averaging, through the compiled
        forward while it works; a compiled step that fails (graph build, backward) is redone eagerly."""
        fwd = self.forward_model if self.forward_model is not None and self.forward_model.active else None

        def run(forward: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
            return train_step(
                model,
                objective,
                optimizer,
                x,
                y,
                refresh=refresh,
                hook=hook,
                forward_model=forward,
                precision=self.precision,
                sync=self.sync,
            )

        try:
            return run(fwd)
        except (CoreError, RunCanceled):
            raise
        except Exception as exc:
            if fwd is None or self.forward_model is None:
                raise
            self.forward_model.fall_back(exc)
            return run(None)

    def epoch_totals(self, loss_sum: float, correct: int, seen: int) -> tuple[float, int, int]:
        """The epoch's numbers over the global batch, as one process would count them."""
        if self.sync is None:
            return loss_sum, correct, seen
        import torch.distributed as dist

        totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return float(totals[0]), int(totals[1]), int(totals[2])

    # -- the final evaluation ---------------------------------------------------------------------
    def eval_shard(self) -> Shard | None:
        """This rank's part of a sharded final evaluation (None in one process)."""
        if self.sync is None:
            return None
        return Shard(self.world.rank, self.world.size, self.sync.gather_objects)

    def share_network(self, network: nn.Module | None) -> nn.Module:
        """Rank 0's evaluated network (the exported one, rebuilt from its file) on every rank, on this
        rank's device: a collective; sent through the CPU so no rank touches another's GPU."""
        assert self.sync is not None
        sent = copy.deepcopy(network).cpu() if network is not None and self.world.main else None
        received = self.sync.broadcast_object(sent)
        return received.to(self.device).eval()

    def describe(self) -> dict[str, Any]:
        """The report's ``resources``."""
        r = self.resources
        return {
            "precision": r.precision,
            "eval_precision": r.eval_precision,
            "world_size": self.world.size,
            "backend": self.world.backend,
            "channels_last": self.channels_last,
            "compile": r.compile and not self.compile_failed,
            "sync_bn": r.sync_bn,
        }


__all__ = ["Execution"]
