"""A hostile-file corpus through the upload endpoints (POST /v1/models, POST /v1/datasets).

Every file is generated here, small, from what an attacker would send: pickles in every container
torch reads (zip ``.pt``/``.pth``/``.pth.tar``, the legacy pickle stream, the legacy tar, a pickle
inside a state dict, a bare pickle, one renamed ``.safetensors`` or ``.npz``), ``.npz`` files with
object arrays, compression bombs (npz and torch zips) and headers declaring terabytes, safetensors headers that lie
(offsets, sizes, duplicate keys, a huge header), HYDRA compressed artifacts declaring billions of
weights, truncated files, NaN/Inf weights, float16 where the network holds float32, wrong shapes and
extra keys. For each one:

- it is refused with a 4xx and the standard body, the detail naming the problem;
- no code ran: every pickle's payload would create a marker file, which must not exist;
- nothing was stored: no row (the tenant lists no model and no dataset), no object in the store, no
  temp file left in the upload folder;
- the service still answers ``/healthz`` (and a good file is still accepted: see test_api_uploads).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.service.svc_helpers import assert_error, build_app

ARCH = "cnn_small_mnist"
MB = 1024 * 1024
DATASET_LIMIT = 64 * MB  # max_dataset_bytes for these tests: a bomb only needs to pass it


class Payload:
    """Unpickling this runs ``touch <marker>``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _torch(obj: Any, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _net_state() -> dict[str, torch.Tensor]:
    from core.models.zoo import create_model

    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in create_model(ARCH).state_dict().items()}


