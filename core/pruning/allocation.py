"""How a network-wide budget of kept weights is spread over the layers: uniform, global or learned.

``k`` is always the fraction of the network's prunable (conv/linear) weights kept; the target count is
``T = kept_count(N, k)`` over all ``N`` of them (the same rounding rule as one layer).

* ``uniform`` — HYDRA as published: every layer keeps ``kept_count(n_l, k)`` (``set_keep_fraction``).
* ``global`` — one top-k over the ``|scores|`` of all masked layers together: exactly ``T`` kept, the
  per-layer counts are whatever the scores imply (:func:`global_keep_counts`, :func:`apply_allocation`).
  In the prune stage it replaces ``refresh_masks`` after each optimizer step, so weights can move
  between layers as the scores train. ``min_per_layer`` (default 1) reserves each layer's best weight so
  that no layer is emptied (an empty conv turns the network into a constant).
* ``learned`` — HARP-style (Zhao & Wressnegger, "Holistic Adversarially Robust Pruning", ICLR 2023):
  a trainable keep rate per layer, trained jointly with the scores under the same robust objective,
  with a penalty that pulls the total kept fraction to the target (:class:`LearnedAllocation`).
  Implemented from the paper's description, not from its code (which has no licence); the parameter-
  isation, the surrogate gradient and the hyper-parameters below are ours.

Learned allocation — mechanism
------------------------------
* Rate ``r_l = sigmoid(ρ_l)`` per layer (``ρ`` trainable, started at ``logit(k)``: the uniform
  allocation). For small rates ``ρ ≈ log r``, so steps are relative changes of the layer's budget.
* Forward: the layer keeps the top ``kept_count(n_l, r_l)`` (at least 1) of its ``|S_l|`` — the ordinary
  HYDRA hard mask, refreshed once per optimizer step (:meth:`LearnedAllocation.refresh`).
* Backward to the rates, straight-through via a soft threshold in *rank* space: with ``u_i`` the
  normalised descending rank of ``|S_i|`` in its layer (``(rank + 0.5)/n``), the surrogate mask is
  ``m̃_i = sigmoid((log r − log u_i)/τ)`` and ``∂L/∂log r = Σ_i ∂L/∂M_i · σ'(z_i)/τ`` — a weighted
  sum of the mask gradients of the entries near the layer's threshold, whose weights sum to about
  ``n·r``: increasing the rate adds the next-ranked weights, and the loss changes by their mask
  gradient. ``∂L/∂M = scores.grad · sign(S)`` is read from HYDRA's own straight-through score gradient
  after ``backward`` (:meth:`LearnedAllocation.accumulate_grad`), so no extra forward is needed; only
  entries with ``|z| ≤ 6`` are visited (two selections and one sort of that band per layer).
* Penalty ``γ_t · (K/k − 1)²`` with ``K = Σ_l n_l r_l / N`` the network's kept fraction. HARP's
  dynamic regularisation favours the robust loss first and the budget later: ``γ_t`` is stepwise,
  ``γ · ratio^(steps − 1 − ⌊progress · steps⌋)`` (``set_progress``), i.e. ``γ/1000, γ/100, γ/10, γ`` over
  the four quarters of the prune stage by default. At a stationary point every layer's marginal mask
  gradient per weight is equal (the allocation trades weights between layers until no move helps).
* The rates train with their own Adam optimizer (:meth:`LearnedAllocation.step`; per-layer
  normalised steps keep the same stationary points and make the rate dynamics independent of the loss
  scale), so the pipeline's optimizer stays as it is.
* :meth:`LearnedAllocation.finalize` makes the budget exact: shift all ``ρ`` by one constant (bisection)
  so that ``Σ n_l r_l = T``, floor the counts (at least 1 per layer), hand the remaining units to the
  layers with the largest fractional parts (largest-remainder rounding): ``Σ kept_l = T`` exactly.

Hyper-parameters (defaults): ``tau = 0.05``, ``gamma = 10``, ``gamma_steps = 4``, ``gamma_ratio = 0.1``,
Adam ``lr = 0.01`` (logit units), ``betas = (0.9, 0.999)``, no weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.pruning.masked import _Workspace, check_keep_fraction, kept_count, masked_layers, set_keep_fraction

#: The vocabularies of ``pruning.allocation`` and ``pruning.granularity`` (the job spec's fields use these types).
Allocation = Literal["uniform", "global", "learned"]
Granularity = Literal["unstructured", "channel"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)


def _check_k(k: Any) -> float:
    return check_keep_fraction(k)


def _layers(model: nn.Module) -> list[tuple[str, Any]]:
    layers = masked_layers(model)
    if not layers:
        raise CoreError(
            "not_masked", "pruning.allocation", "the model has no masked layers; call convert_to_masked first"
        )
    return layers


def check_pruning_combination(method: str, allocation: str, granularity: str) -> None:
    """Refuse a combination no pruner serves, naming the field: unknown values here, then the method's
    own list (``core.pruning.methods.PruningMethod.pruners``): ``learned`` needs trained scores (HYDRA,
    not the one-shot LWM/L1 baselines); ``channel`` goes with the ``uniform`` allocation, or ``learned``
    under ``pruning.budget: macs`` (checked by the spec)."""
    if allocation not in ALLOCATIONS:
        raise CoreError(
            "invalid_allocation",
            "pruning.allocation",
            f"unknown allocation {allocation!r}; known: {', '.join(ALLOCATIONS)}",
        )
    if granularity not in GRANULARITIES:
        raise CoreError(
            "invalid_granularity",
            "pruning.granularity",
            f"unknown granularity {granularity!r}; known: {', '.join(GRANULARITIES)}",
        )
    from core.pruning.methods import pruner_class  # the methods build on this module

    pruner_class(method, allocation, granularity)


# ------------------------------------------------------------------ uniform and global
@torch.no_grad()
def global_keep_counts(model: nn.Module, k: float, *, min_per_layer: int = 1) -> dict[str, int]:
    """Per masked layer, how many weights one top-``T`` over all ``|scores|`` keeps (``T`` =
    ``kept_count(N, k)``); each layer's best ``min_per_layer`` are reserved first."""
    return {name: int(m.sum()) for name, m in _global_masks(model, _check_k(k), min_per_layer).items()}


