"""Fashion-MNIST: read from the IDX files of Debian's dataset-fashion-mnist package (installed by
scripts/setup.sh), from a data_dir, or by torchvision; the shapes, the class balance and the errors."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from core.data import datasets as ds
from core.data.datasets import build_datasets, dataset_catalogue
from core.errors import CoreError
from core.models.zoo import NORMALIZATIONS

DEBIAN = ds.DEBIAN_FASHION_MNIST
needs_debian = pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it with apt)",
)


@needs_debian
def test_loads_all_70000_images_from_the_debian_files_with_balanced_classes():
    train, test, info = build_datasets({"name": "fashion_mnist", "data_dir": "/nonexistent"}, seed=0)
    assert info["n_train"] == 60000 and info["n_test"] == 10000
    assert info["num_classes"] == 10 and tuple(info["input_shape"]) == (1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # The published first training image is an ankle boot (class 9).
    assert y == 9
    # The normalisation the zoo offers for it is the training split's own pixel statistics.
    images = train.images.float().div_(255)
    (mean,), (std,) = NORMALIZATIONS["fashion_mnist"]
    assert abs(float(images.mean()) - mean) < 1e-3 and abs(float(images.std()) - std) < 1e-3


@needs_debian
def test_a_data_dir_in_torchvision_layout_is_used_first(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in [n for pair in ds._FASHION_FILES.values() for n in pair]:
        with gzip.open(DEBIAN / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:  # uncompressed
            shutil.copyfileobj(src, dst)
    assert ds._fashion_folder(ds.DatasetSpec(name="fashion_mnist", data_dir=str(tmp_path))) == raw
    train, test, info = build_datasets(
        {"name": "fashion_mnist", "data_dir": str(tmp_path), "max_train_samples": 100}, seed=1
    )
    assert info["n_train"] == 100 and info["n_test"] == 10000


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_idx_reader_checks_the_header_and_the_length(tmp_path):
    good = tmp_path / "good"
    _write_idx(good, np.arange(24).reshape(2, 3, 4))
    assert ds._read_idx(good).tolist() == np.arange(24).reshape(2, 3, 4).tolist()
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(CoreError, match="truncated") as err:
        ds._read_idx(truncated)
    assert err.value.field == "dataset.data_dir"
    not_idx = tmp_path / "not_idx"
    not_idx.write_bytes(b"\x89PNG....")
    with pytest.raises(CoreError, match="not an IDX file"):
        ds._read_idx(not_idx)


def test_missing_files_without_download_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(CoreError, match="download: true") as err:
        build_datasets({"name": "fashion_mnist", "data_dir": str(tmp_path)}, seed=0)
    assert err.value.code == "dataset_unavailable" and err.value.field == "dataset.data_dir"


def test_the_catalogue_lists_it_with_its_shapes():
    entry = dataset_catalogue()["fashion_mnist"]
    assert entry["num_classes"] == 10 and entry["input_shape"] == [1, 28, 28]
    assert entry["n_train"] == 60000 and entry["n_test"] == 10000