def _safetensors(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save(state, metadata=metadata)


def _raw_safetensors(header: dict[str, Any] | bytes, data: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _first_weight(state: dict[str, torch.Tensor]) -> str:
    return next(k for k in state if k.endswith("weight"))


def _changed(fn: Callable[[dict[str, torch.Tensor], str], None]) -> bytes:
    state = _net_state()
    fn(state, _first_weight(state))
    return _safetensors(state)


def _legacy_tar(marker: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name in ("storages", "tensors", "pickle", "sys_info"):
            data = pickle.dumps(Payload(marker))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _npz(**arrays: Any) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _digits(n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), "labels": np.arange(n) % 10}


def _npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _zip(members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compress) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _npz_declaring_terabytes() -> bytes:
    """images.npy whose header says 10^12 x 28 x 28 bytes; the member holds 100."""
    return _zip(
        {
            "images.npy": _npy_header((10**12, 28, 28)) + b"\0" * 100,
            "labels.npy": _npy_header((10,), "<i8") + b"\0" * 80,
        }
    )


def _npz_lying_directory() -> bytes:
    """A zip whose central directory claims a member unpacks to ~4 GB (it holds a few bytes)."""
    data = bytearray(_npz(**_digits()))
    at = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, at + 24, 0xF0000000)  # uncompressed size
    return bytes(data)


def _npz_bomb() -> bytes:
    """Zeros that deflate ~1000x: a few hundred kB unpack past the dataset limit."""
    n = DATASET_LIMIT // (28 * 28) + 1000
    out = io.BytesIO()
    np.savez_compressed(out, images=np.zeros((n, 28, 28), np.uint8), labels=np.zeros(n, np.int64))
    return out.getvalue()


def _deflated_torch_zip() -> bytes:
    """The network's torch checkpoint plus 2 MB of zeros, re-zipped with deflate: ~60 kB that torch
    would inflate (memory-mapping needs the members stored, as ``torch.save`` writes them)."""
    source = zipfile.ZipFile(io.BytesIO(_torch({**_net_state(), "pad": torch.zeros(MB // 2)})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            archive.writestr(info.filename, source.read(info.filename))
    return out.getvalue()


def _hydra_bomb() -> bytes:
    """A HYDRA compressed artifact whose codec claims 2^31 - 1 weights (16 GB in float64)."""
    from core.io.export import COMPRESSED_FORMAT

    codec = {"net.0.weight": {"shape": [2**31 - 1], "dtype": "float64", "nnz": 0, "k": 0}}
    return _safetensors(
        {"net.0.bias": torch.zeros(16)}, {"format": COMPRESSED_FORMAT, "codec": json.dumps(codec), "metadata": "{}"}
    )


F32x4 = torch.zeros(4).numpy().tobytes()

# name -> (endpoint, file name, builder(marker) -> bytes, form, status, words the detail must contain)
CORPUS: dict[str, tuple[str, str, Callable[[Path], bytes], dict[str, str], int, tuple[str, ...]]] = {
    # --- pickles, in every container torch reads
    "pt-zip-object": (
        "models",
        "net.pt",
        lambda m: _torch(Payload(m)),
        {},
        422,
        ("posix.system", "nothing was executed"),
    ),
    "pth-state-dict-value": (
        "models",
        "net.pth",
        lambda m: _torch({"net.0.weight": Payload(m)}),
        {},
        422,
        ("posix.system",),
    ),
    "pth-tar-zip": (
        "models",
        "net.pth.tar",
        lambda m: _torch({"state_dict": {"w": Payload(m)}}),
        {},
        422,
        ("posix.system",),
    ),
    "legacy-pickle-stream": (
        "models",
        "net.pt",
        lambda m: _torch({"w": torch.zeros(2), "x": Payload(m)}, legacy=True),
        {},
        422,
        ("posix.system",),
    ),
    "legacy-tar": ("models", "net.pth.tar", _legacy_tar, {}, 422, ("legacy .tar",)),
    "pickle-inside-state-dict": (
        "models",
        "net.pt",
        lambda m: _torch({**_net_state(), "extra": Payload(m)}),
        {},
        422,
        ("posix.system",),
    ),
    "pickle-bytes-in-state-dict": (
        "models",
        "net.pt",
        lambda m: _torch({**_net_state(), "blob": pickle.dumps(Payload(m))}),
        {},
        422,
        ("not tensors", "blob"),
    ),
    "bare-pickle": ("models", "net.pt", lambda m: pickle.dumps(Payload(m)), {}, 422, ("nothing was executed",)),
    "bare-pickle-protocol-0": (
        "models",
        "net.pt",
        lambda m: pickle.dumps(Payload(m), protocol=0),
        {},
        422,
        ("not a recognised weights format",),
    ),
    "pickle-renamed-safetensors": (
        "models",
        "net.safetensors",
        lambda m: _torch(Payload(m)),
        {},
        422,
        ("declared safetensors", "zip archive"),
    ),
    "bare-pickle-renamed-safetensors": (
        "models",
        "net.safetensors",
        lambda m: pickle.dumps(Payload(m)),
        {},
        422,
        ("declared safetensors", "Python pickle"),
    ),
    "pickle-declared-safetensors": (
        "models",
        "net.bin",
        lambda m: pickle.dumps(Payload(m)),
        {"format": "safetensors"},
        422,
        ("declared safetensors",),
    ),
    # --- safetensors headers that lie
    "st-offsets-past-the-end": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, F32x4),
        {},
        422,
        ("declares 32 bytes", "holds 16"),
    ),
    "st-size-vs-shape": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, F32x4),
        {},
        422,
        ("needs 8 bytes", "span 16"),
    ),
    "st-fp16-declared-fp32": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
            torch.zeros(4, dtype=torch.float16).numpy().tobytes(),
        ),
        {},
        422,
        ("needs 16 bytes", "span 8"),
    ),
    "st-duplicate-keys": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors(
            b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
            b' "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',
            F32x4,
        ),
        {},
        422,
        ("'w' twice",),
    ),
    "st-overlapping": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors(
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
            },
            F32x4,
        ),
        {},
        422,
        ("overlaps",),
    ),
    "st-huge-header": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors(b"{" + b" " * 64, b"", length=2**40),
        {},
        422,
        ("claims 1099511627776 bytes", "over the limit"),
    ),
    "st-header-past-the-file": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors(b'{"w": 1}', b"", length=5000),
        {},
        422,
        ("truncated, or a lying header",),
    ),
    "st-declaring-terabytes": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors({"w": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]}}, F32x4),
        {},
        422,
        ("declares 4000000000000 bytes",),
    ),
    "st-unknown-dtype": (
        "models",
        "net.safetensors",
        lambda m: _raw_safetensors({"w": {"dtype": "PY_OBJECT", "shape": [4], "data_offsets": [0, 16]}}, F32x4),
        {},
        422,
        ("unknown dtype",),
    ),
    "st-truncated": (
        "models",
        "net.safetensors",
        lambda m: _safetensors(_net_state())[:-1000],
        {},
        422,
        ("truncated",),
    ),
    "hydra-compressed-bomb": (
        "models",
        "net.safetensors",
        lambda m: _hydra_bomb(),
        {},
        422,
        ("declares", "more than", "refused before decoding"),
    ),
    # --- well-formed files with the wrong content
    "nan-weights": (
        "models",
        "net.safetensors",
        lambda m: _changed(lambda s, k: s[k].view(-1).__setitem__(0, float("nan"))),
        {},
        422,
        ("NaN or Inf",),
    ),
    "inf-weights": (
        "models",
        "net.safetensors",
        lambda m: _changed(lambda s, k: s[k].view(-1).__setitem__(-1, float("inf"))),
        {},
        422,
        ("NaN or Inf",),
    ),
    "fp16-where-fp32": (
        "models",
        "net.safetensors",
        lambda m: _changed(lambda s, k: s.__setitem__(k, s[k].half())),
        {},
        422,
        ("dtype torch.float16 in the checkpoint, torch.float32 in the model",),
    ),
    "wrong-shape": (
        "models",
        "net.safetensors",
        lambda m: _changed(lambda s, k: s.__setitem__(k, torch.zeros(2, 3))),
        {},
        422,
        ("shape (2, 3) in the checkpoint",),
    ),
    "extra-keys": (
        "models",
        "net.safetensors",
        lambda m: _changed(lambda s, k: s.__setitem__("head.weight", torch.zeros(3))),
        {},
        422,
        ("unexpected keys", "head.weight"),
    ),
    "deflated-torch-zip": (
        "models",
        "net.pt",
        lambda m: _deflated_torch_zip(),
        {},
        422,
        ("compressed member", "refused before reading"),
    ),
    "truncated-torch-zip": ("models", "net.pt", lambda m: _torch(_net_state())[:4000], {}, 422, ("truncated zip",)),
    "npz-as-model": ("models", "net.pt", lambda m: _npz(**_digits()), {}, 422, ("not a torch checkpoint", "data.pkl")),
    "garbage-model": (
        "models",
        "net.pt",
        lambda m: os.urandom(300).replace(b"\x80", b"\x00").replace(b"PK", b"pk"),
        {},
        422,
        ("not a recognised weights format",),
    ),
    "empty-model": ("models", "net.pt", lambda m: b"", {}, 422, ("empty",)),
    # --- datasets
    "npz-object-array": (
        "datasets",
        "d.npz",
        lambda m: _npz(images=np.array([Payload(m)] * 4, dtype=object), labels=np.arange(4)),
        {},
        422,
        ("Python objects",),
    ),
    "npz-pickle-member": (
        "datasets",
        "d.npz",
        lambda m: _zip(
            {
                "images.npy": _npy_header((1, 2, 2)) + b"\0" * 4,
                "labels.npy": _npy_header((1,)) + b"\0",
                "evil.pkl": pickle.dumps(Payload(m)),
            }
        ),
        {},
        422,
        ("unexpected member", "evil.pkl"),
    ),
    "npz-compression-bomb": ("datasets", "d.npz", lambda m: _npz_bomb(), {}, 422, ("unpacks to", "over the limit")),
    "npz-declaring-terabytes": (
        "datasets",
        "d.npz",
        lambda m: _npz_declaring_terabytes(),
        {},
        422,
        ("declares shape (1000000000000, 28, 28)", "holds 100"),
    ),
    "npz-lying-directory": ("datasets", "d.npz", lambda m: _npz_lying_directory(), {}, 422, ("unpacks to",)),
    "npz-truncated": ("datasets", "d.npz", lambda m: _npz(**_digits())[:-200], {}, 422, ("not a readable .npz",)),
    "pickle-renamed-npz": ("datasets", "d.npz", lambda m: pickle.dumps(Payload(m)), {}, 422, ("Python pickle",)),
    "npy-not-npz": ("datasets", "d.npz", lambda m: _npy_header((2, 2, 2)) + b"\0" * 8, {}, 422, ("not an .npz",)),
    "npz-extra-array": (
        "datasets",
        "d.npz",
        lambda m: _npz(**_digits(), secret=np.arange(3)),
        {},
        422,
        ("unexpected member", "secret.npy"),
    ),
    "npz-nan-images": (
        "datasets",
        "d.npz",
        lambda m: _npz(images=np.full((20, 28, 28), np.nan, np.float32), labels=np.arange(20) % 10),
        {},
        422,
        ("NaN or Inf",),
    ),
    "npz-wrong-shapes": (
        "datasets",
        "d.npz",
        lambda m: _npz(images=_digits()["images"], labels=np.arange(7)),
        {},
        422,
        ("has 7 entries",),
    ),
    "empty-dataset": ("datasets", "d.npz", lambda m: b"", {}, 422, ("empty",)),
}


