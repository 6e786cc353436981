"""The streamed ``.npz`` check (core.data.npz_check) says exactly what the loader says, in bounded memory.

Every file here goes through both ``build_datasets`` (which loads the arrays, as a job does) and
``check_npz`` (which streams them in tiny chunks, so chunk boundaries fall inside arrays and items):
both accept with the same classes, shape and sample count, or both refuse with the same message.
The memory bound is measured in a child process (its ``ru_maxrss``) on a deflate bomb.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.data.datasets import build_datasets
from core.data.npz_check import check_npz
from core.errors import CoreError

MB = 1024 * 1024
_rng = np.random.default_rng(0)
_IMGS = _rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
_LAB = np.arange(40) % 10

CASES: dict[str, dict[str, Any]] = {
    "uint8-nhw": {"images": _IMGS, "labels": _LAB},
    "float-nhwc": {"images": _rng.random((20, 8, 8, 3)).astype(np.float32), "labels": np.arange(20) % 3},
    "float64-nchw-float-labels": {"images": _rng.random((20, 3, 8, 8)), "labels": (np.arange(20) % 3) * 1.0},
    "explicit-test-split": {"images": _IMGS, "labels": _LAB, "test_images": _IMGS[:5], "test_labels": _LAB[:5] + 2},
    "big-endian-floats": {"images": _rng.random((10, 4, 4)).astype(">f4"), "labels": np.arange(10) % 2},
    "fortran-order": {"images": np.asfortranarray(_rng.random((10, 4, 4))), "labels": np.arange(10) % 2},
    "nan-late-in-the-array": {
        "images": np.where(np.arange(4 * 9).reshape(4, 3, 3) == 35, np.nan, 0.5),
        "labels": np.arange(4),
    },
    "above-one": {"images": np.full((4, 2, 2), 3.0), "labels": np.arange(4)},
    "int16-images": {"images": np.zeros((4, 2, 2), np.int16), "labels": np.arange(4)},
    "two-dims": {"images": np.zeros((4, 2), np.uint8), "labels": np.arange(4)},
    "no-channel-axis": {"images": np.zeros((4, 5, 5, 5), np.uint8), "labels": np.arange(4)},
    "no-images": {"images": np.zeros((0, 2, 2), np.uint8), "labels": np.arange(0)},
    "zero-height": {"images": np.zeros((3, 1, 0, 2), np.uint8), "labels": np.arange(3)},
    "labels-2d": {"images": _IMGS, "labels": _LAB[:, None]},
    "labels-short": {"images": _IMGS, "labels": np.arange(7)},
    "labels-fractional": {"images": _IMGS, "labels": _LAB + 0.5},
    "labels-nan": {"images": _IMGS, "labels": np.where(_LAB == 3, np.nan, _LAB)},
    "labels-bool": {"images": _IMGS, "labels": _LAB > 3},
    "labels-negative": {"images": _IMGS, "labels": _LAB - 3},
    "one-class": {"images": _IMGS, "labels": np.zeros(40, np.int64)},
    "test-images-alone": {"images": _IMGS, "labels": _LAB, "test_images": _IMGS},
    "test-images-other-size": {"images": _IMGS, "labels": _LAB, "test_images": _IMGS[:, :5], "test_labels": _LAB},
    "one-sample": {"images": _IMGS[:1], "labels": _LAB[:1]},
    "two-samples-two-classes": {"images": _IMGS[:2], "labels": _LAB[:2]},
    "two-samples-one-class": {"images": _IMGS[:2], "labels": np.array([1, 1])},
    "three-samples": {"images": _IMGS[:3], "labels": _LAB[:3]},
    "labels-missing": {"images": _IMGS},
}


def _outcome(fn: Any) -> tuple[Any, ...]:
    try:
        info = fn()
    except CoreError as err:
        return ("refused", err.code, err.field, err.message)
    n = info["n_samples"] if "n_samples" in info else info["n_train"] + info["n_test"]
    return ("accepted", info["num_classes"], tuple(info["input_shape"]), n)


@pytest.mark.parametrize("num_classes", [None, 5, 10])
@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_check_agrees_with_the_loader(case: str, num_classes: int | None, tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **CASES[case])
    loaded = _outcome(lambda: build_datasets({"name": "npz", "path": str(path), "num_classes": num_classes}, seed=0)[2])
    streamed = _outcome(lambda: check_npz(path, num_classes, chunk_bytes=24))  # chunks of 3 float64
    assert streamed == loaded


def test_known_answers_and_unreadable_data(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, images=_IMGS, labels=_LAB, test_images=_IMGS[:5], test_labels=_LAB[:5])
    assert check_npz(path) == {"name": "npz", "num_classes": 10, "input_shape": (1, 28, 28), "n_samples": 45}
    # a member whose deflated bytes are damaged (its directory intact) is refused, not half-read
    np.savez_compressed(path, images=np.zeros((400, 28, 28), np.uint8), labels=np.arange(400) % 10)
    raw = bytearray(path.read_bytes())
    raw[100:110] = b"\xff" * 10
    path.write_bytes(bytes(raw))
    with pytest.raises(CoreError, match="not a readable .npz") as err:
        check_npz(path)
    assert err.value.field == "dataset.path"
    # labels past int64 (the loader's label type) are refused
    np.savez(path, images=_IMGS, labels=_LAB.astype(np.uint64) + 2**63)
    with pytest.raises(CoreError, match="beyond the int64 range"):
        check_npz(path)


def write_zeros_npz(path: Path, declared_bytes: int, chunk: int = 4 * MB) -> int:
    """An .npz of deflated zeros: uint8 ``images`` (N, 28, 28) of ``declared_bytes`` and int64 zero
    labels, written in chunks (the writer never holds the arrays either). Returns N."""
    n = declared_bytes // (28 * 28)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, dtype, shape in (("images.npy", "|u1", (n, 28, 28)), ("labels.npy", "<i8", (n,))):
            header = np.lib.format.header_data_from_array_1_0(np.empty(0, dtype))
            header.update(shape=shape)
            with archive.open(name, "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                left = int(np.prod(shape)) * np.dtype(dtype).itemsize
                zeros = bytes(min(chunk, left))
                while left:
                    member.write(zeros[: min(chunk, left)])
                    left -= min(chunk, left)
    return n


_CHILD = """
import json, resource, sys, time
from core.data.npz_check import check_npz

def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

try:  # reset the peak to the current RSS, so import-time peaks cannot hide the check's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, peak = kb("VmRSS:"), lambda: kb("VmHWM:")
except OSError:
    base, peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
info = check_npz(sys.argv[1], 10)
print(json.dumps({"growth_kb": peak() - base, "seconds": time.perf_counter() - start, "n": info["n_samples"]}))
"""


def test_a_deflate_bomb_is_checked_in_a_few_megabytes(tmp_path: Path) -> None:
    """256 MiB of declared images in a file of ~0.3 MB: the check's peak RSS grows by < 32 MB (the
    loader's grows by about twice the declared size: bench/upload_check_memory.py)."""
    path = tmp_path / "bomb.npz"
    n = write_zeros_npz(path, 256 * MB)
    assert path.stat().st_size < 2 * MB
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["n"] == n
    assert result["growth_kb"] < 32 * 1024, result
