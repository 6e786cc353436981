"""Fair evaluation samples: seeded, class-stratified, nested.

Test splits are often ordered by class (mnist5k's, every image folder's), so "the first N samples"
sees only the first few classes. Every capped evaluation (per-epoch validation, ``max_samples``,
certification, the attack suite) takes a prefix of one *stratified order* instead:

- within each class the samples are shuffled with the seed;
- the i-th sample of a class with ``n_c`` members gets the key ``(i + u) / n_c`` (``u`` a seeded
  uniform jitter, the same for the whole class), and all samples are sorted by key.

Any prefix of that order then holds every class in proportion to its share of the split (within one
sample per class), and a smaller prefix is contained in a larger one, so the attack suite's sample is
a subset of the PGD sample and per-example worst cases line up.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

STRATIFIED = "seeded class-stratified sample (each class in proportion to its share of the test split)"


def dataset_labels(ds: Dataset) -> np.ndarray:
    """The integer labels of ``ds`` without loading its images where the dataset exposes them."""
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    for attr in ("labels", "targets"):
        labels = getattr(ds, attr, None)
        if labels is not None:
            return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)  # type: ignore[arg-type]


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(labels))`` whose every prefix is class-stratified (module doc)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    keys = np.empty(len(labels), dtype=np.float64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        keys[members] = (np.arange(len(members)) + rng.uniform()) / len(members)
    # ties (same key in two classes) broken by a seeded random tiebreak, not by class order
    tiebreak = rng.permutation(len(labels))
    return np.lexsort((tiebreak, keys))


def stratified_subset(ds: Dataset, limit: int | None, seed: int) -> Dataset:
    """The first ``limit`` samples of the stratified order (the whole set when ``limit`` is None or
    not smaller); the chosen samples keep their original order."""
    n = len(ds)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return ds
    chosen = np.sort(stratified_order(dataset_labels(ds), seed)[:limit])
    return Subset(ds, chosen.tolist())


def describe_sample(ds: Dataset, full: int, seed: int) -> dict[str, Any]:
    """What a report says of an evaluation sample: size, count per class, how it was drawn."""
    counts = Counter(int(c) for c in dataset_labels(ds))
    n = len(ds)  # type: ignore[arg-type]
    return {
        "n": n,
        "of": full,
        "per_class": {str(c): counts[c] for c in sorted(counts)},
        "how": "the whole test split" if n >= full else f"{STRATIFIED}, seed {seed}",
    }


__all__ = ["dataset_labels", "stratified_order", "stratified_subset", "describe_sample", "STRATIFIED"]
