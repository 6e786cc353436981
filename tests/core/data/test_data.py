"""Datasets and loaders: real offline MNIST digits, strict npz checks, reproducible shuffling."""

import numpy as np
import pytest
import torch

from core.data.datasets import (
    EpochSampler,
    build_datasets,
    dataset_catalogue,
    make_loaders,
    train_loader,
)
from core.errors import CoreError


def _as_tensors(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


# ------------------------------------------------------------------------------------ mnist5k
def test_mnist5k_is_5000_real_digits_with_a_stable_split():
    train, test, info = build_datasets({"name": "mnist5k"}, seed=0)
    assert info == {"name": "mnist5k", "num_classes": 10, "input_shape": (1, 28, 28), "n_train": 4000, "n_test": 1000}
    x_tr, y_tr = _as_tensors(train)
    x_te, y_te = _as_tensors(test)
    assert x_tr.shape == (4000, 1, 28, 28) and x_tr.dtype == torch.float32
    assert 0.0 <= float(x_tr.min()) and float(x_tr.max()) == 1.0
    # The sample is balanced (500 per digit) and the split is stratified.
    assert torch.bincount(y_tr).tolist() == [400] * 10 and torch.bincount(y_te).tolist() == [100] * 10
    # Real MNIST: the mean pixel of the full set is 0.1307; this 5k sample's is 0.1313.
    mean = float(torch.cat([x_tr, x_te]).mean())
    assert mean == pytest.approx(0.13132, abs=5e-5)
    # Pixels are k/255 exactly.
    assert torch.equal(x_tr * 255, (x_tr * 255).round())
    # Another run seed holds out exactly the same digits.
    _, test_again, _ = build_datasets({"name": "mnist5k"}, seed=123)
    x_te2, y_te2 = _as_tensors(test_again)
    assert torch.equal(x_te, x_te2) and torch.equal(y_te, y_te2)


def test_mnist5k_limits_and_fraction():
    train, test, info = build_datasets(
        {"name": "mnist5k", "test_fraction": 0.1, "max_train_samples": 100, "max_test_samples": 50}, seed=1
    )
    assert (len(train), len(test), info["n_train"], info["n_test"]) == (100, 50, 100, 50)
    bigger, _, _ = build_datasets({"name": "mnist5k", "test_fraction": 0.1, "max_train_samples": 200}, seed=1)
    assert set(train.indices) <= set(bigger.indices)  # limits are nested


# ------------------------------------------------------------------------------------ npz
def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return {"name": "npz", "path": str(path), "test_fraction": 0.25}


def test_npz_uint8_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 8, 6, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    cfg = _write_npz(tmp_path / "d.npz", images=images, labels=labels)
    train, test, info = build_datasets(cfg, seed=0)
    assert info["input_shape"] == (3, 8, 6) and info["num_classes"] == 4
    assert (info["n_train"], info["n_test"]) == (30, 10)  # stratified, round(0.25 * 40) held out
    x_tr, y_tr = _as_tensors(train)
    x_te, y_te = _as_tensors(test)
    got = torch.cat([x_tr, x_te]) * 255
    want = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    # Every image arrives intact (as a set; the split reorders them).
    assert sorted(map(tuple, got.reshape(40, -1).round().long().tolist())) == sorted(
        map(tuple, want.reshape(40, -1).long().tolist())
    )


def test_npz_float_channels_first_with_explicit_test_split(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.random((10, 1, 5, 5), dtype=np.float32)
    test_images = rng.random((4, 5, 5)).astype(np.float64)  # (N,H,W) also accepted
    cfg = _write_npz(
        tmp_path / "d.npz",
        images=images,
        labels=np.arange(10) % 3,
        test_images=test_images[:, None],
        test_labels=np.array([0, 1, 2, 0]),
    )
    cfg["num_classes"] = 5
    train, test, info = build_datasets(cfg, seed=0)
    assert info == {"name": "npz", "num_classes": 5, "input_shape": (1, 5, 5), "n_train": 10, "n_test": 4}
    assert torch.equal(train[3][0], torch.from_numpy(images[3]))


GOOD_IMAGES = np.zeros((6, 4, 4), dtype=np.uint8)
GOOD_LABELS = np.array([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize(
    "arrays, num_classes, expected",
    [
        ({"images": GOOD_IMAGES}, None, "missing"),
        ({"labels": GOOD_LABELS}, None, "missing"),
        ({"images": GOOD_IMAGES, "labels": GOOD_LABELS[:5]}, None, "N = 6"),
        ({"images": GOOD_IMAGES, "labels": np.array([0, 1, -1, 1, 0, 1])}, None, "negative"),
        ({"images": GOOD_IMAGES, "labels": GOOD_LABELS + 0.5}, None, "integers"),
        ({"images": GOOD_IMAGES, "labels": GOOD_LABELS.astype(bool)}, None, "integers"),
        ({"images": GOOD_IMAGES, "labels": GOOD_LABELS * 3}, 3, "num_classes"),
        ({"images": np.full((6, 4, 4), np.nan, np.float32), "labels": GOOD_LABELS}, None, "NaN"),
        ({"images": np.full((6, 4, 4), np.inf, np.float32), "labels": GOOD_LABELS}, None, "Inf"),
        ({"images": np.full((6, 4, 4), 1.5, np.float32), "labels": GOOD_LABELS}, None, "[0, 1]"),
        ({"images": np.full((6, 4, 4), -0.1, np.float32), "labels": GOOD_LABELS}, None, "[0, 1]"),
        ({"images": GOOD_IMAGES.astype(np.int32), "labels": GOOD_LABELS}, None, "uint8 or float"),
        ({"images": np.zeros((6, 16), np.uint8), "labels": GOOD_LABELS}, None, "dimensions"),
        ({"images": np.zeros((6, 4, 4, 5), np.uint8), "labels": GOOD_LABELS}, None, "channel"),
        ({"images": GOOD_IMAGES, "labels": GOOD_LABELS[:, None]}, None, "one-dimensional"),
        ({"images": np.zeros((0, 4, 4), np.uint8), "labels": np.zeros(0, np.int64)}, None, "empty"),
        ({"images": GOOD_IMAGES, "labels": GOOD_LABELS, "test_images": GOOD_IMAGES}, None, "together"),
        (
            {
                "images": GOOD_IMAGES,
                "labels": GOOD_LABELS,
                "test_images": np.zeros((2, 5, 5), np.uint8),
                "test_labels": np.array([0, 1]),
            },
            None,
            "test_images",
        ),
    ],
)
def test_npz_rejects_bad_content_naming_dataset_path(tmp_path, arrays, num_classes, expected):
    cfg = _write_npz(tmp_path / "bad.npz", **arrays)
    if num_classes:
        cfg["num_classes"] = num_classes
    with pytest.raises(CoreError) as err:
        build_datasets(cfg, seed=0)
    assert err.value.field == "dataset.path"
    assert expected in err.value.message


def test_npz_refuses_pickled_object_arrays_and_non_zip_files(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, images=np.array([{"a": 1}] * 6, dtype=object), labels=GOOD_LABELS)
    with pytest.raises(CoreError) as err:
        build_datasets({"name": "npz", "path": str(path)}, seed=0)
    assert err.value.field == "dataset.path"
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(CoreError) as err:
        build_datasets({"name": "npz", "path": str(junk)}, seed=0)
    assert err.value.field == "dataset.path"
    with pytest.raises(CoreError) as err:
        build_datasets({"name": "npz", "path": str(tmp_path / "absent.npz")}, seed=0)
    assert err.value.field == "dataset.path"


def test_torchvision_dataset_missing_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(CoreError) as err:
        build_datasets({"name": "cifar10", "data_dir": str(tmp_path), "download": False}, seed=0)
    assert err.value.code == "dataset_unavailable"
    assert err.value.field == "dataset.data_dir"
    assert "download: true" in err.value.message


def test_imagefolder_with_split_folders(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    train, test, info = build_datasets({"name": "imagefolder", "path": str(tmp_path)}, seed=0)
    assert info == {"name": "imagefolder", "num_classes": 2, "input_shape": (3, 6, 5), "n_train": 6, "n_test": 6}
    assert float(train[2][0].max()) == pytest.approx(80 / 255)


def test_catalogue_lists_every_dataset():
    assert set(dataset_catalogue()) == {"mnist", "cifar10", "svhn", "imagefolder", "npz", "mnist5k", "fashion_mnist"}


# ------------------------------------------------------------------------------------ loaders
def _order(loader):
    return torch.cat([y for _, y in loader]).tolist(), torch.cat([x.reshape(len(x), -1)[:, :1] for x, _ in loader])


def test_same_seed_and_epoch_give_the_same_batches_whatever_happened_before():
    images = torch.arange(50, dtype=torch.uint8).reshape(50, 1, 1, 1)
    from core.data.datasets import TensorImageDataset

    ds = TensorImageDataset(images, torch.arange(50))
    first = [y.tolist() for _, y in train_loader(ds, 8, seed=7, epoch=3)]
    torch.manual_seed(999)  # the global RNG has no say
    for epoch in range(3):  # a run that went through epochs 0..2 first
        list(train_loader(ds, 8, seed=7, epoch=epoch))
    again = [y.tolist() for _, y in train_loader(ds, 8, seed=7, epoch=3)]
    assert first == again
    assert sorted(sum(first, [])) == list(range(50))
    other_epoch = [y.tolist() for _, y in train_loader(ds, 8, seed=7, epoch=4)]
    other_seed = [y.tolist() for _, y in train_loader(ds, 8, seed=8, epoch=3)]
    assert first != other_epoch and first != other_seed


def test_iterating_a_loader_leaves_the_global_rng_alone():
    train, test, _ = build_datasets({"name": "mnist5k", "max_train_samples": 64, "max_test_samples": 32}, seed=0)
    tr, te = make_loaders(train, test, {"batch_size": 16, "test_batch_size": 32}, seed=0, epoch=0)
    before = torch.get_rng_state()
    batches = list(tr)
    assert torch.equal(before, torch.get_rng_state())
    assert [len(y) for _, y in batches] == [16] * 4 and sum(len(y) for _, y in te) == 32


def test_sampler_shards_cover_the_epoch_once_across_replicas():
    shards = [list(EpochSampler(10, seed=1, epoch=2, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set(sum(shards, [])) == set(range(10))
    sampler = EpochSampler(10, seed=1)
    sampler.set_epoch(2)
    assert list(sampler) == list(EpochSampler(10, seed=1, epoch=2))
