"""The channel-pruned network as a small dense safetensors file, and its one-call loader.

File (format ``hydra-channel-v1``): the rebuilt network's state dict (plain conv/linear/BatchNorm
tensors at their pruned shapes, keys of the full model, e.g. ``net.features.0.weight``, plus the
input normalisation ``normalize.mean/std``), and in the header metadata (JSON) the architecture name
and kwargs, the ``widths`` (output channels of every conv/linear) and the ``input_shape`` used to trace
it. Loading never unpickles::

    from core.io.export_channel import load_channel_pruned
    model = load_channel_pruned("hydra_k0.25.channel.safetensors")   # plain nn.Module, eval mode

The loader builds the architecture at full width with ``core.models.zoo.create_model``, shrinks it to the
stored widths with Torch-Pruning (each coupled group keeps its first ``w`` channels — the values do
not matter, they are loaded next) and loads the tensors with ``strict=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CoreError
from core.io.export import read_artifact

CHANNEL_FORMAT = "hydra-channel-v1"
FIELD = "model.checkpoint"
_MAX_SIDE = 4096


def _invalid(message: str) -> CoreError:
    return CoreError("invalid_checkpoint", FIELD, message)


def export_channel_pruned(
    small: nn.Module,
    widths: dict[str, int],
    path: str | os.PathLike[str],
    metadata: dict[str, Any],
    input_shape: list[int] | tuple[int, ...],
) -> dict[str, Any]:
    """Write the rebuilt network ``small`` (from :func:`core.pruning.structured.rebuild_pruned`) with its
    ``widths``; ``metadata`` must name ``arch`` (and ``kwargs``) for the loader. Atomic, byte-
    reproducible. Returns ``{"size", "sha256"}``."""
    from core.io.checkpoint import atomic_write_bytes
    from core.io.export import file_digest, safetensors_bytes

    if not isinstance(metadata.get("arch"), str):
        raise ValueError("metadata must name the architecture ('arch')")
    tensors = {k: v.detach().cpu().contiguous() for k, v in small.state_dict().items()}
    header = {
        "format": CHANNEL_FORMAT,
        "metadata": json.dumps(
            {**metadata, "kwargs": metadata.get("kwargs", {}) or {}}, sort_keys=True, allow_nan=False
        ),
        "widths": json.dumps(dict(sorted(widths.items())), separators=(",", ":")),
        "input_shape": json.dumps([int(s) for s in input_shape]),
    }
    atomic_write_bytes(path, safetensors_bytes(tensors, header))
    size, digest = file_digest(path)
    return {"size": size, "sha256": digest}


def read_channel_pruned(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, int], list[int]]:
    """``(tensors, metadata, widths, input_shape)`` of a channel artifact, validated."""
    path = Path(path)
    header, tensors = read_artifact(path, CHANNEL_FORMAT, "channel-pruned")
    try:
        metadata = json.loads(header.get("metadata", "{}"))
        widths = json.loads(header.get("widths", "{}"))
        input_shape = json.loads(header.get("input_shape", "[]"))
    except json.JSONDecodeError as err:
        raise _invalid(f"{path.name}: unreadable header ({err})") from err
    if (
        not isinstance(metadata, dict)
        or not isinstance(metadata.get("arch"), str)
        or not isinstance(metadata.get("kwargs", {}), dict)
    ):
        raise _invalid(f"{path.name}: the metadata names no architecture ('arch', 'kwargs')")
    if not isinstance(widths, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1 for k, v in widths.items()
    ):
        raise _invalid(f"{path.name}: malformed widths")
    if (
        not isinstance(input_shape, list)
        or not 1 <= len(input_shape) <= 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_SIDE for s in input_shape)
    ):
        raise _invalid(f"{path.name}: malformed input_shape {input_shape!r}")
    return tensors, metadata, widths, input_shape


def load_channel_pruned(path: str | os.PathLike[str], build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The channel-pruned network of a ``hydra-channel-v1`` file: plain layers, eval mode, the exact
    exported tensors (see the module docstring). ``build`` makes the full-width network for an
    architecture no catalogue name rebuilds (an imported ONNX graph: ``fresh_network``)."""
    from core.models.zoo import create_model
    from core.pruning.structured import apply_widths

    tensors, metadata, widths, input_shape = read_channel_pruned(path)
    model = build() if build is not None else create_model(metadata["arch"], **(metadata.get("kwargs") or {}))
    try:
        apply_widths(model, widths, torch.zeros(2, *input_shape))
    except CoreError as err:
        raise _invalid(f"the widths do not fit {metadata['arch']}: {err.message}") from err
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise _invalid(f"the artifact does not fit {metadata['arch']}: {err}") from err
    return model.eval()
