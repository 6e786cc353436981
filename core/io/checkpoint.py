"""Checkpoints: atomic saves and safe loads of the run's own state (users' weights: ``core.io.weights``).

* ``save_checkpoint`` writes a temp file in the target folder, fsyncs it and ``os.replace``s it, so a
  crash leaves either the old checkpoint or the new one, never half a file.
* ``load_checkpoint`` always uses ``torch.load(weights_only=True)``: the file may come from object
  storage written by another machine, and a full unpickle executes code. What we save is therefore
  restricted to what that loader accepts (tensors, numbers, strings, bytes, None, dicts, lists,
  tuples); ``save_checkpoint`` converts numpy values and refuses anything else *before* writing.
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

from core.errors import CoreError

FIELD = "model.checkpoint"
_PRIMITIVES = (bool, int, float, complex, str, bytes, type(None))


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
    def write(f: IO[bytes]) -> None:
        f.write(data)

    atomic_write(path, write)


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


def _why_torch_refused(err: Exception) -> str:
    """The line of a ``torch.load(weights_only=True)`` failure that names the problem (torch puts a
    generic paragraph about the ``weights_only`` default first)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return f"it references code ({line.rstrip('.')}); refused, nothing was executed"
        if line.startswith("Unsupported operand"):
            return f"a pickle the weights-only loader cannot read ({line}); refused, nothing was executed"
        if "legacy .tar format" in line:
            return (
                "it is in torch's legacy .tar format, which cannot be read without unpickling code; re-save it "
                "with torch.save (or as safetensors)"
            )
    first = lines[0] if lines else type(err).__name__
    return f"{type(err).__name__}: {first[:300]}"


def _torch_load(path: Path, field: str | None, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)``; ``mmap``: tensors stay in the (zip) file, read on use."""
    if not path.is_file():
        raise CoreError("checkpoint_not_found", field, f"no checkpoint file at {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # refused pickle payloads, corrupt zips, truncated files
        raise CoreError(
            "invalid_checkpoint",
            field,
            f"{path.name} is not a loadable weights-only torch file: {_why_torch_refused(err)}",
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
    words = np.asarray(keys).astype(np.int64)  # the legacy state: a (str, uint32 array, ...) tuple
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(words), int(pos), int(has_gauss), float(gauss)),
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


__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write",
    "atomic_write_bytes",
    "capture_rng_state",
    "restore_rng_state",
]
