"""Rewrites of a converted ONNX graph that keep its function but drop widths baked into constants.

PyTorch exports ``torch.flatten(x, 1)`` after a global pool as ``Reshape(x, [0, C])`` (the TorchScript
exporter folds the shape computation), which onnx2torch converts to ``OnnxReshape`` with the constant
``[0, C]``. That constant is the number of channels: once channel pruning removes some, the reshape
fails. A reshape whose constant target is ``[0 | -1 | batch, prod(input.shape[1:])]`` is a flatten, so
it is rewritten as ``torch.flatten(x, 1)``, which gives the same tensor at every width (and exports as
ONNX ``Flatten``). Decided on the shapes of one example forward (``torch.fx``'s ``ShapeProp``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx


def _constant(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The value of ``node`` when it reads a buffer or attribute of ``gm`` (an ONNX initializer)."""
    if node.op != "get_attr":
        return None
    value: Any = gm
    for part in str(node.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def flatten_constant_reshapes(gm: fx.GraphModule, example: torch.Tensor) -> list[str]:
    """Rewrite every flatten spelled as a constant-shape reshape (module doc) in place; returns the
    names of the rewritten nodes. ``example``: an input batch (of at least 2, so a baked-in batch
    size cannot pass for a free one)."""
    from onnx2torch.node_converters.reshape import OnnxReshape
    from torch.fx.passes.shape_prop import ShapeProp

    modes = {m: m.training for m in gm.modules()}
    gm.eval()  # a training-mode forward would move BatchNorm's running statistics
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception:  # noqa: BLE001 - a graph that cannot run this batch: the import's parity check says why
        return []
    finally:
        for module, training in modes.items():
            module.training = training
    rewritten = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), OnnxReshape):
            continue
        if len(node.args) != 2 or not isinstance(node.args[0], fx.Node) or not isinstance(node.args[1], fx.Node):
            continue
        source, shape_node = node.args
        shape = _constant(gm, shape_node)
        meta = source.meta.get("tensor_meta")
        if shape is None or meta is None or shape.dim() != 1 or shape.numel() != 2 or len(meta.shape) < 2:
            continue
        batch, width = (int(v) for v in shape.tolist())
        if batch not in (0, -1) or width != math.prod(meta.shape[1:]):
            continue
        with gm.graph.inserting_after(node):
            flat = gm.graph.call_function(torch.flatten, (source, 1))
        node.replace_all_uses_with(flat)
        gm.graph.erase_node(node)
        rewritten.append(str(node.target))
    if rewritten:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return rewritten


__all__ = ["flatten_constant_reshapes"]
