"""Capped evaluations see every class in proportion, reproducibly, and nested."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from core.data.datasets import TensorImageDataset
from core.data.sampling import dataset_labels, describe_sample, stratified_order, stratified_subset


def _class_sorted(counts: list[int]) -> TensorImageDataset:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.zeros(len(labels), 1, 2, 2)
    return TensorImageDataset(images, labels)


def test_a_prefix_of_a_class_sorted_split_holds_every_class_in_proportion():
    ds = _class_sorted([100] * 10)  # ordered 0,0,...,9,9 like mnist5k's test split
    sub = stratified_subset(ds, 50, seed=0)
    counts = Counter(dataset_labels(sub).tolist())
    assert sorted(counts) == list(range(10))
    assert all(v == 5 for v in counts.values())
    # the old "first N" rule would have seen class 0 only
    assert set(dataset_labels(ds)[:50].tolist()) == {0}


def test_unequal_classes_are_sampled_in_proportion_within_one():
    counts = [300, 100, 50, 50]
    ds = _class_sorted(counts)
    for limit in (10, 37, 120, 333):
        got = Counter(dataset_labels(stratified_subset(ds, limit, seed=3)).tolist())
        for c, n in enumerate(counts):
            assert abs(got[c] - limit * n / sum(counts)) <= 1.0 + 1e-9, (limit, c, got)


def test_samples_are_seeded_and_nested():
    ds = _class_sorted([40, 40, 40])
    labels = dataset_labels(ds)
    a, b = stratified_order(labels, 1), stratified_order(labels, 1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, stratified_order(labels, 2))
    small = set(stratified_subset(ds, 12, 5).indices)
    large = set(stratified_subset(ds, 60, 5).indices)
    assert small < large
    assert stratified_subset(ds, None, 5) is ds and stratified_subset(ds, 1000, 5) is ds


def test_the_report_names_the_sample_and_its_class_counts():
    ds = _class_sorted([10, 10])
    sub = stratified_subset(ds, 6, seed=0)
    desc = describe_sample(sub, len(ds), seed=0)
    assert desc["n"] == 6 and desc["of"] == 20
    assert desc["per_class"] == {"0": 3, "1": 3}
    assert "stratified" in desc["how"] and "seed 0" in desc["how"]
    assert describe_sample(ds, len(ds), 0)["how"] == "the whole test split"
