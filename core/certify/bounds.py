"""Sound bounds on the outputs of a feed-forward ReLU network over an l_inf ball: IBP and CROWN-IBP.

Why this module exists: ``auto_LiRPA`` (the reference implementation of CROWN-IBP) is 0.3 on PyPI and
pins ``torch<1.13``, so it cannot be installed beside our torch 2.14.1. The bounds the verifiable
objectives (CROWN-IBP, MixTrain) train with and certify with are therefore written here, for exactly
the layer types of the certified CNNs: ``Normalize`` (per-channel affine), ``Conv2d``, ``Linear``,
``ReLU``, ``Flatten`` and ``Identity`` (the masked subclasses included, through their
``effective_weight()`` = weight ⊙ mask). Anything else is refused by :func:`check_supported` with the
offending layer named, rather than bounded wrongly.

The input set is the l_inf ball of radius ``eps`` around ``x`` intersected with the pixel box [0, 1]
(``x_min``/``x_max``), in pixel space, before the model's own normalisation.

- **IBP** (Gowal et al. 2018; Mirman et al. 2018): intervals in centre/radius form; an affine map sends
  the centre through ``W`` and the radius through ``|W|``. With a specification matrix ``C`` the last
  linear layer is replaced by ``C @ W`` (Zhang et al. 2020, sec. 3), which is tighter than bounding
  the logits and then combining them.
- **CROWN-IBP** (Zhang et al. 2020): IBP gives every ReLU's pre-activation bounds ``[l, u]``; CROWN
  then propagates the specification ``C`` backward as a linear function of the input, relaxing each
  unstable ReLU (l < 0 < u) by the chord ``u/(u-l)·(h-l)`` above and ``α·h`` below, with the adaptive
  slope ``α = 1 if u > -l else 0``; convolutions are transposed with ``conv_transpose2d`` on the
  ``(batch · specs)`` rows, so the cost is about ``m`` forward passes for ``m`` specifications.

Soundness is in exact arithmetic; float32 rounding can move a bound by ~1e-6 relative, so
:func:`verified_counts` (the reported certificate) runs on a float64 copy of the network.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from core.config import OptionsModel
from core.errors import CoreError

SUPPORTED_LAYERS = "Normalize, Conv2d, Linear, ReLU, Flatten, Identity (and the masked Conv2d/Linear subclasses)"
BoundMethod = Literal["ibp", "crown_ibp"]
BOUND_METHODS: tuple[str, ...] = get_args(BoundMethod)
METHOD_DESCRIPTIONS = {
    "ibp": "IBP: interval bound propagation (Gowal et al. 2018), specification folded into the last linear layer",
    "crown_ibp": (
        "CROWN-IBP (Zhang et al. 2020): CROWN backward linear relaxation of the margin specification with "
        "IBP pre-activation bounds, adaptive ReLU lower slope"
    ),
}


class BoundOptions(OptionsModel):
    """The IBP/CROWN-IBP bound certificate (core.certify.certificates.BoundCertificate), run for the
    objectives that train with bounds. Formerly bounds was the list of methods (still accepted:
    bounds: [ibp] is bounds: {methods: [ibp]}) and the batch the flat field bound_batch_size."""

    flat_prefix: ClassVar[str] = "bound_"
    shorthand: ClassVar[str | None] = "methods"

    methods: list[BoundMethod] = Field(
        default_factory=lambda: list(BOUND_METHODS),  # type: ignore[arg-type]
        description="Bounds whose verified accuracy is reported (ibp, crown_ibp).",
    )
    batch_size: int = Field(64, ge=1, le=100_000, description="Samples per batch of the IBP/CROWN bounds.")


@dataclass(frozen=True)
class _Op:
    kind: str  # "normalize" | "conv" | "linear" | "relu" | "flatten" | "identity"
    path: str
    module: nn.Module


def _is_normalize(module: nn.Module) -> bool:
    # Duck-typed so that this module does not import core.models.zoo: the contract is a module named
    # ``Normalize`` computing (x - mean) / std with per-channel ``mean`` and ``std`` buffers.
    return (
        type(module).__name__ == "Normalize"
        and isinstance(getattr(module, "mean", None), torch.Tensor)
        and isinstance(getattr(module, "std", None), torch.Tensor)
    )


def _unsupported(path: str, module: nn.Module, why: str = "") -> CoreError:
    where = path or "<model>"
    extra = f" ({why})" if why else ""
    return CoreError(
        "unsupported_layer",
        "model.arch",
        f"layer '{where}' of type {type(module).__name__} is not supported by the bound code{extra}; "
        f"supported: {SUPPORTED_LAYERS}",
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _walk(module: nn.Module, path: str) -> Iterable[_Op]:
    if _is_normalize(module):
        if bool((module.std == 0).any()):
            raise _unsupported(path, module, "a zero std")
        yield _Op("normalize", path, module)
    elif isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _walk(child, _join(path, name))
    elif isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise _unsupported(path, module, f"padding_mode={module.padding_mode!r}")
        if isinstance(module.padding, str) and module.padding != "valid":
            raise _unsupported(path, module, f"padding={module.padding!r}; give the padding as numbers")
        yield _Op("conv", path, module)
    elif isinstance(module, nn.Linear):
        yield _Op("linear", path, module)
    elif isinstance(module, nn.ReLU):
        yield _Op("relu", path, module)
    elif isinstance(module, nn.Flatten):
        if module.start_dim == 0:
            raise _unsupported(path, module, "start_dim=0 flattens the batch")
        yield _Op("flatten", path, module)
    elif isinstance(module, nn.Identity):
        yield _Op("identity", path, module)
    elif {n for n, _ in module.named_children()} == {"normalize", "net"}:
        # core.models.zoo.NormalizedModel: forward is net(normalize(x)).
        yield from _walk(module.normalize, _join(path, "normalize"))  # type: ignore[arg-type]
        yield from _walk(module.net, _join(path, "net"))  # type: ignore[arg-type]
    else:
        raise _unsupported_inside(module, path)


_LEAF_TYPES = (nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.Identity)


def _unsupported_inside(module: nn.Module, path: str) -> CoreError:
    """Name the first leaf layer the code cannot bound (e.g. ``net.features.1`` BatchNorm2d in a
    VGG); a container whose leaves are all supported is refused for its custom ``forward``."""
    for name, sub in module.named_modules():
        if not any(True for _ in sub.children()) and not isinstance(sub, _LEAF_TYPES) and not _is_normalize(sub):
            return _unsupported(_join(path, name), sub)
    if any(True for _ in module.children()):
        return _unsupported(path, module, "a custom forward: only nn.Sequential chains can be bounded")
    return _unsupported(path, module)


def _ops(model: nn.Module) -> list[_Op]:
    ops = list(_walk(model, ""))
    if not any(op.kind in ("linear", "conv") for op in ops):
        raise CoreError("unsupported_layer", "model.arch", "the model has no Conv2d or Linear layer to bound")
    return ops


def check_supported(model: nn.Module) -> None:
    """Raise ``CoreError("unsupported_layer", "model.arch", ...)`` naming the first layer (path and
    type) the bound code cannot handle; return ``None`` when every layer is supported."""
    _ops(model)


# ---------------------------------------------------------------- helpers
def _weight(module: nn.Module) -> torch.Tensor:
    eff = getattr(module, "effective_weight", None)
    return eff() if callable(eff) else module.weight  # type: ignore[return-value]


def _norm_params(module: nn.Module, feature_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = module.mean.reshape(-1), module.std.reshape(-1)  # type: ignore[union-attr]
    shape = (-1,) + (1,) * (feature_dims - 1)  # per channel: (C, 1, 1) for images, (F,) for vectors
    return mean.reshape(shape), std.reshape(shape)


def _input_box(x: torch.Tensor, eps: float, x_min: float, x_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    lo = (x - eps).clamp(min=x_min)
    hi = (x + eps).clamp(max=x_max)
    return lo, hi


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (eps >= 0 and eps < float("inf")):
        raise CoreError("invalid_eps", "eps", f"eps must be a finite number >= 0, got {eps}")
    return eps


def _check_spec(C: torch.Tensor | None, batch: int) -> None:
    if C is not None and (C.dim() != 3 or C.shape[0] != batch):
        raise CoreError(
            "invalid_spec", "C", f"the specification must be shaped (batch={batch}, m, classes), got {tuple(C.shape)}"
        )


def _conv_out_padding(module: nn.Conv2d, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    pad = (0, 0) if isinstance(module.padding, str) else module.padding
    pads = []
    for d in range(2):
        full = (out_hw[d] - 1) * module.stride[d] - 2 * pad[d] + module.dilation[d] * (module.kernel_size[d] - 1) + 1
        pads.append(in_hw[d] - full)
    return pads[0], pads[1]


# ---------------------------------------------------------------- IBP
def _ibp(
    ops: list[_Op],
    x: torch.Tensor,
    eps: float,
    C: torch.Tensor | None,
    x_min: float,
    x_max: float,
    keep_pre: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]], list[torch.Size], bool]:
    """Interval propagation. Returns the output bounds, the pre-activation bounds of each ReLU (by
    op index, when ``keep_pre``), every op's input shape and whether ``C`` was folded into the last
    layer.

    The interval is carried as ``s = κ(u + l)/2`` and ``d = κ(u - l)/2`` (scaled centre and radius,
    ``κ`` a power of two, exact in floating point): an affine map sends ``s`` through ``W`` with bias
    ``κb`` and ``d`` through ``|W|``; a ReLU, positively homogeneous, maps them to
    ``relu(s + d) ± relu(s - d)`` and doubles ``κ`` — no halving of big tensors anywhere. Images are kept
    channels-last (faster convolutions on CPU). Without autograd the ReLU step works in place."""
    lo, hi = _input_box(x, eps, x_min, x_max)
    if x.dim() == 4:
        lo, hi = lo.contiguous(memory_format=torch.channels_last), hi.contiguous(memory_format=torch.channels_last)
    s, d = hi + lo, hi - lo
    kappa = 2.0
    inplace = not torch.is_grad_enabled()
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    shapes: list[torch.Size] = []
    last = len(ops) - 1
    folded = False
    for i, op in enumerate(ops):
        shapes.append(s.shape)
        m = op.module
        if op.kind == "relu":
            if keep_pre:
                pre[i] = ((s - d) / kappa, (s + d) / kappa)
            if inplace:  # s and d were created by this function: nobody else holds them
                low = (s - d).clamp_(min=0)
                s.add_(d).clamp_(min=0)
                torch.sub(s, low, out=d)
                s.add_(low)
            else:
                up, low = (s + d).clamp(min=0), (s - d).clamp(min=0)
                s, d = up + low, up - low
            kappa *= 2.0
        elif op.kind == "linear":
            W, b = _weight(m), m.bias
            if i == last and C is not None and s.dim() == 2:
                folded = True
                CW = torch.matmul(C, W)  # (B, m, in): the specification folded into the layer
                s = torch.bmm(CW, s.unsqueeze(-1)).squeeze(-1)
                if b is not None:
                    s = s + kappa * torch.matmul(C, b)
                d = torch.bmm(CW.abs(), d.unsqueeze(-1)).squeeze(-1)
                continue
            s, d = F.linear(s, W, None if b is None else kappa * b), F.linear(d, W.abs())
        elif op.kind == "conv":
            W, b = _weight(m), m.bias
            args = (m.stride, m.padding, m.dilation, m.groups)
            s, d = F.conv2d(s, W, None if b is None else kappa * b, *args), F.conv2d(d, W.abs(), None, *args)
        elif op.kind == "normalize":
            mean, std = _norm_params(m, s.dim() - 1)
            s, d = (s - kappa * mean) / std, d / std.abs()
        elif op.kind == "flatten":
            s, d = m(s), m(d)
    if C is not None and not folded:
        if s.dim() != 2:
            raise CoreError(
                "unsupported_layer", "model.arch", f"the model's output is {s.dim()}-D, expected logits (B, K)"
            )
        s, d = torch.einsum("bmk,bk->bm", C, s), torch.einsum("bmk,bk->bm", C.abs(), d)
    return (s - d) / kappa, (s + d) / kappa, pre, shapes, folded


def ibp_bounds(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    C: torch.Tensor | None = None,
    x_min: float = 0.0,
    x_max: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper IBP bounds of the logits (B, K), or of ``C @ logits`` (B, m) when a
    specification ``C`` (B, m, K) is given, over ``{x' : |x' - x|_inf <= eps} ∩ [x_min, x_max]``.
    Differentiable in the weights (the training losses use it)."""
    eps = _check_eps(eps)
    _check_spec(C, x.shape[0])
    ops = _ops(model)
    lower, upper, _, _, _ = _ibp(ops, x, eps, None if C is None else C.to(x.dtype), x_min, x_max, keep_pre=False)
    return lower, upper