def _global_masks(model: nn.Module, k: float, min_per_layer: int) -> dict[str, Tensor]:
    layers = _layers(model)
    sizes = [layer.scores.numel() for _, layer in layers]
    total = sum(sizes)
    target = kept_count(total, k)
    if min_per_layer * len(layers) > target:
        raise CoreError(
            "invalid_k",
            "pruning.k",
            f"k = {k} keeps {target} weights, fewer than {min_per_layer} in each of the {len(layers)} layers",
        )
    device = layers[0][1].scores.device
    keys = torch.cat([layer.scores.detach().abs().reshape(-1).to(device, torch.float32) for _, layer in layers])
    if min_per_layer > 0:
        offset = 0
        for (_, _layer), n in zip(layers, sizes):
            best = torch.topk(keys[offset : offset + n], min(min_per_layer, n), sorted=False).indices
            keys[offset + best] = math.inf
            offset += n
    if target >= total:
        flat = torch.ones(total, dtype=torch.bool, device=device)
    else:
        found = _threshold_mask(keys, target)
        if found is not None:
            flat = found
        else:  # ties at the threshold: an exact top-k decides among them
            flat = torch.zeros(total, dtype=torch.bool, device=device)
            flat[torch.topk(keys, target, sorted=False).indices] = True
    out, offset = {}, 0
    for (name, layer), n in zip(layers, sizes):
        out[name] = flat[offset : offset + n].view_as(layer.scores)
        offset += n
    return out


def _threshold_mask(keys: Tensor, target: int) -> Tensor | None:
    """``keys >= t`` with ``t`` the ``target``-th largest key (one selection, about twice as fast as
    ``topk`` on millions of scores); ``None`` when ties at ``t`` make that more than ``target``."""
    threshold = torch.kthvalue(keys, keys.numel() - target + 1).values
    mask = keys >= threshold
    return mask if int(mask.sum()) == target else None


def _set_count(layer: Any, count: int) -> None:
    """``keep`` such that ``kept_count(n, keep) == count`` (checked)."""
    n = layer.mask.numel()
    keep = count / n
    if kept_count(n, keep) != count:  # never seen; float rounding guard
        keep = math.nextafter(keep, 2.0) if kept_count(n, keep) < count else math.nextafter(keep, -1.0)
    assert kept_count(n, keep) == count, (n, count, keep)
    layer.keep.fill_(keep)


