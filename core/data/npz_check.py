"""Checking an ``.npz`` dataset by streaming it: every rule of the ``npz`` loader, in bounded memory.

The loader (``core.data.datasets``) builds the arrays in memory, which a job needs; a service that
only has to say "this file loads" must not: a few hundred kB of deflated zeros can declare a
gigabyte of images, and ``np.load`` would inflate all of it (then copy it) for each upload. Here each
``.npy`` member is read once through ``zipfile`` in chunks of ``chunk_bytes`` (its header with
``numpy.lib.format``), and only a summary is kept per array: its shape and dtype, whether every
value is finite (and whole, for float labels), the minimum and maximum. The rules are applied to
those summaries by the loader's own functions (``check_image_values``, ``image_layout``,
``check_labels``), in the loader's order, so a file refused here is refused there with the same
message and the other way round. Memory: a few times ``chunk_bytes``, whatever the file declares.

What is not computed: the train/test sizes of the seeded split (they need every class's count); the
split's only failure (an empty side) depends on the labels only when there are so few of them that
they are read whole, so the verdict is exact.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.data.datasets import (
    DatasetSpec,
    _bad,
    _labels,
    _split_indices,
    check_image_values,
    check_labels,
    image_layout,
)
from core.errors import CoreError

CHUNK_BYTES = 1 << 20
ARRAYS = ("images", "labels", "test_images", "test_labels")


@dataclass
class ArraySummary:
    """What the rules need to know of one array, gathered chunk by chunk."""

    shape: tuple[int, ...]
    dtype: np.dtype
    finite: bool = True  # every value finite (floats)
    integral: bool = True  # every value finite and whole (floats)
    lo: int | float = 0
    hi: int | float = 0
    seen: int = 0  # values summarised

    def add(self, chunk: np.ndarray, want_integral: bool) -> None:
        if chunk.size == 0:
            return
        kind = self.dtype.kind
        if kind == "f":
            finite = bool(np.isfinite(chunk).all())
            self.finite &= finite
            if want_integral:
                self.integral &= finite and bool((chunk == np.round(chunk)).all())
            if not finite:
                return  # min/max are only reported for finite arrays
        elif kind not in "iu":
            return  # refused on its dtype; the values do not matter
        lo, hi = chunk.min().item(), chunk.max().item()
        self.lo, self.hi = (lo, hi) if self.seen == 0 else (min(self.lo, lo), max(self.hi, hi))
        self.seen += chunk.size


def read_npy_header(member: IO[bytes], key: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the ``.npy`` member ``key`` from its header, leaving ``member`` at its data;
    an unknown format version or a dtype of Python objects (pickles) is refused."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version in ((2, 0), (3, 0)):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise _bad(f"'{key}': unsupported .npy version {version}")
    if dtype.hasobject:
        raise _bad(f"'{key}' holds Python objects (dtype {dtype}); pickled data is never loaded")
    return tuple(int(s) for s in shape), dtype


def _summarise(member: IO[bytes], key: str, chunk_bytes: int) -> ArraySummary:
    """Stream one ``.npy`` member: its header, then its data in chunks of whole items."""
    shape, dtype = read_npy_header(member, key)
    summary = ArraySummary(shape, dtype)
    itemsize = dtype.itemsize
    expected = math.prod(shape) * itemsize
    # uint8 images have no value rule: their bytes are read (zip's CRC checks them) but not converted
    convert = dtype.kind in "fiu" and not (dtype == np.uint8 and "images" in key)
    want_integral = "labels" in key and dtype.kind == "f"
    step = max(1, chunk_bytes // max(itemsize, 1)) * max(itemsize, 1)
    read = 0
    while read < expected:
        data = member.read(min(step, expected - read))
        if not data:
            break
        read += len(data)
        if convert:
            usable = len(data) - len(data) % itemsize
            summary.add(np.frombuffer(data, dtype=dtype, count=usable // itemsize), want_integral)
    if read != expected or member.read(1):
        raise _bad(
            f"'{key}' declares shape {shape} of {dtype} = {expected} bytes but holds a different amount "
            "(truncated, or a lying header)"
        )
    return summary


def _whole_labels(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """A label array read whole: only called when it holds a handful of values."""
    with archive.open(name) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def check_npz(
    path: str | Path,
    num_classes: int | None = None,
    test_fraction: float = DatasetSpec.model_fields["test_fraction"].default,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, Any]:
    """Every check of ``build_datasets({"name": "npz", "path": path, "num_classes": ...})``, streamed.

    Returns ``{"name", "num_classes", "input_shape", "n_samples"}`` (train and test together); raises
    the loader's ``CoreError("invalid_dataset", "dataset.path", ...)`` for a file it would refuse."""
    path = Path(path)
    if not path.is_file():
        raise CoreError("dataset_unavailable", "dataset.path", f"no file at {str(path)!r}")
    summaries: dict[str, ArraySummary] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            missing = {"images", "labels"} - members.keys()
            if missing:
                raise _bad(f"missing array(s) {sorted(missing)}; found {sorted(members)}")
            for key in ARRAYS:
                if key in members:
                    with archive.open(members[key]) as member:
                        summaries[key] = _summarise(member, key, chunk_bytes)
            small_labels: dict[str, np.ndarray] = {}
            train_labels = summaries["labels"].shape
            if "test_labels" not in summaries and len(train_labels) == 1:
                if _split_needs_labels(train_labels[0], test_fraction):
                    small_labels["labels"] = _whole_labels(archive, members["labels"].filename)
    except CoreError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # corrupt zip or data
        raise _bad(f"not a readable .npz of plain arrays: {err}") from err
    return _verdict(summaries, small_labels, num_classes, test_fraction)