# ---------------------------------------------------------------- CROWN (backward) with IBP intermediates
def _crown_backward(
    ops: list[_Op],
    x: torch.Tensor,
    eps: float,
    C: torch.Tensor,
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
    shapes: list[torch.Size],
    x_min: float,
    x_max: float,
) -> torch.Tensor:
    B, m = C.shape[0], C.shape[1]
    inplace = not torch.is_grad_enabled()  # then A is always a tensor made here, never C itself
    A = C.clone() if inplace else C  # (B, m, *features of the current layer's output)
    bias = C.new_zeros(B, m)

    def total(t: torch.Tensor) -> torch.Tensor:  # sum over the feature dims, whatever the layout
        return t.sum(dim=tuple(range(2, t.dim())))

    for i in range(len(ops) - 1, -1, -1):
        op, mod = ops[i], ops[i].module
        in_shape = shapes[i]
        if op.kind == "linear":
            W, b = _weight(mod), mod.bias
            if b is not None:
                bias = bias + total(torch.matmul(A, b).unsqueeze(-1))  # A @ b, summed over any extra dims
            A = torch.matmul(A, W)
        elif op.kind == "conv":
            W, b = _weight(mod), mod.bias
            cout, ho, wo = A.shape[2:]
            if b is not None:
                bias = bias + torch.matmul(A.sum(dim=(-1, -2)), b)
            out_pad = _conv_out_padding(mod, (in_shape[2], in_shape[3]), (ho, wo))
            pad = (0, 0) if isinstance(mod.padding, str) else mod.padding
            # channels-last: CPU transposed convolutions are several times faster in that layout
            rows = A.reshape(B * m, cout, ho, wo).contiguous(memory_format=torch.channels_last)
            A = F.conv_transpose2d(rows, W, None, mod.stride, pad, out_pad, mod.groups, mod.dilation)
            A = A.reshape(B, m, *in_shape[1:])
        elif op.kind == "relu":
            l, u = pre[i]
            l, u = l.unsqueeze(1), u.unsqueeze(1)
            active = l >= 0
            unstable = (l < 0) & (u > 0)
            chord = u / (u - l).clamp(min=1e-12)  # only used where unstable, so never divides by ~0
            up_slope = torch.where(unstable, chord, active.to(A.dtype))
            up_bias = torch.where(unstable, -chord * l, torch.zeros_like(chord))
            low_slope = (active | (unstable & (u > -l))).to(A.dtype)  # CROWN-IBP's adaptive lower slope
            # lower bound of A·relu(h): the lower relaxation where A >= 0, the upper (chord) where A < 0
            if inplace:  # fresh big tensors cost page faults on CPU: reuse A's storage
                A_neg = A.clamp(max=0)
                A = A.clamp_(min=0).mul_(low_slope).addcmul_(A_neg, up_slope)
                bias = bias + total(A_neg.mul_(up_bias))
            else:
                bias = bias + total(A.clamp(max=0) * up_bias)
                A = torch.addcmul(A * up_slope, A.clamp(min=0), low_slope - up_slope)
        elif op.kind == "normalize":
            mean, std = _norm_params(mod, len(in_shape) - 1)
            A = A / std
            bias = bias - total(A * mean)
        elif op.kind == "flatten":
            A = A.reshape(B, m, *in_shape[1:])
    lo, hi = _input_box(x, eps, x_min, x_max)
    centre, radius = ((hi + lo) / 2).unsqueeze(1), ((hi - lo) / 2).unsqueeze(1)
    return bias + total(A * centre) - total(A.abs() * radius)


