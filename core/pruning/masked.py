"""Masked conv/linear layers: HYDRA's importance scores and the top-k mask they choose.

Every prunable weight ``W`` gets a score tensor ``S`` of the same shape; the layer computes with
``W ⊙ M`` where ``M`` keeps the ``n - floor((1 - k)·n)`` entries of largest ``|S|`` (layer-wise ``k``).
Unlike the reference code, the mask is a cached *buffer* recomputed only by :func:`refresh_masks`
(once per optimizer step of the prune stage): a mask only changes when the scores change, so sorting
scores in ``forward`` is pure waste. Backward is straight-through from ``M`` to ``|S|``:
``∂L/∂S = ∂L/∂(W⊙M) ⊙ W ⊙ sign(S)``.

``weight``/``bias`` keep the parent's names, so the state-dict keys of a plain network stay valid; the
extra state (``scores``, ``mask``, ``keep``) travels in ``state_dict`` too (``keep`` is float64 so the
kept count ``n - floor((1-k)·n)`` does not drift through float32 rounding of ``k``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import CoreError
from core.vocab import MODEL_MODES

STAGES = MODEL_MODES  # core.vocab
SCORE_INITS = ("scaled", "kaiming_normal", "kaiming_uniform")
_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


class _MaskedWeight(torch.autograd.Function):
    """``W ⊙ M`` with HYDRA's straight-through gradient to the scores.

    grad_W = g ⊙ M (only if W needs it), grad_S = g ⊙ W ⊙ sign(S) (only if S needs it); M gets none.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        need_w, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # Save only what the backward will read: finetuning never pins the scores.
        ctx.save_for_backward(weight if need_s else None, scores if need_s else None, mask if need_w else None)
        return weight * mask

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        weight, scores, mask = ctx.saved_tensors
        grad_w = grad * mask if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = grad * weight
            grad_s.mul_(scores.sign())
        return grad_w, grad_s, None


class _MaskedMixin:
    """Shared state and logic of :class:`MaskedConv2d` and :class:`MaskedLinear`."""

    weight: nn.Parameter
    scores: nn.Parameter
    mask: Tensor
    keep: Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # nn.Conv2d's / nn.Linear's (the class after the mixin)
        self._init_masked_state()

    def _init_masked_state(self) -> None:
        w = self.weight
        self.scores = nn.Parameter(torch.empty_like(w), requires_grad=False)
        module = cast(nn.Module, self)  # a mixin of nn.Conv2d / nn.Linear
        module.register_buffer("mask", torch.ones_like(w, requires_grad=False), persistent=True)
        module.register_buffer("keep", torch.ones((), dtype=torch.float64, device=w.device), persistent=True)
        self._keep_key: tuple | None = None
        self._keep_value = 1.0
        self._shared_depth = 0
        self._shared_key: tuple | None = None
        self._shared_weight: Tensor | None = None
        with torch.no_grad():
            self.scores.copy_(_scaled_scores(w))

    # -- k, read without a device sync on every forward -------------------------------------------
    def keep_fraction(self) -> float:
        key = (self.keep.data_ptr(), self.keep._version)
        if key != self._keep_key:
            self._keep_value = float(self.keep)
            self._keep_key = key
        return self._keep_value

    def is_dense(self) -> bool:
        return self.keep_fraction() >= 1.0

    # -- the weight used by forward ---------------------------------------------------------------
    def effective_weight(self) -> Tensor:
        """``weight ⊙ mask``; the weight itself when k == 1 (dense pretraining costs a plain layer)."""
        if self.is_dense():
            return self.weight
        if self._shared_depth > 0 and not torch.is_inference_mode_enabled():
            return self._shared_effective_weight()
        if not torch.is_grad_enabled() or not (self.weight.requires_grad or self.scores.requires_grad):
            return self.weight * self.mask
        return _MaskedWeight.apply(self.weight, self.scores, self.mask)

    def _shared_effective_weight(self) -> Tensor:
        # Inside shared_effective_weights(): one product serves every forward of the block (clean pass,
        # attack steps, the loss forwards). When weight or scores train it is built with its autograd
        # node even under no_grad, so the loss forwards reuse it and its backward runs once per step
        # with the gradients of all uses summed; input-only gradients (attack steps) never execute
        # that node. The key holds the tensors' storage and version counters and the requires_grad
        # flags, so any in-place change (optimizer step, refresh_masks, load_state_dict, .to(),
        # set_stage) makes a fresh product even inside the block.
        w, s, m = self.weight, self.scores, self.mask
        key = (
            w.data_ptr(),
            w._version,
            s.data_ptr(),
            s._version,
            m.data_ptr(),
            m._version,
            w.requires_grad,
            s.requires_grad,
            w.dtype,
            w.device,
        )
        if self._shared_weight is None or key != self._shared_key:
            if w.requires_grad or s.requires_grad:
                with torch.enable_grad():
                    self._shared_weight = _MaskedWeight.apply(w, s, m)
            else:
                with torch.no_grad():
                    self._shared_weight = w * m
            self._shared_key = key
        return self._shared_weight

    def _release_shared(self) -> None:
        self._shared_depth -= 1
        if self._shared_depth <= 0:
            self._shared_depth = 0
            self._shared_weight = None
            self._shared_key = None

    # -- mask -------------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_mask(self, workspace: _Workspace | None = None) -> None:
        """Recompute the mask in place from |scores|: keep exactly ``n - floor((1-k)·n)`` entries."""
        n = self.mask.numel()
        n_kept = kept_count(n, self.keep_fraction())
        flat = self.mask.view(-1)
        if n_kept >= n:
            flat.fill_(1.0)
            return
        workspace = workspace or _Workspace()
        mag = torch.abs(self.scores.detach().view(-1), out=workspace.get(n, self.scores.dtype, self.scores.device))
        if n_kept <= n - n_kept:  # select on the smaller side
            flat.zero_().index_fill_(0, _top_indices(mag, n_kept, workspace), 1.0)
        else:
            flat.fill_(1.0).index_fill_(0, _top_indices(mag.neg_(), n - n_kept, workspace), 0.0)

    def extra_repr(self) -> str:  # type: ignore[override]
        return f"{super().extra_repr()}, keep={self.keep_fraction():.4g}"  # type: ignore[misc]


