"""A job's network from ``model.onnx``: the imported graph as a :class:`NormalizedModel`, as the zoo's.

``load_onnx(path)`` reads a local ``.onnx`` file and imports it once per process (keyed by the file's
sha256: a run builds its network again per seed and for every reload of an export).
``create_onnx_model(source, **kwargs)`` returns a fresh copy wrapped with the input normalisation
(``model.kwargs``: normalization / mean / std; default ``none``, since an exported graph usually holds
its own preprocessing or expects already-normalised inputs). The model keeps a way to build another
fresh copy (``fresh_network``) so an export can be reloaded into the same graph, which no catalogue
name could rebuild. ``check_fits_dataset`` refuses a graph whose input shape or classes differ from
the data set's, naming ``model.onnx``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from core.errors import CoreError
from core.models.onnx_import import FIELD, MAX_BYTES, ImportedNetwork, import_onnx
from core.models.zoo import NormalizedModel, _normalize

_IMPORTED: dict[str, ImportedNetwork] = {}
_CACHE_ENTRIES = 4


class OnnxModel(NormalizedModel):
    """``net(normalize(x))`` with ``net`` converted from an ONNX graph; ``source`` describes the graph."""

    source: ImportedNetwork
    fresh_network: Callable[[], OnnxModel]


def load_onnx(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> ImportedNetwork:
    """Import the ``.onnx`` file at ``path`` (``core.models.onnx_import``); cached by content."""
    import hashlib

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CoreError("onnx_too_large", FIELD, f"{path.name} is {size} bytes; the limit is {max_bytes}")
        data = path.read_bytes()
    except OSError as err:
        raise CoreError("onnx_unreadable", FIELD, f"cannot read {path}: {err.strerror or err}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _IMPORTED:
        if len(_IMPORTED) >= _CACHE_ENTRIES:
            _IMPORTED.pop(next(iter(_IMPORTED)))
        _IMPORTED[digest] = import_onnx(data, max_bytes=max_bytes)
    return _IMPORTED[digest]


def create_onnx_model(source: ImportedNetwork, **kwargs: Any) -> OnnxModel:
    """A fresh copy of the imported network (trained weights included) with its input normalisation."""
    unknown = sorted(set(kwargs) - {"normalization", "mean", "std", "num_classes"})
    if unknown:
        raise CoreError(
            "invalid_model_kwargs", "model.kwargs", f"an ONNX network takes only normalization, mean, std: {unknown}"
        )
    classes = kwargs.pop("num_classes", None)
    if classes is not None and classes != source.num_classes:
        raise CoreError(
            "incompatible_architecture",
            FIELD,
            f"the graph gives {source.num_classes} outputs but the data set has {classes} classes",
        )
    norm = _normalize(
        kwargs.get("normalization") or "none", kwargs.get("mean"), kwargs.get("std"), source.input_shape[0]
    )
    model = OnnxModel(copy.deepcopy(source.module), norm)
    model.source = source
    model.fresh_network = lambda: create_onnx_model(source, **kwargs)  # a closure: deepcopy keeps it shared
    return model


def fresh_network_of(model: nn.Module) -> Callable[[], nn.Module] | None:
    """The builder of a fresh copy of an imported network (None for a catalogue network)."""
    build = getattr(model, "fresh_network", None)
    return build if callable(build) else None


def check_fits_dataset(source: ImportedNetwork, input_shape: Sequence[int] | None, num_classes: int | None) -> None:
    """Refuse (``model.onnx``) a graph whose input shape or classes differ from the data set's."""
    if input_shape is not None and tuple(int(s) for s in input_shape) != tuple(source.input_shape):
        raise CoreError(
            "incompatible_architecture",
            FIELD,
            f"the graph takes inputs {_fmt(source.input_shape)} but the data set has {_fmt(input_shape)}",
        )
    if num_classes is not None and int(num_classes) != source.num_classes:
        raise CoreError(
            "incompatible_architecture",
            FIELD,
            f"the graph gives {source.num_classes} outputs but the data set has {num_classes} classes",
        )


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)
