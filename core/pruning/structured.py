"""Channel (filter) granularity: HYDRA with one score per output channel, and the physical rebuild.

**Coupled channels.** A channel is not a property of one layer: the output channels of a conv, its
BatchNorm entries and the matching input channels of every consumer (the next conv, or the columns a
flatten maps it to in a linear layer) live and die together, and a residual add couples the channels of
every block that writes into the same stream. Torch-Pruning's ``DependencyGraph`` (traced once on a
plain copy of the network) gives exactly these *groups*; we never write graph surgery by hand. The
group whose channels reach the network output (the classifier) is never pruned.

**Scores and mask.** Every group has one score per channel (:class:`ChannelPruning`). The group keeps
its ``kept_count(n, k)`` channels of largest ``|score|`` (layer-wise ``k``, as HYDRA; at least one).
The mask is expressed through the existing masked layers: a layer's weight mask is the outer product
``out_mask[o] · in_mask[i]`` of the masks of the group its output channels belong to and the group its
input channels belong to (ones where a dimension is in no group: the image, the logits). Masking the
*consumers'* input slices is what makes the masked network equal to the rebuilt one: a removed channel's
BatchNorm still emits a constant ``beta - gamma·mean/std`` that would otherwise reach the next layer.

**Straight-through gradient.** HYDRA's masked layers already pass ``∂L/∂M = g ⊙ W ⊙ sign(S)`` to their
per-weight ``scores``. In channel mode those per-weight scores are a *probe* fixed at +1 (so the sign is
1) and the layers' ``keep`` is held just below 1 so the masked path always runs; after ``backward``,
:meth:`ChannelPruning.accumulate_grad` reduces the probe gradients to the group masks by the product
rule — ``∂L/∂m_j = Σ_{o→j} Σ_i ∂L/∂M[o,i]·in_mask[i] + Σ_{i→j} Σ_o ∂L/∂M[o,i]·out_mask[o]`` summed
over every member layer of the group — and passes it straight through to ``|score_j|`` (times
``sign(score_j)``), then clears the probes. (With BatchNorm in train mode the producer rows carry
almost no gradient — BN undoes a scaling of its input — the consumer columns carry the signal.)

**Score init** (``scaled``): per producing layer, the L1 norm of each filter times
``sqrt(6/fan_in) / max_filter_L1`` (docs/METHOD.md's scaled init at filter level); a group's score is the sum
over its producing layers. The first mask is therefore the **L1-norm filter pruning** baseline
(Li et al. 2017; the summed normalised norms for residual-coupled filters): the baseline is this init
followed straight by finetuning, as LWM is for unstructured pruning.

**Rebuild.** :func:`rebuild_pruned` copies the effective weights into plain layers and removes every
channel whose consumer slices are all zero (then it cannot influence anything), with Torch-Pruning's
group pruning (convs, BatchNorm entries, next layers' inputs, residual partners). It is exact: the
result gives the masked network's outputs up to float summation order, which it checks on the example
input. Residual additions, concatenations (Torch-Pruning maps a consumer's input offsets to the producing
group) and depthwise convolutions (``groups == in == out``: its input channel is its output channel, so it
is masked along its rows only) are handled; what it cannot handle (other grouped convs, attention, norms
other than BatchNorm, conv types other than Conv2d, a width baked into a constant) is refused with
``CoreError(field="pruning.granularity")`` naming the layer or node.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.pruning.masked import SCORE_INITS, MaskedConv2d, MaskedLinear, kept_count, layer_like, masked_layers

FIELD = "pruning.granularity"
# keep held just below 1 during channel pruning: ``is_dense()`` (keep >= 1) would skip the masked path
# and the probe gradient of a layer none of whose channels is pruned yet.
PROBE_KEEP = 1.0 - 2.0**-40
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_PLAIN = (nn.Conv2d, nn.Linear)


def _unsupported(message: str) -> CoreError:
    return CoreError("channel_unsupported", FIELD, message)


# ------------------------------------------------------------------ plain copies
@torch.no_grad()
def to_plain(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every masked layer replaced by a plain ``nn.Conv2d``/``nn.Linear``
    holding its effective weight ``W ⊙ M`` (same module names, no scores/mask/keep)."""
    out = copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, (MaskedConv2d, MaskedLinear)):
                continue
            new = layer_like(child, nn.Conv2d, nn.Linear, device=child.weight.device, dtype=child.weight.dtype)
            new.weight.copy_(child.effective_weight())
            if child.bias is not None:
                new.bias.copy_(child.bias)
            new.train(child.training)
            setattr(parent, name, new)
    return out