class MaskedConv2d(_MaskedMixin, nn.Conv2d):
    """``nn.Conv2d`` that convolves with ``weight ⊙ mask`` (mask chosen by |scores|)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class MaskedLinear(_MaskedMixin, nn.Linear):
    """``nn.Linear`` that multiplies by ``weight ⊙ mask`` (mask chosen by |scores|)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def kept_count(n: int, k: float) -> int:
    """Entries kept out of ``n`` at keep fraction ``k``: ``n - floor((1-k)·n + 1e-6)``.

    This is the rule the reference means — zero the ``floor((1-k)·n)`` smallest scores, keep the rest
    (inspire-group/hydra ``GetSubnet``: ``j = int((1 - k) * n)``) — evaluated for the decimal ``k`` the
    user typed, i.e. ``round(k·n)`` whenever ``k·n`` is (within 1e-6 of) an integer. The reference
    truncates the *binary* float product instead, and ``1 - k`` is often a hair below its decimal
    value: at ``n = 1000, k = 0.9`` it computes ``(1 - 0.9)·1000 = 99.99999999999997``, zeros 99 and
    keeps 901, where we zero 100 and keep 900 (likewise ``n = 10, k = 0.9``: 9 kept here, 10 there).
    The epsilon only moves counts whose product lies within 1e-6 below an integer, so the two rules
    agree except at such rounding artefacts.
    """
    return n - int(math.floor((1.0 - k) * n + 1e-6))


_SAMPLE = 1 << 16


