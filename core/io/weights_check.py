"""Checking an uploaded weights file without holding it in memory: ``check_weights`` for the service.

``check_weights`` reads every tensor of the file (it also serves ``load_weights``, which needs them).
A service that only has to say "this file loads into that network" reads less:

* safetensors: shapes and dtypes come from the header (already checked by ``safetensors_header``);
  each tensor's values are read from its byte range in chunks of ``chunk_bytes`` for the NaN/Inf and
  mask checks, so memory stays a few chunks whatever the file's size;
* a torch zip checkpoint is opened with ``mmap=True`` (tensors stay in the file, paged in while
  checked, in chunks) and must hold its members uncompressed, as ``torch.save`` writes them: a
  deflated member could inflate far past the upload's size, which is the compression bomb this
  refuses before reading;
* a HYDRA compressed artifact must be decoded to be checked; it may declare no more values than the
  network holds (the loader allows 32x that, for optimizer state a compressed artifact never has),
  so decoding costs at most one network;
* the legacy torch formats (a pickle stream, the old tar) are read whole: they are not compressed,
  so they cost at most the upload's size.

The checks and their messages are ``check_weights``'s (``verify_tensors``, ``_check``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CoreError
from core.io.checkpoint import FIELD, _torch_load
from core.io.weights import (
    _check_zip,
    _invalid,
    _read_safetensors,
    _state_bytes,
    _unwrap_state_dict,
    precheck_weights_file,
    safetensors_header,
    verify_tensors,
)

CHUNK_BYTES = 1 << 20
_ST_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn,
}


def tensor_chunks(tensor: torch.Tensor, max_elements: int) -> Iterator[torch.Tensor]:
    """Views of ``tensor`` of at most ``max_elements`` values (along its first dimensions), no copies."""
    if tensor.dim() == 0 or tensor.numel() <= max_elements:
        yield tensor
        return
    row = tensor[0].numel()
    if row > max_elements:
        for i in range(tensor.shape[0]):
            yield from tensor_chunks(tensor[i], max_elements)
        return
    step = max_elements // max(row, 1)
    for start in range(0, tensor.shape[0], step):
        yield tensor[start : start + step]


def _in_chunks(tensors: dict[str, torch.Tensor], chunk_bytes: int) -> Callable[[str], Iterable[torch.Tensor]]:
    """Values of tensors already read (or memory-mapped), in views of about ``chunk_bytes``."""
    return lambda name: tensor_chunks(tensors[name], max(1, chunk_bytes // 8))


def _safetensors_values(
    path: Path, header: dict[str, Any], chunk_bytes: int
) -> Callable[[str], Iterable[torch.Tensor]]:
    with path.open("rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")

    def values(name: str) -> Iterator[torch.Tensor]:
        dtype_name, _shape, begin, end = header["tensors"][name]
        dtype = _ST_DTYPES[dtype_name]
        itemsize = torch.empty((), dtype=dtype).element_size()
        step = max(1, chunk_bytes // itemsize) * itemsize
        with path.open("rb") as f:
            f.seek(data_start + begin)
            left = end - begin
            while left > 0:
                block = bytearray(f.read(min(step, left)))
                if len(block) == 0 or len(block) % itemsize:
                    raise _invalid(f"{path.name}: tensor {name!r} is truncated")
                left -= len(block)
                yield torch.frombuffer(block, dtype=dtype)

    return values


def _refuse_compressed_members(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        packed = [info.filename for info in archive.infolist() if info.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise _invalid(
            f"{path.name} holds compressed member(s) ({', '.join(sorted(packed)[:5])}); torch.save stores "
            "tensors uncompressed, and a compressed member can inflate far past the file; refused before reading"
        )


def check_weights_file(
    path: str | Path, model: nn.Module, fmt: str = "auto", chunk_bytes: int = CHUNK_BYTES
) -> dict[str, Any]:
    """Every check of ``check_weights(path, model, fmt)`` in bounded memory (see the module docstring).
    ``model`` may live on the ``meta`` device. Returns ``{"format", "loaded", "derived"}``; raises
    ``CoreError("invalid_checkpoint", ...)``, with ``check_weights``'s messages."""
    path = Path(path)
    if fmt not in ("auto", "safetensors", "state_dict", "hydra"):
        raise CoreError("invalid_checkpoint", "model.checkpoint_format", f"unknown format {fmt!r}")
    kind = precheck_weights_file(path, fmt)
    target_elements = sum(t.numel() for t in model.state_dict().values())
    values: Callable[[str], Iterable[torch.Tensor]] | None
    if kind == "safetensors":
        if fmt in ("state_dict", "hydra"):
            raise _invalid(f"{path.name} was declared a torch {fmt} checkpoint but it is a safetensors file")
        header = safetensors_header(path)
        if header["metadata"].get("format", "").startswith("hydra-compressed"):
            raw, detected = _read_safetensors(path, target_elements + (1 << 20))
            values = _in_chunks(raw, chunk_bytes)
        else:
            raw = {
                name: torch.empty(shape, dtype=_ST_DTYPES[dtype], device="meta")
                for name, (dtype, shape, _begin, _end) in header["tensors"].items()
            }
            detected, values = "safetensors", _safetensors_values(path, header, chunk_bytes)
    else:
        if kind == "zip":
            _check_zip(path, _state_bytes(model.state_dict()))
            _refuse_compressed_members(path)
        state = _unwrap_state_dict(_torch_load(path, FIELD, mmap=kind == "zip"))
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise _invalid(f"entries that are not tensors: {', '.join(map(repr, bad[:10]))}")
        detected = (
            fmt if fmt != "auto" else "hydra" if any(k.endswith(".popup_scores") for k in state) else "state_dict"
        )
        raw = dict(state)
        values = _in_chunks(raw, chunk_bytes)
    _source, info = verify_tensors(raw, model, values)
    return {"format": detected, **info}


__all__ = ["check_weights_file", "tensor_chunks", "CHUNK_BYTES"]