@pytest.fixture
def hostile_client(settings, queue):  # type: ignore[no-untyped-def]
    small = settings.model_copy(update={"max_dataset_bytes": DATASET_LIMIT})
    with TestClient(build_app(small, queue), raise_server_exceptions=False) as client:
        yield client, small


def _stored_objects(settings: Any) -> list[Path]:
    root = Path(settings.storage_dir)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_file_is_refused_runs_nothing_and_stores_nothing(
    case: str, hostile_client, key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    client, settings = hostile_client
    endpoint, filename, build, form, status, needles = CORPUS[case]
    marker = tmp_path / "pwned"
    data = build(marker)
    fields = {"arch": ARCH, **form} if endpoint == "models" else dict(form)
    response = client.post(
        f"/v1/{endpoint}",
        headers=key.headers,
        files={"file": (filename, data, "application/octet-stream")},
        data=fields,
    )

    body = assert_error(response, status)
    assert body["field"] in ("file", "format"), body
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    assert not marker.exists(), "the pickle payload ran"
    for resource in ("models", "datasets"):
        listing = client.get(f"/v1/{resource}", headers=key.headers).json()
        assert listing["count"] == 0, listing
    assert _stored_objects(settings) == []
    uploads = Path(settings.work_dir) / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())
    assert client.get("/healthz").status_code == 200


def test_a_good_file_is_still_accepted_after_the_corpus(hostile_client, key) -> None:  # type: ignore[no-untyped-def]
    client, settings = hostile_client
    model = client.post(
        "/v1/models",
        headers=key.headers,
        data={"arch": ARCH},
        files={"file": ("net.safetensors", _safetensors(_net_state()), "application/octet-stream")},
    )
    dataset = client.post(
        "/v1/datasets", headers=key.headers, files={"file": ("d.npz", _npz(**_digits()), "application/octet-stream")}
    )
    assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
    assert len(_stored_objects(settings)) == 2