# ------------------------------------------------------------------ groups
@dataclass
class _Slice:
    """Positions ``pos`` along dim ``dim`` (0 = output, 1 = input channels) of layer ``layer`` and the
    group channel (``root``) each of them belongs to."""

    layer: str
    dim: int
    pos: Tensor
    root: Tensor


@dataclass
class ChannelGroup:
    """Channels that are pruned together: named by their root layer, ``size`` channels, the conv/linear
    slices that carry them and the names of their BatchNorm layers."""

    name: str
    size: int
    slices: list[_Slice] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)

    @property
    def producers(self) -> list[_Slice]:
        return [s for s in self.slices if s.dim == 0]

    @property
    def consumers(self) -> list[_Slice]:
        return [s for s in self.slices if s.dim == 1]


def _is_depthwise(module: nn.Module) -> bool:
    """One filter per channel (``groups == in == out``): its input and output channels are one channel."""
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1


def _check_modules(plain: nn.Module) -> None:
    for name, module in plain.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups != 1 and not _is_depthwise(module):
            raise _unsupported(
                f"channel pruning handles depthwise convolutions but not grouped ones ({name}, groups={module.groups})"
            )
        if isinstance(module, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            raise _unsupported(f"channel pruning handles Conv2d only, not {type(module).__name__} ({name})")
        if not isinstance(module, (*_PLAIN, *_NORMS)) and any(True for _ in module.parameters(recurse=False)):
            raise _unsupported(f"channel pruning cannot rebuild {type(module).__name__} layers ({name})")


def discover_groups(plain: nn.Module, example_input: Tensor) -> tuple[Any, list[ChannelGroup]]:
    """Trace ``plain`` (plain layers only) with Torch-Pruning and return ``(DependencyGraph, groups)``:
    every prunable channel group at the network's current widths (the output group excluded). Raises
    ``CoreError(field="pruning.granularity")`` for what the rebuild cannot handle."""
    import torch_pruning as tp

    _check_modules(plain)
    allowed = {
        tp.ops.OPTYPE.CONV,
        tp.ops.OPTYPE.LINEAR,
        tp.ops.OPTYPE.BN,
        tp.ops.OPTYPE.DEPTHWISE_CONV,
        tp.ops.OPTYPE.ELEMENTWISE,
        tp.ops.OPTYPE.RESHAPE,
        tp.ops.OPTYPE.CONCAT,  # offsets into the consumers' inputs: Torch-Pruning's idxs vs root_idxs
    }
    names = {m: n for n, m in plain.named_modules()}
    was_training = plain.training
    plain.eval()
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(plain, example_inputs=example_input, verbose=False)
    except CoreError:
        raise
    except Exception as err:  # tracing failures are the architecture's, not the user's input
        raise _unsupported(
            f"the network could not be traced for channel pruning ({type(err).__name__}: {err})"
        ) from err
    finally:
        plain.train(was_training)
    groups: list[ChannelGroup] = []
    for group in dg.get_all_groups(root_module_types=_PLAIN):
        items = list(group)
        reaches_output = False
        for item in items:
            node = item.dep.target
            if node.type == tp.ops.OPTYPE.OUTPUT:  # e.g. logits through a bias Add (an imported MatMul + Add)
                reaches_output = True
                continue
            if node.type not in allowed:
                raise _unsupported(
                    f"channel pruning cannot rebuild a network with {node.type.name.lower()} "
                    f"operations coupling channels ({node.name})"
                )
            if not dg.is_in_channel_pruning_fn(item.dep.handler) and not node.outputs:
                reaches_output = True
        if reaches_output:  # the classifier's outputs are the logits: never pruned
            continue
        root = items[0].dep.target.module
        cg = ChannelGroup(name=names[root], size=dg.get_out_channels(root))
        for item in items:
            module = item.dep.target.module
            if isinstance(module, _PLAIN):
                dim = 1 if dg.is_in_channel_pruning_fn(item.dep.handler) else 0
                if dim == 1 and _is_depthwise(module):
                    # its weight is (C, 1, k, k): an input channel is its output channel (same rows)
                    dim = 0
                    if any(s.layer == names[module] and s.dim == 0 for s in cg.slices):
                        continue
                if dim == 0 and _is_depthwise(module) and any(s.layer == names[module] for s in cg.slices):
                    continue
                cg.slices.append(
                    _Slice(
                        names[module],
                        dim,
                        torch.tensor(list(item.idxs), dtype=torch.long),
                        torch.tensor(list(item.root_idxs), dtype=torch.long),
                    )
                )
            elif isinstance(module, _NORMS) and names[module] not in cg.norms:
                cg.norms.append(names[module])
        groups.append(cg)
    if not groups:
        raise _unsupported("the network has no prunable channels")
    return dg, groups


def _slice_nonzero(weight: Tensor, s: _Slice, size: int) -> Tensor:
    """Per group channel: whether any entry of this slice of ``weight`` is nonzero."""
    other = tuple(d for d in range(weight.dim()) if d != s.dim)
    alive_pos = weight.detach().ne(0).any(dim=other) if other else weight.detach().ne(0)
    count = torch.zeros(size, dtype=torch.long, device=weight.device)
    count.index_add_(0, s.root.to(weight.device), alive_pos[s.pos.to(weight.device)].long())
    return count > 0


def _widths(net: nn.Module) -> dict[str, int]:
    return {
        name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for name, m in net.named_modules()
        if isinstance(m, _PLAIN)
    }


@torch.no_grad()
def rebuild_pruned(model: nn.Module, example_input: Tensor, *, verify: bool = True) -> tuple[nn.Module, dict[str, int]]:
    """The physically smaller network: plain ``nn.Conv2d``/``nn.Linear``/BatchNorm layers without the
    removed channels, and its widths ``{layer name: output channels}`` for every conv/linear.

    A channel is removed when all its consumer slices (the next layers' input channels) are zero in
    the effective weights — then it influences nothing, so removing it (with its filter, BatchNorm
    entries and residual partners, by Torch-Pruning) is exact. Dead sets are decided on the weights
    before any removal, so the result does not depend on the order of the groups. A group that would
    lose every channel keeps one (dead, so still exact). ``verify`` checks the outputs on
    ``example_input`` (eval mode) and raises ``CoreError`` on a mismatch. ``model`` is not modified.
    """
    plain = to_plain(model)
    dg, groups = discover_groups(plain, example_input)
    modules = dict(plain.named_modules())
    plans = []
    for g in groups:
        alive = torch.zeros(g.size, dtype=torch.bool)
        consumers = g.consumers
        if not consumers:
            continue
        for s in consumers:
            alive |= _slice_nonzero(modules[s.layer].weight, s, g.size).cpu()
        dead = (~alive).nonzero().view(-1).tolist()
        if len(dead) == g.size:
            dead = dead[1:]
        if dead:
            plans.append((modules[g.name], dead))
    for root, dead in plans:
        pruner = dg.get_pruner_of_module(root)
        group = dg.get_pruning_group(root, pruner.prune_out_channels, dead)
        group.prune(record_history=False)
    plain.train(model.training)
    if verify:
        _verify_same(model, plain, example_input)
    return plain, _widths(plain)


def _verify_same(reference: nn.Module, rebuilt: nn.Module, x: Tensor) -> None:
    modes = (reference.training, rebuilt.training)
    reference.eval(), rebuilt.eval()
    try:
        with torch.no_grad():
            a, b = reference(x), rebuilt(x)
    finally:
        reference.train(modes[0]), rebuilt.train(modes[1])
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
        diff = (a - b).abs().max().item() if a.shape == b.shape else float("nan")
        raise _unsupported(
            f"the rebuilt network does not reproduce the masked one (max |diff| {diff:.3g}); "
            "this architecture is not supported for channel pruning"
        )


@torch.no_grad()
def apply_widths(model: nn.Module, widths: dict[str, int], example_input: Tensor) -> nn.Module:
    """Shrink a full-width plain ``model`` in place to ``widths`` (as :func:`rebuild_pruned` reports):
    each group keeps its first ``widths[root]`` channels (the values are loaded afterwards). Raises
    ``CoreError`` when the widths do not fit the architecture."""
    dg, groups = discover_groups(model, example_input)
    modules = dict(model.named_modules())
    for g in groups:
        width = widths.get(g.name)
        if not isinstance(width, int) or not 1 <= width <= g.size:
            raise CoreError(
                "invalid_widths", "widths", f"no valid width for {g.name} (got {width!r}, {g.size} channels)"
            )
        if width < g.size:
            root = modules[g.name]
            pruner = dg.get_pruner_of_module(root)
            dg.get_pruning_group(root, pruner.prune_out_channels, list(range(width, g.size))).prune(
                record_history=False
            )
    got = _widths(model)
    if got != widths:
        bad = sorted(k for k in set(got) | set(widths) if got.get(k) != widths.get(k))
        raise CoreError("invalid_widths", "widths", f"the widths do not fit the architecture at {', '.join(bad[:5])}")
    return model


# ------------------------------------------------------------------ channel scores
class ChannelPruning(nn.Module):
    """Channel scores of every group of a masked network and the masks they choose (see module doc).

    Call sequence (prune stage; ``model`` is the masked network, ``cp`` built once per variant)::

        cp = ChannelPruning(model, example_input)        # traces the groups (Torch-Pruning)
        cp.init_scores(model, "scaled"); cp.set_keep(k); cp.refresh(model)
        set_stage(model, "prune")                         # per-weight scores = probes (require grad)
        opt = SGD(cp.optimizer_parameters(model), ...)    # channel scores + BatchNorm, not the probes
        per step:  opt.zero_grad(); loss.backward(); cp.accumulate_grad(model); opt.step(); cp.refresh(model)
        after:     cp.finalize(model)                     # exact keep fractions in the layers

    Never call ``core.pruning.masked.refresh_masks``/``set_keep_fraction``/``init_scores`` on a channel-pruned
    network: they would replace the channel masks by per-weight ones. ``cp.state_dict()`` (scores,
    keep) belongs in the checkpoint next to the model's; after ``load_state_dict`` call
    ``refresh(model)`` (it recomputes the same masks). Build it after ``model.to(device)``.
    """

    def __init__(self, model: nn.Module, example_input: Tensor) -> None:
        super().__init__()
        layers = dict(masked_layers(model))
        if not layers:
            raise CoreError("not_masked", FIELD, "the model has no masked layers; call convert_to_masked first")
        _, self.groups = discover_groups(to_plain(model), example_input)
        device = next(iter(layers.values())).weight.device
        self.scores = nn.ParameterList([nn.Parameter(torch.zeros(g.size, device=device)) for g in self.groups])
        self.register_buffer("keep", torch.ones((), dtype=torch.float64, device=device))
        # per layer: (group index, positions, roots) along its output and its input dimension
        self._plan: dict[str, dict[int, list[tuple[int, Tensor, Tensor]]]] = {}
        for gi, g in enumerate(self.groups):
            for s in g.slices:
                if s.layer not in layers:
                    raise _unsupported(f"{s.layer} is not a masked layer")
                self._plan.setdefault(s.layer, {0: [], 1: []})[s.dim].append((gi, s.pos.to(device), s.root.to(device)))
        self._masks: list[Tensor] = [torch.ones(g.size, device=device) for g in self.groups]
        # per-group kept channels when a budget other than "k of every group" sets them
        # (core.pruning.channel_budget); re-derived by the pruner, so not part of the state
        self.counts: list[int] | None = None
        self._vectors: dict[str, tuple[Tensor, Tensor]] = {}
        self._probe_key: dict[str, tuple[int, int]] = {}

    # -- scores ---------------------------------------------------------------------------------
    @torch.no_grad()
    def init_scores(self, model: nn.Module, method: str = "scaled") -> None:
        """``scaled``: summed normalised filter L1 norms (first mask = L1-norm filter pruning);
        ``kaiming_normal``/``kaiming_uniform``: random (ablation)."""
        if method not in SCORE_INITS:
            raise CoreError(
                "invalid_score_init",
                "pruning.score_init",
                f"unknown score initialisation {method!r}; known: {', '.join(SCORE_INITS)}",
            )
        layers = dict(masked_layers(model))
        for gi, g in enumerate(self.groups):
            score = self.scores[gi]
            if method == "kaiming_normal":
                score.copy_(torch.randn_like(score) * math.sqrt(2.0 / g.size))
                continue
            if method == "kaiming_uniform":
                score.copy_((torch.rand_like(score) * 2 - 1) * math.sqrt(6.0 / g.size))
                continue
            score.zero_()
            for s in g.producers:
                w = layers[s.layer].weight.detach()
                l1 = w.abs().flatten(1).sum(1)
                scale = math.sqrt(6.0 / max(w[0].numel(), 1)) / l1.max().clamp_min(torch.finfo(w.dtype).tiny)
                score.index_add_(0, s.root.to(score.device), (l1[s.pos.to(l1.device)] * scale).to(score.dtype))

    def set_keep(self, k: float) -> None:
        """Fraction of channels kept in every group (0 < k <= 1)."""
        from core.pruning.masked import check_keep_fraction

        self.keep.fill_(check_keep_fraction(k, kept="channels"))

    def set_counts(self, counts: list[int] | None) -> None:
        """Channels kept per group (each in ``[1, size]``), overriding ``keep``; None: back to ``keep``."""
        if counts is not None:
            if len(counts) != len(self.groups) or any(not 1 <= c <= g.size for c, g in zip(counts, self.groups)):
                raise ValueError(f"per-group counts {counts} do not fit the groups' sizes")
            counts = [int(c) for c in counts]
        self.counts = counts

    # -- masks ----------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh(self, model: nn.Module) -> None:
        """Recompute the group masks (top ``kept_count(n, k)`` channels by ``|score|``, at least one) and
        write every masked layer's weight mask; sets the probes. Once per optimizer step, never in forward."""
        k = float(self.keep)
        for gi, g in enumerate(self.groups):
            n_keep = self.counts[gi] if self.counts is not None else max(1, kept_count(g.size, k))
            mask = self._masks[gi]
            if n_keep >= g.size:
                mask.fill_(1.0)
            else:
                mask.zero_().index_fill_(
                    0, torch.topk(self.scores[gi].detach().abs(), n_keep, sorted=False).indices, 1.0
                )
        for name, layer in masked_layers(model):
            w = layer.weight
            out_vec = torch.ones(w.shape[0], device=w.device, dtype=w.dtype)
            in_vec = torch.ones(w.shape[1], device=w.device, dtype=w.dtype)
            plan = self._plan.get(name, {0: [], 1: []})
            for dim, vec in ((0, out_vec), (1, in_vec)):
                for gi, pos, root in plan[dim]:
                    vec[pos] = self._masks[gi][root].to(vec.dtype)
            self._vectors[name] = (out_vec, in_vec)
            shape = (-1, 1) + (1,) * (w.dim() - 2)
            layer.mask.copy_((out_vec.view(shape) * in_vec.view((1, -1) + (1,) * (w.dim() - 2))).expand_as(w))
            kept = float(out_vec.sum()) * float(in_vec.sum()) * (w[0, 0].numel() if w.dim() > 2 else 1)
            layer.keep.fill_(min(kept / w.numel(), PROBE_KEEP))
            key = (layer.scores.data_ptr(), layer.scores._version)
            if self._probe_key.get(name) != key:
                layer.scores.fill_(1.0)
                self._probe_key[name] = (layer.scores.data_ptr(), layer.scores._version)

    @torch.no_grad()
    def accumulate_grad(self, model: nn.Module) -> None:
        """After ``backward``: reduce the probes' gradients ``∂L/∂M`` to the group channels (product rule,
        every member layer), add them straight-through to the channel scores' ``.grad`` and clear the
        probes' gradients."""
        grads = [torch.zeros_like(s) for s in self.scores]
        for name, layer in masked_layers(model):
            g = layer.scores.grad
            if g is None:
                continue
            layer.scores.grad = None
            plan = self._plan.get(name)
            if plan is None:
                continue
            if name not in self._vectors:
                raise RuntimeError("ChannelPruning.accumulate_grad before refresh(model): the masks are unknown")
            out_vec, in_vec = self._vectors[name]
            per_pair = g.reshape(g.shape[0], g.shape[1], -1).sum(-1) if g.dim() > 2 else g
            red = {0: per_pair @ in_vec, 1: out_vec @ per_pair}
            for dim in (0, 1):
                for gi, pos, root in plan[dim]:
                    grads[gi].index_add_(0, root, red[dim][pos].to(grads[gi].dtype))
        for score, grad in zip(self.scores, grads):
            sign = torch.where(score.detach() < 0, -1.0, 1.0).to(grad.dtype)
            grad.mul_(sign)
            score.grad = grad if score.grad is None else score.grad.add_(grad)

    def optimizer_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """What trains in the channel prune stage: the channel scores and every parameter of ``model``
        that requires grad except the masked layers' probes (after ``set_stage(model, "prune")``: the
        BatchNorm affine parameters unless frozen)."""
        probes = {id(layer.scores) for _, layer in masked_layers(model)}
        return list(self.scores) + [p for p in model.parameters() if p.requires_grad and id(p) not in probes]

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> dict[str, dict[str, int]]:
        """Set every masked layer's ``keep`` to its exact kept fraction (1.0 where nothing is pruned) and
        return :meth:`channel_counts`. Call after the prune stage (or after ``refresh`` for L1-filter)."""
        for _, layer in masked_layers(model):
            layer.keep.fill_(float(layer.mask.sum(dtype=torch.float64)) / layer.mask.numel())
        return self.channel_counts()

    def channel_counts(self) -> dict[str, dict[str, int]]:
        """Per group (named by its root layer): ``channels`` and ``kept``."""
        return {g.name: {"channels": g.size, "kept": int(self._masks[gi].sum())} for gi, g in enumerate(self.groups)}


def check_channel_supported(model: nn.Module, example_input: Tensor, k: float = 0.5) -> None:
    """Refuse (``CoreError`` on ``pruning.granularity``) an architecture channel pruning cannot handle:
    traces its groups, masks random channels at ``k`` and checks the rebuilt network reproduces the
    masked one. Costs one trace and two forwards of ``example_input``; for submission-time checks.
    ``model`` may be plain or masked; it is not modified."""
    from core.pruning.masked import convert_to_masked

    probe = convert_to_masked(copy.deepcopy(model))
    cp = ChannelPruning(probe, example_input)
    cp.init_scores(probe, "kaiming_normal")
    cp.set_keep(k)
    cp.refresh(probe)
    try:
        rebuild_pruned(probe, example_input, verify=True)
    except CoreError:
        raise
    except Exception as err:  # the smaller network does not run: a width baked in somewhere
        node = _failing_node(rebuild_pruned(probe, example_input, verify=False)[0], example_input)
        where = f" at node {node}" if node else ""
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise _unsupported(f"the network with fewer channels fails{where} ({type(err).__name__}: {first})") from err


def _failing_node(net: nn.Module, x: Tensor) -> str | None:
    """The name of the ``torch.fx`` node (an imported ONNX graph's node) whose call raises on ``x``."""
    from torch import fx

    graphs = [m for m in net.modules() if isinstance(m, fx.GraphModule)]
    if not graphs:
        return None
    last: list[str] = []

    class Tracker(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            last.append(str(n.target) if n.op == "call_module" else n.name)
            return super().run_node(n)

    graph = graphs[0]
    original = graph.forward
    graph.forward = lambda *args: Tracker(graph).run(*args)  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            net.eval()(x)
    except Exception:  # noqa: BLE001 - the failure we are locating
        return last[-1] if last else None
    finally:
        graph.forward = original  # type: ignore[method-assign]
    return None