@torch.no_grad()
def apply_allocation(
    model: nn.Module, kind: str, target_k: float, *, min_per_layer: int = 1
) -> dict[str, dict[str, Any]]:
    """Set every masked layer's mask for allocation ``kind`` at the network budget ``target_k`` and
    return :func:`allocation_report`. ``uniform``: ``set_keep_fraction``; ``global``: one top-k over all
    ``|scores|`` (masks written directly, each layer's ``keep`` = its count / n, so a later per-layer
    ``refresh_mask`` would choose the same set). For ``learned`` use :class:`LearnedAllocation`."""
    k = _check_k(target_k)
    if kind == "uniform":
        set_keep_fraction(model, k)
    elif kind == "global":
        layers = dict(masked_layers(model))
        for name, mask in _global_masks(model, k, min_per_layer).items():
            layer = layers[name]
            layer.mask.copy_(mask)
            _set_count(layer, int(mask.sum()))
    elif kind == "learned":
        raise CoreError(
            "invalid_allocation",
            "pruning.allocation",
            "learned allocation trains its rates: use LearnedAllocation(model, k)",
        )
    else:
        raise CoreError(
            "invalid_allocation", "pruning.allocation", f"unknown allocation {kind!r}; known: {', '.join(ALLOCATIONS)}"
        )
    return allocation_report(model)


