"""The network as plain ``torch.nn`` source code, for a model card's "load it without this project".

A user who downloads ``<variant>.dense.safetensors`` (or the smaller ``.channel.safetensors``) should not
have to guess strides and paddings to rebuild the network. For a network that is an ``nn.Sequential``
of standard layers (the certified-training CNNs of the zoo, and any channel-rebuilt copy of them), the
``repr`` of every layer is its constructor call, so the whole definition can be written out as code.
The code is only offered after it was checked: it is executed in a fresh namespace (it is our own text,
built from our own module, never user input) and must accept the network's state dict strictly and give
the same logits. Anything else (residual networks, custom forwards) returns None: the card then points
to the ONNX graph, which needs no definition at all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Layers whose repr is a valid constructor call of ``torch.nn`` with every argument that shapes the
# weights or the computation (kernel, stride, padding, dilation, groups, bias, eps, ...).
_REPR_IS_CODE = (
    nn.Conv2d,
    nn.Linear,
    nn.ReLU,
    nn.Flatten,
    nn.BatchNorm2d,
    nn.BatchNorm1d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Identity,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
)

_HEADER = '''import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel: the network takes pixels in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std

'''


def _sequential_code(net: nn.Sequential) -> str | None:
    lines = []
    for layer in net:
        if type(layer) not in _REPR_IS_CODE:
            return None
        lines.append(f"    nn.{layer!r},")
    return "net = nn.Sequential(\n" + "\n".join(lines) + "\n)\n"


def torch_nn_source(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> dict[str, Any] | None:
    """``{"code", "mean", "std"}``: Python source defining ``net`` (the network without its input
    normalisation) and ``Normalize``, checked against ``model`` on inputs of ``input_shape`` (C, H, W);
    None when the network is not a plain ``nn.Sequential`` of standard layers (module docstring)."""
    net = getattr(model, "net", model)
    normalize = getattr(model, "normalize", None)
    if not isinstance(net, nn.Sequential):
        return None
    body = _sequential_code(net)
    if body is None:
        return None
    mean = normalize.mean.flatten().tolist() if normalize is not None else None
    std = normalize.std.flatten().tolist() if normalize is not None else None
    code = _HEADER + "\n" + body
    namespace: dict[str, Any] = {}
    try:
        exec(compile(code, "<plain torch.nn definition>", "exec"), namespace)  # our own text, see above
        rebuilt: nn.Module = namespace["net"]
        rebuilt.load_state_dict(net.state_dict(), strict=True)
    except (RuntimeError, SyntaxError, TypeError, ValueError, NameError):
        return None
    if not _same_logits(model, rebuilt, namespace["Normalize"], mean, std, tuple(input_shape)):
        return None
    return {"code": code, "mean": mean, "std": std}


@torch.no_grad()
def _same_logits(
    model: nn.Module, rebuilt: nn.Module, normalize_cls: Any, mean: Any, std: Any, input_shape: tuple[int, ...]
) -> bool:
    first = next(iter(model.parameters()), None)
    if first is None:
        return False
    was_training = model.training
    model.eval()
    rebuilt.eval()
    try:
        x = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(first.device)
        rebuilt = rebuilt.to(first.device)
        pre = normalize_cls(mean, std).to(first.device) if mean is not None else nn.Identity()
        return bool(torch.allclose(model(x), rebuilt(pre(x)), atol=1e-5, rtol=1e-4))
    except RuntimeError:
        return False
    finally:
        model.train(was_training)