def _identity_spec(model_out: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(model_out, dtype=like.dtype, device=like.device).expand(batch, model_out, model_out)


def _num_outputs(ops: list[_Op], model: nn.Module, x: torch.Tensor) -> int:
    if ops[-1].kind == "linear":
        return int(ops[-1].module.out_features)  # type: ignore[arg-type]
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def mixed_lower_bound(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    C: torch.Tensor,
    beta: float,
    x_min: float = 0.0,
    x_max: float = 1.0,
) -> torch.Tensor:
    """``beta · CROWN-IBP + (1 - beta) · IBP`` lower bound of ``C @ logits`` (B, m), the training
    bound of CROWN-IBP; the IBP pass is shared and CROWN is skipped when ``beta == 0``."""
    eps = _check_eps(eps)
    _check_spec(C, x.shape[0])
    ops = _ops(model)
    C = C.to(x.dtype)
    beta = float(beta)
    lower, _, pre, shapes, _ = _ibp(ops, x, eps, C, x_min, x_max, keep_pre=beta > 0)
    if beta <= 0:
        return lower
    crown = _crown_backward(ops, x, eps, C, pre, shapes, x_min, x_max)
    if beta >= 1:
        return crown
    return beta * crown + (1 - beta) * lower


def crown_ibp_bounds(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    C: torch.Tensor | None = None,
    x_min: float = 0.0,
    x_max: float = 1.0,
) -> torch.Tensor:
    """CROWN-IBP lower bound (B, m) of ``C @ logits`` over the l_inf ball ∩ [x_min, x_max]: IBP bounds
    every ReLU's input, then CROWN propagates ``C`` backward to the input. ``C=None`` bounds the
    logits themselves (identity specification)."""
    eps = _check_eps(eps)
    _check_spec(C, x.shape[0])
    ops = _ops(model)
    if C is None:
        C = _identity_spec(_num_outputs(ops, model, x), x.shape[0], x)
    C = C.to(x.dtype)
    _, _, pre, shapes, _ = _ibp(ops, x, eps, C, x_min, x_max, keep_pre=True)
    return _crown_backward(ops, x, eps, C, pre, shapes, x_min, x_max)


# ---------------------------------------------------------------- specifications and verification
def margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The margin specification (B, K-1, K): row ``i`` of example ``b`` is ``e_{y_b} - e_j`` for the
    i-th class ``j != y_b`` in increasing order, so ``C @ logits`` are the margins ``z_y - z_j``."""
    if num_classes < 2:
        raise CoreError("invalid_spec", "num_classes", "a margin specification needs at least 2 classes")
    y = y.long()
    B = y.shape[0]
    eye = torch.eye(num_classes, device=y.device)
    others = torch.arange(num_classes, device=y.device).expand(B, num_classes)
    others = others[others != y.unsqueeze(1)].reshape(B, num_classes - 1)
    return eye[y].unsqueeze(1) - eye[others]


def pad_margins(margins: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Scatter (B, K-1) margin values of :func:`margin_spec`'s order into (B, K) with 0 at ``y``."""
    keep = torch.ones(margins.shape[0], num_classes, dtype=torch.bool, device=margins.device)
    keep[torch.arange(margins.shape[0], device=margins.device), y.long()] = False
    return margins.new_zeros(margins.shape[0], num_classes).masked_scatter(keep, margins)


def _batches(data, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
    else:
        yield from data


@torch.no_grad()
def verified_flags(
    model: nn.Module, data, eps: float, method: str = "ibp", batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of ``data`` (a tuple ``(x, y)`` of tensors or an iterable of ``(x, y)`` batches), on
    the CPU: verified (every margin lower bound > 0) and clean-correct.

    The certificate is computed on a float64 copy of the network: bounds carry no outward rounding,
    and in float64 the rounding error (~1e-13 relative) is far below any margin counted here, where in
    float32 (~1e-6) a margin at the boundary could be certified by rounding alone."""
    if method not in BOUND_METHODS:
        raise CoreError(
            "invalid_bound", "evaluation.bounds.methods", f"unknown bound {method!r}; choose one of {BOUND_METHODS}"
        )
    eps = _check_eps(eps)
    check_supported(model)
    was_training = model.training
    model.eval()
    exact = copy.deepcopy(model).double()
    verified: list[torch.Tensor] = [torch.zeros(0, dtype=torch.bool)]
    correct: list[torch.Tensor] = [torch.zeros(0, dtype=torch.bool)]
    try:
        for x, y in _batches(data, batch_size):
            dev = next(model.parameters()).device
            x, y = x.to(dev), y.to(dev)
            with torch.no_grad():
                logits = model(x)
                x = x.double()
                C = margin_spec(y, logits.shape[1]).to(x.dtype)
                if method == "ibp":
                    lower, _ = ibp_bounds(exact, x, eps, C)
                else:
                    lower = crown_ibp_bounds(exact, x, eps, C)
            verified.append((lower > 0).all(dim=1).cpu())
            correct.append((logits.argmax(1) == y).cpu())
    finally:
        model.train(was_training)
    return torch.cat(verified), torch.cat(correct)


def verified_counts(
    model: nn.Module, data, eps: float, method: str = "ibp", batch_size: int = 256
) -> tuple[int, int, int]:
    """(verified, clean-correct, total) over ``data``: :func:`verified_flags` counted."""
    verified, correct = verified_flags(model, data, eps, method, batch_size)
    return int(verified.sum()), int(correct.sum()), len(verified)


def verified_accuracy(model: nn.Module, data, eps: float, method: str = "ibp", batch_size: int = 256) -> float:
    """Fraction of examples whose margin lower bounds (``method`` = "ibp" or "crown_ibp") are all
    positive over the l_inf ball of radius ``eps`` ∩ [0, 1]: a sound lower bound on robust accuracy."""
    verified, _, total = verified_counts(model, data, eps, method, batch_size)
    return verified / max(1, total)


__all__ = [
    "BOUND_METHODS",
    "METHOD_DESCRIPTIONS",
    "SUPPORTED_LAYERS",
    "check_supported",
    "crown_ibp_bounds",
    "ibp_bounds",
    "margin_spec",
    "mixed_lower_bound",
    "pad_margins",
    "verified_accuracy",
    "verified_flags",
    "verified_counts",
]
