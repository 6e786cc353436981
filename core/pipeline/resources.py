"""How a job uses its hardware (the spec's ``resources``): precision, memory format, ``torch.compile``,
gradient averaging across data-parallel ranks, device-resident data.

* **Precision** — :class:`Precision`: ``torch.autocast`` on the job's device type around the training
  forward (the objective's loss, its training-time attack included); fp16 adds a ``GradScaler`` (CUDA
  only; refused on CPU by the spec). The final evaluation runs in ``resources.eval_precision`` (fp32 by
  default) and the report names any reduced precision beside the numbers it produced.
* **channels-last** — 4-D networks on CUDA by default (``resources.channels_last`` overrides); the
  network is put back to the contiguous format before export (safetensors stores contiguous tensors).
* **compile** — :class:`CompiledForward`: the training forward through ``torch.compile``; the first
  failure (a backend that cannot build, a graph-break storm that errors) switches to eager for the rest
  of the run, with a ``compile_fallback`` warning event.
* **Gradient averaging** — :class:`GradSync`: one flat ``all_reduce`` of every gradient after
  ``backward`` (what ``DistributedDataParallel``'s reducer computes; see core/pipeline/distributed.py
  for why the wrapper itself is not used).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_FALLBACK = "compile_fallback"  # the warning event when torch.compile fails and eager takes over


@dataclass(frozen=True)
class World:
    """This process's place among a job's data-parallel ranks (size 1: a single process)."""

    size: int = 1
    rank: int = 0
    backend: str = "none"

    @property
    def main(self) -> bool:
        return self.rank == 0


def rank_device(device: str, gpus: int, world: World) -> torch.device:
    """The device of this rank: ``cuda:<rank>`` for a multi-GPU job, CUDA for ``gpus: 1``, else the
    spec's ``device`` (``auto``: CUDA when present)."""
    from core.errors import CoreError

    if gpus > 0 and not torch.cuda.is_available():
        raise CoreError("device_unavailable", "resources.gpus", f"{gpus} GPU(s) requested but CUDA is not available")
    if gpus > 1:
        if torch.cuda.device_count() < gpus:
            raise CoreError(
                "device_unavailable", "resources.gpus", f"{gpus} GPUs requested, {torch.cuda.device_count()} visible"
            )
        return torch.device("cuda", world.rank)
    if gpus == 1:
        return torch.device("cuda" if device == "auto" else device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CoreError("device_unavailable", "device", f"{device} requested but CUDA is not available")
    return torch.device(device)


class Precision:
    """Autocast (and, for fp16, a gradient scaler) on one device type."""

    def __init__(self, name: str, device: torch.device) -> None:
        from core.errors import CoreError

        if name == "fp16" and device.type != "cuda":
            raise CoreError("unsupported_precision", "resources.precision", "fp16 needs CUDA; use bf16 on CPU")
        self.name = name
        self.device_type = device.type
        self.scaler: torch.amp.GradScaler | None = torch.amp.GradScaler("cuda") if name == "fp16" else None

    @property
    def reduced(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.name])

    def unscale_others(self, params: Iterable[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        """fp16: ``scaler.unscale_(optimizer)`` and the same division for every other gradient the
        backward produced (a pruner's own parameters, per-weight probes), so the pruner's hooks read
        true gradients."""
        if self.scaler is None:
            return
        self.scaler.unscale_(optimizer)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        inv = 1.0 / float(self.scaler.get_scale())
        for p in params:
            if p.grad is not None and id(p) not in in_optimizer:
                p.grad.mul_(inv)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when a gradient is not finite (identical on every rank)
        self.scaler.update()


def uses_channels_last(model: nn.Module, device: torch.device, requested: bool | None) -> bool:
    """channels-last for networks with 2-D convolutions: on for CUDA unless the spec says otherwise."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if requested is None:
        return has_conv and device.type == "cuda"
    return requested and has_conv


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """The 4-D weights in channels-last (or back in the contiguous format). Only weights: a masked
    layer's scores and mask stay contiguous (they are ranked through flat views), and its effective
    weight ``weight ⊙ mask`` takes the weight's layout, so the convolution runs channels-last."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 4:
            weight.data = weight.data.contiguous(memory_format=fmt)
    return model


def input_format(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def sync_batchnorm(model: nn.Module, on: bool) -> nn.Module:
    """``resources.sync_bn`` for a training stage: BatchNorm → SyncBatchNorm (``on``), and back to
    plain BatchNorm for export and evaluation (``on=False``); parameters and buffers are shared, not
    copied, so the network's state dict is the same either way. SyncBatchNorm runs on CUDA only."""
    if on:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                plain.weight, plain.bias = child.weight, child.bias
            if child.track_running_stats:
                plain.running_mean, plain.running_var = child.running_mean, child.running_var
                plain.num_batches_tracked = child.num_batches_tracked
            plain.train(child.training)
            setattr(model, name, plain)
        else:
            sync_batchnorm(child, False)
    return model


class CompiledForward(nn.Module):
    """``torch.compile(model)``, falling back to the eager ``model`` at the first failure.

    The compiled graph is built lazily at the first call (and its backward at the first backward), so
    failures surface there: the runner calls :meth:`fall_back` when a compiled step raises and redoes
    the step eagerly. Parameters, buffers and masks are the eager model's (shared, not copied)."""

    def __init__(self, model: nn.Module, on_fallback: Callable[[str], None]) -> None:
        super().__init__()
        self.eager = model
        self.on_fallback = on_fallback
        self.failed = False
        try:
            self.compiled: nn.Module | None = torch.compile(model)  # type: ignore[assignment]
        except Exception as exc:  # noqa: BLE001 - any backend failure: eager, with a warning event
            self.compiled = None
            self.fall_back(exc)

    @property
    def active(self) -> bool:
        return self.compiled is not None and not self.failed

    def fall_back(self, exc: BaseException) -> None:
        self.failed = True
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        log.warning("torch.compile failed, continuing eager: %s", message)
        self.on_fallback(message)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.active:
            assert self.compiled is not None
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a compile-time failure: eager from here on
                self.fall_back(exc)
        return self.eager(*args, **kwargs)


class GradSync:
    """Averages gradients over the ranks of the default process group: one flat ``all_reduce``.

    Every rank calls :meth:`average` at the same point of the same step with the same parameters
    (the same code on the same network), so the flat buffers line up."""

    def __init__(self, world_size: int, cpu_group: Any = None) -> None:
        self.world_size = world_size
        self.cpu_group = cpu_group  # gloo group for CPU tensors when the default group is NCCL

    def average(self, params: Iterable[nn.Parameter]) -> None:
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for p in _unique(params) if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def broadcast_model(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (the start of every training stage)."""
        import torch.distributed as dist

        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.data.is_contiguous():
                dist.broadcast(tensor.data, src=0)
            else:  # channels-last weights: the collectives take contiguous tensors
                staged = tensor.data.contiguous()
                dist.broadcast(staged, src=0)
                tensor.data.copy_(staged)

    def average_batchnorm_stats(self, model: nn.Module) -> None:
        """BatchNorm running statistics averaged over the ranks (each rank saw its shard): the end of
        every epoch, before the checkpoint and validation. Within an epoch each rank's eval-mode
        forwards (a TRADES attack) use its own statistics; the weights stay identical regardless."""
        import torch.distributed as dist

        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                staged = buf.data.contiguous()
                dist.all_reduce(staged)
                buf.data.copy_(staged.div_(self.world_size))

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable; CPU tensors), in rank order: a collective over the CPU group
        (a sharded evaluation's per-example results)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.cpu_group)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (the others pass anything): a collective over the CPU group."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def check_identical(self, tensors: Iterable[Tensor], where: str) -> None:
        """Raise when the ranks' ``tensors`` (the network with its scores and masks, a pruner's own
        parameters) are not bit-identical: one float64 fingerprint per rank, gathered. Every rank runs
        the same operations on the same averaged gradients, so any difference is a bug, caught at the
        end of the epoch it appeared in rather than in the report."""
        import torch.distributed as dist

        from core.errors import CoreError

        fingerprint = torch.zeros(2, dtype=torch.float64)
        for i, t in enumerate(tensors):
            v = t.detach().double().cpu().reshape(-1)
            weights = torch.arange(1, v.numel() + 1, dtype=torch.float64).remainder_(97).add_(i + 1)
            fingerprint[0] += (v * weights).sum()
            fingerprint[1] += v.abs().sum()
        gathered = [torch.zeros_like(fingerprint) for _ in range(self.world_size)]
        dist.all_gather(gathered, fingerprint, group=self.cpu_group)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise CoreError(
                "ranks_diverged", "resources", f"the data-parallel ranks hold different networks after {where}"
            )


def _unique(params: Iterable[nn.Parameter]) -> Iterator[nn.Parameter]:
    seen: set[int] = set()
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            yield p


__all__ = [
    "COMPILE_FALLBACK",
    "CompiledForward",
    "GradSync",
    "Precision",
    "World",
    "rank_device",
    "sync_batchnorm",
    "input_format",
    "to_memory_format",
    "uses_channels_last",
]