class _Workspace:
    """Scratch tensors reused across the layers of one ``refresh_masks`` call: a fresh multi-MB
    allocation per layer costs page faults comparable to the selection itself."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, Tensor] = {}

    def get(self, n: int, dtype: torch.dtype, device: torch.device, slot: int = 0) -> Tensor:
        key = (slot, dtype, device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self._buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]


def _top_indices(values: Tensor, count: int, workspace: _Workspace) -> Tensor:
    """Indices of the ``count`` largest entries of the 1-D ``values`` — exactly ``count`` of them.

    ``torch.topk`` over millions of scores costs more than the rest of a prune step's bookkeeping, so
    large layers first take a threshold from a sample (an order statistic a few standard
    deviations below the target rank), keep the candidates above it, and run ``topk`` on those only;
    if the sample misjudged and too few pass, it falls back to the full ``topk``.
    """
    n = values.numel()
    if n <= 4 * _SAMPLE:
        return torch.topk(values, count, sorted=False).indices
    # A strided sample (prefetch-friendly; a random gather costs more than the rest): it spans every
    # output channel of a conv/linear weight. Its quality only affects speed, never the result.
    sample = values[:: n // _SAMPLE][:_SAMPLE]
    q = count / n
    q_hi = min(1.0, q + 6.0 * math.sqrt(q * (1 - q) / _SAMPLE) + 8.0 / _SAMPLE)
    if q_hi >= 0.5:  # candidates would be most of the layer: no gain
        return torch.topk(values, count, sorted=False).indices
    rank = max(1, _SAMPLE - int(q_hi * _SAMPLE))  # kthvalue is 1-based, ascending
    threshold = torch.kthvalue(sample, rank).values
    above = torch.ge(values, threshold, out=workspace.get(n, torch.bool, values.device, slot=1))
    candidates = torch.nonzero(above).view(-1)
    if candidates.numel() < count:
        return torch.topk(values, count, sorted=False).indices
    return candidates[torch.topk(values[candidates], count, sorted=False).indices]


def _scaled_scores(weight: Tensor) -> Tensor:
    w = weight.detach()
    fan_in = w[0].numel() if w.dim() > 1 else w.numel()
    scale = math.sqrt(6.0 / max(fan_in, 1))
    return w * (scale / w.abs().max().clamp_min(torch.finfo(w.dtype).tiny))


# ------------------------------------------------------------------ conversion and model-wide ops
def layer_like(
    layer: nn.Module,
    conv: type[nn.Conv2d],
    linear: type[nn.Linear],
    device: torch.device | str,
    dtype: torch.dtype,
) -> nn.Module:
    """A new ``conv`` (when ``layer``, a conv or a linear layer, is a convolution) or ``linear`` with
    ``layer``'s hyper-parameters (shapes, stride, padding, groups, whether it has a bias), on ``device``:
    how a layer changes class, masked to plain or plain to masked."""
    if isinstance(layer, nn.Conv2d):
        return conv(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
            device=device,
            dtype=dtype,
        )
    return linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=device, dtype=dtype)


def _to_masked(layer: nn.Module) -> nn.Module:
    w = layer.weight
    new = layer_like(layer, MaskedConv2d, MaskedLinear, device="meta", dtype=w.dtype)
    # Built on "meta" (no wasted init of big layers), then given the real tensors.
    new.weight = layer.weight
    new.bias = layer.bias
    new.scores = nn.Parameter(_scaled_scores(w), requires_grad=False)
    new.mask = torch.ones_like(w, requires_grad=False)
    new.keep = torch.ones((), dtype=torch.float64, device=w.device)
    new._keep_key = None  # type: ignore[assignment]
    new.train(layer.training)
    return new


def convert_to_masked(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Conv2d``/``nn.Linear`` (exact type) in place by its masked subclass.

    Weights and biases are the same Parameter objects (no copy); k starts at 1 (mask all ones) and the
    scores at the scaled init. Idempotent: masked layers are left alone. Subclasses such as
    ``MultiheadAttention.out_proj`` are not converted (their owner reads ``.weight`` directly). Returns
    ``model`` (or the new layer when ``model`` itself is a bare conv/linear).
    """
    if type(model) in (nn.Conv2d, nn.Linear):
        return _to_masked(model)
    done: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Conv2d, nn.Linear):
                if id(child) not in done:  # a layer shared by two parents stays shared
                    done[id(child)] = _to_masked(child)
                setattr(parent, name, done[id(child)])
    return model