@torch.no_grad()
def allocation_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per masked layer: ``n`` weights, ``kept`` (ones in the mask) and ``rate`` = kept / n; plus the
    network ``total`` under the key ``"__total__"``."""
    out: dict[str, dict[str, Any]] = {}
    n_all = kept_all = 0
    for name, layer in _layers(model):
        n, kept = layer.mask.numel(), int(layer.mask.count_nonzero())
        out[name] = {"n": n, "kept": kept, "rate": kept / n}
        n_all, kept_all = n_all + n, kept_all + kept
    out["__total__"] = {"n": n_all, "kept": kept_all, "rate": kept_all / max(n_all, 1)}
    return out


# ------------------------------------------------------------------ learned (HARP-style)
@dataclass(frozen=True)
class RateTraining:
    """How learned keep rates train (module docstring; defaults there): the temperature ``tau`` of the
    soft rank threshold, the budget penalty's final weight ``gamma`` and its stepwise schedule
    (``gamma_steps``, ``gamma_ratio``), and the rates' Adam ``lr``. The per-layer rates
    (:class:`LearnedAllocation`) and the per-group channel rates (``core.pruning.channel_budget.ChannelRates``)
    train the same way."""

    tau: float = 0.05
    gamma: float = 10.0
    gamma_steps: int = 4
    gamma_ratio: float = 0.1
    lr: float = 0.01

    def gamma_at(self, fraction: float) -> float:
        """Stepwise γ: ``γ · ratio^(steps − 1 − ⌊fraction · steps⌋)`` (HARP's dynamic regularisation)."""
        step = min(self.gamma_steps - 1, max(0, int(math.floor(float(fraction) * self.gamma_steps))))
        return self.gamma * self.gamma_ratio ** (self.gamma_steps - 1 - step)


class LearnedAllocation(nn.Module):
    """Trainable per-layer keep rates (see the module docstring for the mechanism and defaults).

    Call sequence, prune stage (``model`` masked, HYDRA scores training as usual)::

        alloc = LearnedAllocation(model, k)            # rates start uniform at k
        alloc.refresh(model)                           # instead of set_keep_fraction / refresh_masks
        per step (progress = iteration / total):
            alloc.set_progress(progress)
            opt.zero_grad(); alloc.zero_grad()
            loss, logits = objective.loss(model, x, y)
            (loss + alloc.penalty(k)).backward()       # penalty: gradient to the rates directly
            alloc.accumulate_grad(model)               # task loss -> rates, from the scores' gradient
            opt.step(); alloc.step()
            alloc.refresh(model)                       # keep_l from r_l, masks from |scores|
        after the stage: alloc.finalize(model, k)      # exact global count; rates() for the report

    ``alloc.state_dict()`` (rates, gamma, the rate optimizer's state) belongs in the checkpoint.
    Finetune and evaluate need nothing: the masks stay as finalised.
    """

    def __init__(self, model: nn.Module, target_k: float, training: RateTraining | None = None) -> None:
        super().__init__()
        self.rate_training = training = training or RateTraining()
        k = _check_k(target_k)
        if k >= 1.0:
            raise CoreError("invalid_k", "pruning.k", "learned allocation needs k < 1")
        layers = _layers(model)
        self.names = [name for name, _ in layers]
        device = layers[0][1].scores.device
        self.register_buffer(
            "sizes", torch.tensor([l.scores.numel() for _, l in layers], dtype=torch.float64, device=device)
        )
        self.logits = nn.Parameter(torch.full((len(layers),), math.log(k / (1 - k)), device=device))
        self.register_buffer("gamma_now", torch.tensor(training.gamma_at(0.0), dtype=torch.float64))
        self.optimizer = torch.optim.Adam([self.logits], lr=training.lr)

    # -- rates and budget -----------------------------------------------------------------------
    def rates(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def kept_fraction(self) -> Tensor:
        """``Σ n_l r_l / N`` (differentiable in the rates)."""
        sizes = self.sizes.to(self.logits.dtype)
        return (self.rates() * sizes).sum() / sizes.sum()

    def set_progress(self, fraction: float) -> None:
        """The penalty weight at ``fraction`` of the prune stage (:meth:`RateTraining.gamma_at`)."""
        self.gamma_now.fill_(self.rate_training.gamma_at(fraction))

    def penalty(self, target_k: float) -> Tensor:
        """``γ_t · (K/k − 1)²``: pulls the network's kept fraction ``K`` to the target ``k``."""
        k = _check_k(target_k)
        return float(self.gamma_now) * (self.kept_fraction() / k - 1.0) ** 2

    # -- masks ----------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh(self, model: nn.Module) -> None:
        """Each layer's ``keep`` from its rate (at least one weight), then its mask from ``|scores|``."""
        workspace = _Workspace()
        rates = self.rates().detach().double().tolist()
        for (_name, layer), r in zip(self._aligned(model), rates):
            n = layer.mask.numel()
            layer.keep.fill_(min(1.0, max(r, 1.0 / n)))
            layer.refresh_mask(workspace)

    def _aligned(self, model: nn.Module) -> list[tuple[str, Any]]:
        layers = masked_layers(model)
        if [n for n, _ in layers] != self.names:
            raise CoreError("allocation_mismatch", "pruning.allocation", "the model's masked layers changed")
        return layers

    @torch.no_grad()
    def accumulate_grad(self, model: nn.Module) -> None:
        """Add the task loss's straight-through gradient to the rates (soft threshold in rank space),
        from the masked layers' ``scores.grad`` (call after ``backward``, before the optimizer steps)."""
        rates = self.rates().detach().double().tolist()
        grad = torch.zeros(len(rates), dtype=torch.float64)
        for i, ((_, layer), r) in enumerate(zip(self._aligned(model), rates)):
            g = layer.scores.grad
            if g is None:
                continue
            grad[i] = self._rate_grad(layer.scores.detach(), g, r) * (1.0 - r)
        grad = grad.to(self.logits.device, self.logits.dtype)
        self.logits.grad = grad if self.logits.grad is None else self.logits.grad.add_(grad)

    def _rate_grad(self, scores: Tensor, score_grad: Tensor, r: float) -> float:
        """``∂L/∂log r`` of one layer (see the module docstring)."""
        return rank_rate_grad(scores, score_grad, r, self.rate_training.tau)

    def step(self) -> None:
        """One Adam step of the rates (their own optimizer; see the module docstring)."""
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:  # type: ignore[override]
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # -- the exact final budget -----------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, model: nn.Module, target_k: float) -> dict[str, dict[str, Any]]:
        """Project the learned rates onto the exact budget ``T = kept_count(N, k)`` (module docstring),
        set every layer's keep and mask, store the final rates and return :meth:`rates_report`."""
        k = _check_k(target_k)
        layers = self._aligned(model)
        sizes = [layer.mask.numel() for _, layer in layers]
        total = sum(sizes)
        target = kept_count(total, k)
        if target < len(sizes):
            raise CoreError("invalid_k", "pruning.k", f"k = {k} keeps {target} weights, fewer than one per layer")
        counts = project_counts(self.logits.detach().double().cpu().tolist(), sizes, target)
        workspace = _Workspace()
        for (_, layer), count in zip(layers, counts):
            _set_count(layer, count)
            layer.refresh_mask(workspace)
        exact = torch.tensor([c / n for c, n in zip(counts, sizes)], dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        self.logits.copy_(torch.log(exact / (1 - exact)).to(self.logits.dtype))
        return self.rates_report(model)

    @torch.no_grad()
    def rates_report(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """Per layer: ``n``, learned ``rate`` and ``kept`` (ones in its mask), and ``"__total__"``."""
        out = allocation_report(model)
        for name, r in zip(self.names, self.rates().tolist()):
            out[name]["learned_rate"] = r
        return out

    # the rate optimizer's state travels in state_dict (resume continues the same Adam moments)
    def get_extra_state(self) -> dict[str, Any]:
        t = self.rate_training
        return {
            "optimizer": self.optimizer.state_dict(),
            "tau": t.tau,
            "gamma": t.gamma,
            "gamma_steps": t.gamma_steps,
            "gamma_ratio": t.gamma_ratio,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.rate_training = replace(
            self.rate_training,
            tau=float(state["tau"]),
            gamma=float(state["gamma"]),
            gamma_steps=int(state["gamma_steps"]),
            gamma_ratio=float(state["gamma_ratio"]),
        )


def project_counts(logits: list[float], sizes: list[int], target: int) -> list[int]:
    """Per-layer counts summing to exactly ``target`` (each in ``[1, n_l]``) closest to the rates
    ``sigmoid(logit_l + c)``, with ``c`` the common shift (bisection) that makes ``Σ n_l r_l = target``,
    then floor and largest-remainder rounding."""
    if not len(sizes) <= target <= sum(sizes):
        raise ValueError(f"target {target} outside [{len(sizes)}, {sum(sizes)}]")

    def expected(shift: float) -> float:
        return sum(n / (1.0 + math.exp(-max(-700.0, min(700.0, lg + shift)))) for lg, n in zip(logits, sizes))

    lo, hi = -60.0, 60.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if expected(mid) < target:
            lo = mid
        else:
            hi = mid
    shift = 0.5 * (lo + hi)
    ideal = [n / (1.0 + math.exp(-max(-700.0, min(700.0, lg + shift)))) for lg, n in zip(logits, sizes)]
    counts = [min(n, max(1, int(math.floor(x)))) for x, n in zip(ideal, sizes)]
    remainder = target - sum(counts)
    while remainder != 0:
        if remainder > 0:  # largest fractional parts first, only where there is room
            order = sorted((i for i in range(len(sizes)) if counts[i] < sizes[i]), key=lambda i: counts[i] - ideal[i])
        else:  # smallest fractional parts give back first, never below one
            order = sorted((i for i in range(len(sizes)) if counts[i] > 1), key=lambda i: ideal[i] - counts[i])
        for i in order[: abs(remainder)]:
            counts[i] += 1 if remainder > 0 else -1
        remainder = target - sum(counts)
    return counts


def rank_rate_grad(scores: Tensor, score_grad: Tensor, r: float, tau: float) -> float:
    """``∂L/∂log r`` of one budget unit (a layer's weights, or a channel group's channels) whose top
    ``r`` fraction by ``|scores|`` is kept: the soft threshold in rank space of the module docstring,
    from the straight-through ``score_grad`` (``∂L/∂M = score_grad · sign(scores)``)."""
    a = scores.abs().reshape(-1)
    n = a.numel()
    reach = 6.0 * tau
    lo = max(0, int(math.floor(n * r * math.exp(-reach))))
    hi = min(n, int(math.ceil(n * r * math.exp(reach))))
    if hi <= lo:
        return 0.0
    if hi <= n // 4:  # a small band near the top: one sorted partial selection
        band = torch.topk(a, hi, sorted=True).indices[lo:]
    else:  # values at descending ranks lo and hi-1 bound the band (kthvalue: ascending, 1-based)
        top = torch.kthvalue(a, n - lo).values
        bottom = torch.kthvalue(a, n - hi + 1).values
        band = ((a <= top) & (a >= bottom)).nonzero().view(-1)
        band = band[torch.argsort(a[band], descending=True)]
    ranks = lo + torch.arange(band.numel(), device=a.device, dtype=torch.float64)
    u = (ranks + 0.5) / n
    z = (math.log(r) - torch.log(u)) / tau
    s = torch.sigmoid(z)
    weight = s * (1 - s) / tau
    d_mask = (score_grad.reshape(-1)[band] * torch.sign(scores.reshape(-1)[band])).double()
    return float((d_mask * weight).sum())
