"""Importing a user's starting network: safetensors, plain state dicts, the HYDRA reference format.

* ``load_weights`` imports a weights file into a model from ``core.models.zoo.create_model``, after
  checking every key, shape, dtype and value: a bad file raises
  ``CoreError("invalid_checkpoint", "model.checkpoint", ...)`` and leaves the model untouched.
* ``check_weights`` does the same checks without copying anything (the API runs it on a network built
  on the ``meta`` device, so an upload never allocates the network).

Weights files come from users, so nothing about them is trusted: the format is recognised from the
bytes (not the name), a safetensors header is parsed and checked by us before the library sees it
(size limit, duplicate keys, dtypes, every tensor's offsets against its shape and against the file's
real length), the sizes a file declares are bounded by what the target network can hold before
anything is allocated, and a pickle is only ever read by torch's weights-only unpickler
(``core.io.checkpoint``), whose refusal is reported naming what the pickle tried to load.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CoreError
from core.io.checkpoint import FIELD, _torch_load

_MAX_LISTED_PROBLEMS = 25
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024  # bytes of JSON; a catalogue network needs a few kB
# safetensors dtypes and their item sizes (bytes)
_ST_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


# ----------------------------------------------------------------------------- importing weights
def _invalid(message: str) -> CoreError:
    return CoreError("invalid_checkpoint", FIELD, message)


def sniff_format(path: str | os.PathLike[str]) -> str:
    """What the bytes say the file is: "safetensors", "zip" (torch's format, or any zip), "tar",
    "pickle" (torch's legacy format, or a bare pickle), "empty" or "unknown". Never the file name."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+ (torch's legacy format is a pickle stream too)
        return "pickle"
    return "unknown"


_KIND_TEXT = {
    "zip": "a zip archive (torch's checkpoint format)",
    "tar": "a tar archive",
    "pickle": "a Python pickle",
    "empty": "empty",
    "unknown": "not a recognised weights format",
}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _invalid(f"the safetensors header names {key!r} twice")
        out[key] = value
    return out


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check a safetensors header ourselves, before the library maps the file.

    Returns ``{"tensors": {name: (dtype, shape, begin, end)}, "metadata": {...}, "elements": int}``.
    Refuses, naming the problem: a header past ``MAX_SAFETENSORS_HEADER`` or past the end of the file,
    one that is not UTF-8 JSON, a key given twice, an unknown dtype, a tensor whose offsets do not
    span exactly ``prod(shape) * itemsize`` bytes, tensors that overlap or leave gaps, and a file whose
    data section is shorter (truncated, or a header declaring terabytes) or longer than declared."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _invalid(f"{path.name}: truncated ({size} bytes; a safetensors file starts with an 8-byte length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER:
            raise _invalid(
                f"{path.name}: the safetensors header claims {n} bytes, over the limit of {MAX_SAFETENSORS_HEADER}"
            )
        if 8 + n > size:
            raise _invalid(
                f"{path.name}: the safetensors header claims {n} bytes but the file has only {size - 8} "
                "after the length (truncated, or a lying header)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except CoreError:
        raise
    except (UnicodeDecodeError, ValueError) as err:
        raise _invalid(f"{path.name}: the safetensors header is not UTF-8 JSON ({err})") from err
    if not isinstance(header, dict):
        raise _invalid(f"{path.name}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _invalid(f"{path.name}: __metadata__ must map strings to strings")
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    elements = 0
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _invalid(f"{path.name}: tensor {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _ST_ITEMSIZE:
            raise _invalid(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _invalid(f"{path.name}: tensor {name!r} has a malformed shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise _invalid(f"{path.name}: tensor {name!r} has malformed data_offsets {offsets!r}")
        count = math.prod(shape)
        need = count * _ST_ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != need:
            raise _invalid(
                f"{path.name}: tensor {name!r} is {dtype} {shape}, which needs {need} bytes, but its "
                f"offsets span {offsets[1] - offsets[0]}"
            )
        tensors[name] = (dtype, tuple(shape), offsets[0], offsets[1])
        elements += count
    data_len = size - 8 - n
    cursor = 0
    for name, (_, _, begin, end) in sorted(tensors.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != cursor:
            problem = (
                "overlaps the tensor before it" if begin < cursor else f"leaves {begin - cursor} bytes unaccounted"
            )
            raise _invalid(f"{path.name}: tensor {name!r} (offsets {begin}-{end}) {problem}")
        cursor = end
    if cursor != data_len:
        what = (
            f"declares {cursor} bytes of tensor data but the file holds {data_len} (truncated, or a lying header)"
            if cursor > data_len
            else f"has {data_len - cursor} bytes after its last tensor"
        )
        raise _invalid(f"{path.name}: the safetensors header {what}")
    return {"tensors": tensors, "metadata": metadata, "elements": elements}


def _compressed_elements(path: Path, metadata: dict[str, str]) -> int:
    """Weights a HYDRA compressed artifact will decode to, from its header alone (nothing allocated)."""
    try:
        codec = json.loads(metadata.get("codec", "{}"), object_pairs_hook=_unique_keys)
    except CoreError:
        raise
    except ValueError as err:
        raise _invalid(f"{path.name}: unreadable codec header ({err})") from err
    if not isinstance(codec, dict):
        raise _invalid(f"{path.name}: malformed codec header")
    total = 0
    for key, entry in codec.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _invalid(f"{path.name}: codec entry {key!r} has a malformed shape")
        total += math.prod(shape)
    return total


def _read_safetensors(path: Path, max_elements: int | None = None) -> tuple[dict[str, torch.Tensor], str]:
    from safetensors import safe_open

    header = safetensors_header(path)
    declared = header["elements"]
    compressed = header["metadata"].get("format", "").startswith("hydra-compressed")
    if compressed:
        declared += _compressed_elements(path, header["metadata"])
    if max_elements is not None and declared > max_elements:
        raise _invalid(
            f"{path.name} declares {declared} values, more than the {max_elements} the network can "
            "hold; refused before decoding"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format", "").startswith("hydra-compressed"):
                from core.io.export import load_compressed

                net_state, info = load_compressed(path)
                tensors = {f"net.{k}": v for k, v in net_state.items()}
                norm = info.get("normalize") or {}
                if "mean" in norm and "std" in norm:
                    tensors["normalize.mean"] = torch.tensor(norm["mean"], dtype=torch.float32)
                    tensors["normalize.std"] = torch.tensor(norm["std"], dtype=torch.float32)
                return tensors, "compressed"
            return {k: f.get_tensor(k) for k in f.keys()}, "safetensors"
    except CoreError:
        raise
    except Exception as err:
        raise _invalid(f"{path.name} is not a readable safetensors file ({type(err).__name__}: {err})") from err


def _unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """A state dict, or a training checkpoint holding one under 'state_dict' or 'model'."""
    if not isinstance(obj, dict):
        raise _invalid(f"expected a state dict, found {type(obj).__name__}")
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict):
            return inner
    return obj


def _check_zip(path: Path, max_bytes: int | None) -> None:
    """A torch zip checkpoint holds a ``data.pkl``; its members' declared sizes bound what reading it
    can allocate (zipfile and torch's reader both stop at the declared size), so they are checked first."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise _invalid(f"{path.name} is a damaged or truncated zip archive ({err})") from err
    if not any(info.filename == "data.pkl" or info.filename.endswith("/data.pkl") for info in infos):
        names = ", ".join(sorted(info.filename for info in infos)[:5]) or "nothing"
        raise _invalid(f"{path.name} is a zip archive but not a torch checkpoint (no data.pkl; it holds {names})")
    total = sum(info.file_size for info in infos)
    if max_bytes is not None and total > max_bytes:
        raise _invalid(
            f"{path.name} unpacks to {total} bytes, more than the {max_bytes} a checkpoint of this "
            "network can need; refused before reading"
        )


def precheck_weights_file(path: str | os.PathLike[str], fmt: str = "auto") -> str:
    """The checks of ``read_state_dict`` that need no network (cheap: headers only): the bytes are a
    weights format, agreeing with ``fmt``, and a safetensors header is sound. Returns the kind."""
    path = Path(path)
    if not path.is_file():
        raise CoreError("checkpoint_not_found", FIELD, f"no checkpoint file at {str(path)!r}")
    kind = sniff_format(path)
    if fmt == "safetensors" and kind != "safetensors":
        raise _invalid(f"{path.name} was declared safetensors but it is {_KIND_TEXT[kind]}; refused")
    if kind in ("empty", "unknown"):
        raise _invalid(
            f"{path.name} is {_KIND_TEXT[kind]}: expected safetensors, a torch state dict or a HYDRA checkpoint"
        )
    if kind == "safetensors":
        safetensors_header(path)
    return kind


def read_state_dict(
    path: str | os.PathLike[str], fmt: str = "auto", max_bytes: int | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a weights file and the format they were read as ("safetensors", "compressed",
    "state_dict" or "hydra"), keys as stored. Never unpickles code.

    The format is what the bytes are; ``fmt`` (the caller's declaration) must agree with it.
    ``max_bytes`` bounds what the file may make us allocate (checked from headers, before reading)."""
    path = Path(path)
    if not path.is_file():
        raise CoreError("checkpoint_not_found", FIELD, f"no checkpoint file at {str(path)!r}")
    if fmt not in ("auto", "safetensors", "state_dict", "hydra"):
        raise CoreError("invalid_checkpoint", "model.checkpoint_format", f"unknown format {fmt!r}")
    kind = sniff_format(path)
    if fmt == "safetensors" and kind != "safetensors":
        raise _invalid(f"{path.name} was declared safetensors but it is {_KIND_TEXT[kind]}; refused")
    if kind == "safetensors":
        if fmt in ("state_dict", "hydra"):
            raise _invalid(f"{path.name} was declared a torch {fmt} checkpoint but it is a safetensors file")
        return _read_safetensors(path, None if max_bytes is None else max_bytes // 2)
    if kind in ("empty", "unknown"):
        raise _invalid(
            f"{path.name} is {_KIND_TEXT[kind]}: expected safetensors, a torch state dict or a HYDRA checkpoint"
        )
    if kind == "zip":
        _check_zip(path, max_bytes)
    state = _unwrap_state_dict(_torch_load(path, FIELD))
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise _invalid(f"entries that are not tensors: {', '.join(map(repr, bad[:10]))}")
    if fmt == "auto":
        fmt = "hydra" if any(k.endswith(".popup_scores") for k in state) else "state_dict"
    return dict(state), fmt


def _rename(source: dict[str, torch.Tensor], target_keys: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Map checkpoint keys onto the model's: drop DDP's 'module.', HYDRA's popup_scores -> scores,
    and add or strip the NormalizedModel's 'net.' prefix, whichever matches the model best.
    Returns the renamed tensors and, for messages, each new key's name in the file."""
    renamed: dict[str, tuple[str, torch.Tensor]] = {}
    for original, value in source.items():
        key = original
        while key.startswith("module."):
            key = key[len("module.") :]
        if key.endswith(".popup_scores"):
            key = key[: -len(".popup_scores")] + ".scores"
        renamed[key] = (original, value)

    def add_net(k: str) -> str:
        return k if k.startswith(("net.", "normalize.")) else f"net.{k}"

    def strip_net(k: str) -> str:
        return k[len("net.") :] if k.startswith("net.") else k

    candidates = [{fix(k): v for k, v in renamed.items()} for fix in (str, add_net, strip_net)]
    best = max(candidates, key=lambda c: (len(target_keys & c.keys()), -len(c.keys() - target_keys)))
    return {k: v for k, (_, v) in best.items()}, {k: original for k, (original, _) in best.items()}


def _derived_keys(model: nn.Module, target: dict[str, torch.Tensor]) -> set[str]:
    """Target keys a starting network may omit: pruning state, BN counters and normalisation."""
    from core.pruning.masked import masked_layers

    optional = {k for k in target if k.endswith("num_batches_tracked") or k.split(".")[0] == "normalize"}
    for name, _layer in masked_layers(model):
        optional |= {f"{name}.scores", f"{name}.mask", f"{name}.keep"}
    return optional & target.keys()


def _whole(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    yield tensor


def _check(
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    optional: set[str],
    origin: dict[str, str],
    values: Callable[[str], Iterable[torch.Tensor]] | None = None,
) -> list[str]:
    """The problems of ``source`` against ``target``. ``values(key)`` yields the values of
    ``source[key]`` in pieces (default: the tensor whole), so a check can read them in chunks while
    ``source`` holds only shapes and dtypes (tensors on the ``meta`` device)."""
    pieces = values or (lambda key: _whole(source[key]))
    problems: list[str] = []
    unexpected = sorted(origin[k] for k in source.keys() - target.keys())
    if unexpected:
        hint = " (HYDRA scores need a masked model)" if any(k.endswith("scores") for k in unexpected) else ""
        problems.append(f"unexpected keys{hint}: {', '.join(unexpected)}")
    missing = sorted(target.keys() - source.keys() - optional)
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    for key in sorted(source.keys() & target.keys()):
        src, dst = source[key], target[key]
        if tuple(src.shape) != tuple(dst.shape):
            problems.append(f"{key}: shape {tuple(src.shape)} in the checkpoint, {tuple(dst.shape)} in the model")
            continue
        if (
            src.is_floating_point() != dst.is_floating_point()
            or src.is_complex()
            or src.dtype == torch.bool
            or (dst.is_floating_point() and src.dtype != dst.dtype)
        ):
            # float16 (or float64) where the network holds float32 is refused, not silently cast
            problems.append(f"{key}: dtype {src.dtype} in the checkpoint, {dst.dtype} in the model")
            continue
        if src.is_floating_point() and not all(bool(torch.isfinite(v).all()) for v in pieces(key)):
            problems.append(f"{key}: contains NaN or Inf")
        elif key.endswith(".mask") and not all(bool(((v == 0) | (v == 1)).all()) for v in pieces(key)):
            problems.append(f"{key}: a mask must hold only 0 and 1")
        elif key.endswith(".keep"):
            keep = float(next(iter(pieces(key))).reshape(()))  # the target's shape: one value
            if not 0.0 <= keep <= 1.0:
                problems.append(f"{key}: keep fraction {keep} is outside [0, 1]")
    return problems


def _state_bytes(target: dict[str, torch.Tensor]) -> int:
    """Generous bound on the bytes a checkpoint of this network can hold: weights, HYDRA scores and
    masks, an optimizer's moments, all in float64, plus 1 MiB of bookkeeping."""
    return 8 * 8 * sum(t.numel() for t in target.values()) + (1 << 20)


def check_weights(
    path: str | os.PathLike[str], model: nn.Module, fmt: str = "auto"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every check of ``load_weights`` (format, keys, shapes, dtypes, finiteness), copying nothing:
    ``model`` may live on the ``meta`` device. Returns the renamed tensors to load and
    ``{"format", "loaded", "derived"}``. Raises ``CoreError("invalid_checkpoint", ...)``."""
    target = model.state_dict()
    raw, detected = read_state_dict(path, fmt, max_bytes=_state_bytes(target))
    source, info = verify_tensors(raw, model)
    return source, {"format": detected, **info}


def verify_tensors(
    raw: dict[str, torch.Tensor], model: nn.Module, values: Callable[[str], Iterable[torch.Tensor]] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checks of ``check_weights`` on tensors already read, keys as stored; ``values(name)``
    yields a stored tensor's values in pieces when ``raw`` holds only shapes (``core.io.weights_check``).
    Returns the renamed tensors and ``{"loaded", "derived"}``."""
    target = model.state_dict()
    if not raw:
        raise _invalid("the checkpoint holds no tensors")
    source, origin = _rename(raw, set(target))
    optional = _derived_keys(model, target)
    by_key = None if values is None else (lambda key: values(origin[key]))
    problems = _check(source, target, optional, origin, by_key)
    if problems:
        shown = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise _invalid("; ".join(shown) + (f"; and {more} more problems" if more > 0 else ""))
    return source, {"loaded": sorted(source), "derived": sorted(target.keys() - source.keys())}


def load_weights(
    path: str | os.PathLike[str], model: nn.Module, fmt: str = "auto", keep: float | None = None
) -> dict[str, Any]:
    """Import a starting network into ``model`` (a ``create_model`` network, masked or not).

    ``fmt``: "auto" | "safetensors" | "state_dict" | "hydra". Keys may be those of the whole
    ``NormalizedModel`` or only its ``.net``, with or without DDP's ``module.``; HYDRA's
    ``popup_scores`` become ``scores``. Pruning state (scores, mask, keep), BN counters and the
    normalisation buffers may be absent; everything else must match in name and shape and be finite.
    Nothing is copied unless the whole file passes. When scores arrive without masks, or ``keep`` is
    given, the masks are recomputed from the scores (top ``keep`` fraction per layer).

    Returns ``{"format", "loaded", "derived"}``: the format read, the keys loaded and those left as they were.
    """
    from core.pruning.masked import check_keep_fraction, masked_layers, refresh_masks, set_keep_fraction

    if keep is not None:  # checked before anything is read or copied
        check_keep_fraction(keep)
        if not masked_layers(model):
            raise CoreError("not_masked", "pruning.k", "keep was given but the model has no masked layers")
    source, info = check_weights(path, model, fmt)
    target = model.state_dict()
    merged = {k: source.get(k, v) for k, v in target.items()}
    model.load_state_dict(merged, strict=True)
    has_scores = any(k.endswith(".scores") for k in source)
    has_masks = any(k.endswith(".mask") for k in source)
    if keep is not None:
        set_keep_fraction(model, keep)  # also recomputes every mask from the (new) scores
    elif has_scores and not has_masks:
        refresh_masks(model)
    return info


__all__ = [
    "load_weights",
    "check_weights",
    "read_state_dict",
    "sniff_format",
    "precheck_weights_file",
    "safetensors_header",
    "verify_tensors",
]