def masked_layers(model: nn.Module) -> list[tuple[str, MaskedConv2d | MaskedLinear]]:
    """``(qualified name, layer)`` for every masked layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (MaskedConv2d, MaskedLinear))]


def refresh_masks(model: nn.Module) -> None:
    """Recompute every mask from |scores|. Call once per optimizer step of the prune stage, never in
    forward: within a step (clean pass, attack steps, loss) the mask is constant."""
    workspace = _Workspace()
    for _, layer in masked_layers(model):
        layer.refresh_mask(workspace)


def check_keep_fraction(k: Any, kept: str = "weights") -> float:
    """``k`` as a float in (0, 1], or a ``CoreError`` naming ``pruning.k``: the one range check of a keep
    fraction (the spec, the weight loader and the channel pruner call it too)."""
    if isinstance(k, bool):
        raise CoreError("invalid_k", "pruning.k", f"k must be a number in (0, 1], got {k!r}")
    try:
        k = float(k)
    except (TypeError, ValueError):
        raise CoreError("invalid_k", "pruning.k", f"k must be a number in (0, 1], got {k!r}") from None
    if not (0.0 < k <= 1.0) or math.isnan(k):
        raise CoreError("invalid_k", "pruning.k", f"k (fraction of {kept} kept) must be in (0, 1], got {k}")
    return k


def set_keep_fraction(model: nn.Module, k: float) -> None:
    """Set the fraction kept ``k`` (0 < k <= 1) in every masked layer and refresh the masks."""
    k = check_keep_fraction(k)
    layers = masked_layers(model)
    if not layers:
        raise CoreError("not_masked", "pruning.k", "the model has no masked layers; call convert_to_masked first")
    workspace = _Workspace()
    for _, layer in layers:
        layer.keep.fill_(k)
        layer.refresh_mask(workspace)


@torch.no_grad()
def init_scores(model: nn.Module, method: str = "scaled") -> None:
    """Initialise the scores of every masked layer and refresh the masks.

    ``scaled`` (HYDRA): ``S = sqrt(6/fan_in) · W / max|W|`` per layer, so the first mask is exactly the
    least-weight-magnitude (LWM) mask. ``kaiming_normal``/``kaiming_uniform``: random scores (the
    paper's ablation; much worse).
    """
    if method not in SCORE_INITS:
        raise CoreError(
            "invalid_score_init",
            "pruning.score_init",
            f"unknown score initialisation {method!r}; known: {', '.join(SCORE_INITS)}",
        )
    workspace = _Workspace()
    for _, layer in masked_layers(model):
        if method == "scaled":
            layer.scores.copy_(_scaled_scores(layer.weight))
        elif method == "kaiming_normal":
            nn.init.kaiming_normal_(layer.scores)
        else:
            nn.init.kaiming_uniform_(layer.scores, a=math.sqrt(5))
        layer.refresh_mask(workspace)


def set_stage(model: nn.Module, stage: str, *, freeze_bn: bool = False) -> nn.Module:
    """Choose what trains, and the module mode, for a HYDRA stage.

    pretrain/finetune: conv/linear weights and biases, norm layers and any other parameter train;
    scores frozen. prune: only scores (and norm-layer affine unless ``freeze_bn``) train. eval:
    nothing trains, ``model.eval()``.
    """
    if stage not in STAGES:
        raise CoreError("invalid_stage", "stage", f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if stage == "eval":
                train = False
            elif isinstance(module, (MaskedConv2d, MaskedLinear)) and pname == "scores":
                train = stage == "prune"
            elif stage == "prune":
                train = isinstance(module, _NORM_LAYERS) and not freeze_bn
            else:
                train = True
            p.requires_grad_(train)
    model.train(stage != "eval")
    return model


@torch.no_grad()
def layer_sparsity(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per masked layer: ``n`` weights, ``nnz`` nonzeros of the effective weight, ``sparsity`` = 1 - nnz/n."""
    out: dict[str, dict[str, float]] = {}
    for name, layer in masked_layers(model):
        w = layer.effective_weight()
        n, nnz = w.numel(), int(torch.count_nonzero(w))
        out[name] = {"n": n, "nnz": nnz, "sparsity": 1.0 - nnz / n if n else 0.0}
    return out


@contextlib.contextmanager
def shared_effective_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Compute each masked layer's ``W ⊙ M`` once and reuse it for every forward inside the block.

    Within one training step mask and weights are constant, so the clean pass, the attack steps and
    the loss forwards can share one product: a 10-step attack costs what it costs on the dense network,
    and the mask's backward runs once per step. Gradients still reach weights/scores (summed over all
    uses) through one backward called inside or after the block (that backward frees the shared
    product's graph: a second training backward needs a second block, as in one block per step).
    Any in-place change of weight, scores or mask inside the block is seen (version-checked); the
    cache is dropped on exit. Re-entrant.
    """
    layers = [layer for _, layer in masked_layers(model)]
    for layer in layers:
        layer._shared_depth += 1
    try:
        yield model
    finally:
        for layer in layers:
            layer._release_shared()