def _split_needs_labels(n: int, fraction: float) -> bool:
    """Whether the seeded split can come out empty on one side, which depends on the labels: only
    when it would hold out no sample (round(f*N) == 0) or every sample (round(f*N) >= N), i.e. for
    a handful of samples (``_split_indices`` clips every class of 2+ samples to 1..count-1)."""
    held_out = int(round(fraction * n))
    return held_out == 0 or held_out >= n


def _verdict(
    summaries: dict[str, ArraySummary],
    small_labels: dict[str, np.ndarray],
    num_classes: int | None,
    test_fraction: float,
) -> dict[str, Any]:
    """The loader's rules (``_load_npz``, ``_npz_source``, ``build_datasets``) on the summaries, in its order."""
    if ("test_images" in summaries) != ("test_labels" in summaries):
        raise _bad("'test_images' and 'test_labels' must be given together")

    def images(key: str) -> tuple[int, ...]:
        s = summaries[key]
        check_image_values(s.dtype, s.finite, float(s.lo), float(s.hi), key)
        return image_layout(s.shape, key)[0]

    def labels(key: str, n: int) -> None:
        s = summaries[key]
        check_labels(s.shape, s.dtype, s.integral, s.lo, s.hi, n, key, num_classes)

    shape = images("images")
    labels("labels", shape[0])
    n_samples = shape[0]
    if "test_images" in summaries:
        test_shape = images("test_images")
        if test_shape[1:] != shape[1:]:
            raise _bad(f"'test_images' are {test_shape[1:]} but 'images' are {shape[1:]}")
        labels("test_labels", test_shape[0])
        n_samples += test_shape[0]
    elif "labels" in small_labels:
        _split_indices(_labels(small_labels["labels"], shape[0], "labels", num_classes), test_fraction, "dataset.path")
    top = int(max(summaries[k].hi for k in ("labels", "test_labels") if k in summaries))
    if top > np.iinfo(np.int64).max:  # the loader casts labels to int64, where this wraps negative
        raise _bad(f"labels contain class {top}, beyond the int64 range labels are loaded as")
    found = num_classes or top + 1
    if found < 2:
        raise CoreError("invalid_dataset", "dataset.path", f"need at least 2 classes, found {found}")
    return {"name": "npz", "num_classes": found, "input_shape": shape[1:], "n_samples": n_samples}


__all__ = ["check_npz", "CHUNK_BYTES"]
