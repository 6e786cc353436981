"""Loaders: the training order a pure function of ``(seed, epoch)``, the test order fixed.

Shuffling is drawn from a ``torch.Generator`` seeded by ``(seed, epoch)`` only, so a run resumed at
epoch ``e`` sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator determined by (seed, epoch) alone: the shuffle of an epoch never depends on history."""
    words = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 31) ^ int(words[1]))


class EpochSampler(Sampler[int]):
    """Shuffles with ``epoch_generator(seed, epoch)``; call ``set_epoch`` like ``DistributedSampler``.

    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th index of the same permutation
    (padded by wrapping so all ranks see the same number of batches).
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError("rank must be in [0, num_replicas)")
        self.n, self.seed, self.epoch = n, seed, epoch
        self.num_replicas, self.rank = num_replicas, rank
        self.per_rank = -(-n // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch))
        if self.num_replicas > 1:
            pad = self.per_rank * self.num_replicas - self.n
            order = torch.cat([order, order[:pad]])[self.rank :: self.num_replicas]
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.per_rank if self.num_replicas > 1 else self.n


def train_loader(
    ds: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The training loader of one epoch; the same ``(seed, epoch)`` gives the same batches.

    With ``num_replicas > 1`` (data-parallel ranks) ``batch_size`` is this rank's share of the global
    batch: batch ``i`` of all ranks together is batch ``i`` of the one-process loader with the global
    batch (when the training set divides evenly; else the last batches differ by the wrap padding).
    ``pin_memory`` (CUDA jobs): page-locked batches, so ``.to(device, non_blocking=True)`` overlaps."""
    sampler = EpochSampler(len(ds), seed, epoch, num_replicas, rank)  # type: ignore[arg-type]  # map-style: has __len__
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=pin_memory,
        generator=epoch_generator(seed, epoch),
    )  # seeds worker processes reproducibly


class DeviceBatches:
    """The batches of :func:`train_loader` over images and labels already on the device (a small
    in-memory data set moved there once): the same sampler and order, indexing instead of collating.

    ``images`` are uint8 (scaled to [0, 1] here, as ``TensorImageDataset`` does per item) or float."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: EpochSampler, batch_size: int) -> None:
        self.images, self.labels, self.sampler, self.batch_size = images, labels, sampler, batch_size

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.images.device)
        for start in range(0, order.numel(), self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images[index]
            yield (x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()), self.labels[index]


def test_loader(ds: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Evaluation loader: fixed order, no shuffling."""
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


test_loader.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported
