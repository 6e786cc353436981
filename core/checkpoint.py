"""Checkpoints: atomic saves, safe loads, and importing a user's starting network.

* ``save_checkpoint`` writes a temp file in the target folder, fsyncs it and ``os.replace``s it, so a
  crash leaves either the old checkpoint or the new one, never half a file.
* ``load_checkpoint`` always uses ``torch.load(weights_only=True)``: the file may come from object
  storage written by another machine, and a full unpickle executes code. What we save is therefore
  restricted to what that loader accepts (tensors, numbers, strings, bytes, None, dicts, lists,
  tuples); ``save_checkpoint`` converts numpy values and refuses anything else *before* writing.
* ``load_weights`` imports safetensors, plain state dicts and the HYDRA reference format into a
  model from ``core.models.create_model``, after checking every key, shape and value: a bad file
  raises ``CoreError("invalid_checkpoint", "model.checkpoint", ...)`` and leaves the model untouched.
"""
from __future__ import annotations

import os
import random
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from core.errors import CoreError

FIELD = "model.checkpoint"
_PRIMITIVES = (bool, int, float, complex, str, bytes, type(None))
_MAX_LISTED_PROBLEMS = 25


# ----------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then move it over ``path``.

    On any failure the temp file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not every filesystem lets us open a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


# ----------------------------------------------------------------------------- checkpoints
def _weights_only_safe(obj: Any, where: str) -> Any:
    """Return ``obj`` in a form ``torch.load(weights_only=True)`` accepts, or raise TypeError."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, _PRIMITIVES):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint entry {where}: numpy array of dtype {obj.dtype} cannot be stored")
        return torch.from_numpy(np.array(obj, copy=True))
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise TypeError(f"checkpoint entry {where}: key {key!r} of type {type(key).__name__}")
            out[key] = _weights_only_safe(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):  # namedtuples and torch.Size become plain tuples
        items = [_weights_only_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}; only tensors, "
        "numbers, strings, bytes, None, dicts, lists and tuples load with weights_only=True"
    )


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Atomically write ``state`` (model/optimizer/scheduler state dicts, RNG states, stage, epoch,
    spec ...). Raises ``TypeError`` before touching the disk if something would not load back safely."""
    safe = _weights_only_safe(state, "state")
    atomic_write(path, lambda f: torch.save(safe, f))


def _torch_load(path: Path, field: str | None) -> Any:
    if not path.is_file():
        raise CoreError("checkpoint_not_found", field, f"no checkpoint file at {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # refused pickle payloads, corrupt zips, truncated files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CoreError(
            "invalid_checkpoint", field,
            f"{path.name} is not a loadable weights-only torch file ({type(err).__name__}: {first_line[:300]})",
        ) from err


def load_checkpoint(path: str | os.PathLike[str], field: str | None = None) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` onto the CPU, never unpickling code."""
    state = _torch_load(Path(path), field)
    if not isinstance(state, dict):
        raise CoreError("invalid_checkpoint", field, f"expected a dict, found {type(state).__name__}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, in a form that survives ``weights_only`` loading."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- importing weights
def _invalid(message: str) -> CoreError:
    return CoreError("invalid_checkpoint", FIELD, message)


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len < path.stat().st_size


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format", "").startswith("hydra-compressed"):
                from core.export import load_compressed

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


def read_state_dict(path: str | os.PathLike[str], fmt: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a weights file and the format they were read as ("safetensors", "compressed",
    "state_dict" or "hydra"), keys as stored. Never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CoreError("checkpoint_not_found", FIELD, f"no checkpoint file at {str(path)!r}")
    if fmt not in ("auto", "safetensors", "state_dict", "hydra"):
        raise CoreError("invalid_checkpoint", "model.checkpoint_format", f"unknown format {fmt!r}")
    if fmt == "safetensors" or (fmt == "auto" and _looks_like_safetensors(path)):
        return _read_safetensors(path)
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
            key = key[len("module."):]
        if key.endswith(".popup_scores"):
            key = key[: -len(".popup_scores")] + ".scores"
        renamed[key] = (original, value)

    def add_net(k: str) -> str:
        return k if k.startswith(("net.", "normalize.")) else f"net.{k}"

    def strip_net(k: str) -> str:
        return k[len("net."):] if k.startswith("net.") else k

    candidates = [{fix(k): v for k, v in renamed.items()} for fix in (str, add_net, strip_net)]
    best = max(candidates, key=lambda c: (len(target_keys & c.keys()), -len(c.keys() - target_keys)))
    return {k: v for k, (_, v) in best.items()}, {k: original for k, (original, _) in best.items()}


def _derived_keys(model: nn.Module, target: dict[str, torch.Tensor]) -> set[str]:
    """Target keys a starting network may omit: pruning state, BN counters and normalisation."""
    from core.masked import masked_layers

    optional = {k for k in target if k.endswith("num_batches_tracked") or k.split(".")[0] == "normalize"}
    for name, _layer in masked_layers(model):
        optional |= {f"{name}.scores", f"{name}.mask", f"{name}.keep"}
    return optional & target.keys()


def _check(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], optional: set[str],
           origin: dict[str, str]) -> list[str]:
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
        if src.is_floating_point() != dst.is_floating_point() or src.is_complex() or src.dtype == torch.bool:
            problems.append(f"{key}: dtype {src.dtype} in the checkpoint, {dst.dtype} in the model")
            continue
        if src.is_floating_point() and not bool(torch.isfinite(src).all()):
            problems.append(f"{key}: contains NaN or Inf")
        elif key.endswith(".mask") and not bool(((src == 0) | (src == 1)).all()):
            problems.append(f"{key}: a mask must hold only 0 and 1")
        elif key.endswith(".keep") and not 0.0 <= float(src) <= 1.0:
            problems.append(f"{key}: keep fraction {float(src)} is outside [0, 1]")
    return problems


def load_weights(path: str | os.PathLike[str], model: nn.Module, fmt: str = "auto",
                 keep: float | None = None) -> dict[str, Any]:
    """Import a starting network into ``model`` (a ``create_model`` network, masked or not).

    ``fmt``: "auto" | "safetensors" | "state_dict" | "hydra". Keys may be those of the whole
    ``NormalizedModel`` or only its ``.net``, with or without DDP's ``module.``; HYDRA's
    ``popup_scores`` become ``scores``. Pruning state (scores, mask, keep), BN counters and the
    normalisation buffers may be absent; everything else must match in name and shape and be finite.
    Nothing is copied unless the whole file passes. When scores arrive without masks, or ``keep`` is
    given, the masks are recomputed from the scores (top ``keep`` fraction per layer).

    Returns ``{"format", "loaded", "derived"}``: the format read, the keys loaded and those left as they were.
    """
    from core.masked import masked_layers, refresh_masks, set_keep_fraction

    if keep is not None:  # checked before anything is read or copied
        if not isinstance(keep, (int, float)) or not 0.0 < float(keep) <= 1.0:
            raise CoreError("invalid_k", "pruning.k", f"k (fraction of weights kept) must be in (0, 1], got {keep!r}")
        if not masked_layers(model):
            raise CoreError("not_masked", "pruning.k", "keep was given but the model has no masked layers")
    raw, detected = read_state_dict(path, fmt)
    if not raw:
        raise _invalid("the checkpoint holds no tensors")
    target = model.state_dict()
    source, origin = _rename(raw, set(target))
    optional = _derived_keys(model, target)
    problems = _check(source, target, optional, origin)
    if problems:
        shown = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise _invalid("; ".join(shown) + (f"; and {more} more problems" if more > 0 else ""))
    merged = {k: source.get(k, v) for k, v in target.items()}
    model.load_state_dict(merged, strict=True)
    has_scores = any(k.endswith(".scores") for k in source)
    has_masks = any(k.endswith(".mask") for k in source)
    if keep is not None:
        set_keep_fraction(model, keep)  # also recomputes every mask from the (new) scores
    elif has_scores and not has_masks:
        refresh_masks(model)
    return {"format": detected, "loaded": sorted(source), "derived": sorted(target.keys() - source.keys())}


__all__ = [
    "save_checkpoint", "load_checkpoint", "load_weights", "read_state_dict", "atomic_write",
    "atomic_write_bytes", "capture_rng_state", "restore_rng_state",
]
