"""Masked layers: exact top-k counts, straight-through gradients, and a mask that changes only when
the scores do."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from core.errors import CoreError
from core.pruning import masked
from core.pruning.masked import (
    MaskedConv2d,
    MaskedLinear,
    convert_to_masked,
    init_scores,
    layer_sparsity,
    masked_layers,
    refresh_masks,
    set_keep_fraction,
    set_stage,
    shared_effective_weights,
)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 7),
        nn.ReLU(),
        nn.Linear(7, 3),
    )


def masked_net(seed: int = 0) -> nn.Module:
    return convert_to_masked(tiny_net(seed))


def test_convert_keeps_parameters_keys_and_outputs():
    plain = tiny_net()
    x = torch.rand(2, 3, 8, 8)
    plain.eval()
    ref = plain(x)
    w0 = plain[0].weight
    keys = set(plain.state_dict())
    net = convert_to_masked(plain)
    assert net[0].weight is w0  # same Parameter, no copy
    assert type(net[0]) is MaskedConv2d and type(net[6]) is MaskedLinear
    assert keys <= set(net.state_dict())
    assert [n for n, _ in masked_layers(net)] == ["0", "3", "6", "8"]
    assert torch.equal(net(x), ref)
    assert convert_to_masked(net) is net and [n for n, _ in masked_layers(net)] == ["0", "3", "6", "8"]


def test_dense_layer_uses_the_weight_itself():
    net = masked_net()
    for _, layer in masked_layers(net):
        assert layer.effective_weight() is layer.weight
        assert torch.all(layer.mask == 1) and float(layer.keep) == 1.0


@pytest.mark.parametrize("k", [1.0, 0.9, 0.5, 0.3333, 0.1, 0.05, 0.01, 1e-6])
def test_exact_count_kept_per_layer(k):
    net = masked_net()
    set_keep_fraction(net, k)
    sparsity = layer_sparsity(net)
    for name, layer in masked_layers(net):
        n = layer.weight.numel()
        expected = n - math.floor(round((1 - k) * n, 6))
        assert int(layer.mask.sum()) == expected, name
        assert sparsity[name]["n"] == n and sparsity[name]["nnz"] == expected
        assert sparsity[name]["sparsity"] == pytest.approx(1 - expected / n)


def test_known_counts():
    layer = convert_to_masked(nn.Linear(5, 2))  # n = 10
    for k, kept in [(0.9, 9), (0.1, 1), (0.5, 5), (0.25, 3), (0.01, 1), (1.0, 10)]:
        set_keep_fraction(layer, k)
        assert int(layer.mask.sum()) == kept, k


@pytest.mark.parametrize("k", [0, -0.1, 1.5, float("nan"), "abc"])
def test_k_outside_unit_interval_is_refused(k):
    with pytest.raises(CoreError) as err:
        set_keep_fraction(masked_net(), k)
    assert err.value.field == "pruning.k" and err.value.code == "invalid_k"


def test_scaled_init_mask_is_the_lwm_mask():
    net = masked_net()
    for _, layer in masked_layers(net):
        nn.init.normal_(layer.scores)  # scramble, then re-init
    init_scores(net, "scaled")
    set_keep_fraction(net, 0.2)
    for _, layer in masked_layers(net):
        w = layer.weight.detach().abs().flatten()
        n_kept = int(layer.mask.sum())
        lwm = torch.zeros_like(w)
        lwm[torch.topk(w, n_kept).indices] = 1
        assert torch.equal(layer.mask.flatten(), lwm)
        fan_in = layer.weight[0].numel()
        assert float(layer.scores.abs().max()) == pytest.approx(math.sqrt(6 / fan_in), rel=1e-6)


@pytest.mark.parametrize("method", ["kaiming_normal", "kaiming_uniform"])
def test_random_score_inits_and_unknown(method):
    net = masked_net()
    set_keep_fraction(net, 0.5)
    init_scores(net, method)
    for _, layer in masked_layers(net):
        n = layer.weight.numel()
        assert int(layer.mask.sum()) == n - math.floor(0.5 * n)
    with pytest.raises(CoreError):
        init_scores(net, "nope")


def test_prune_stage_gradients_reach_scores_only():
    net = masked_net()
    set_keep_fraction(net, 0.3)
    set_stage(net, "prune")
    x = torch.rand(4, 3, 8, 8)
    net(x).square().sum().backward()
    for name, p in net.named_parameters():
        if name.endswith("scores"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif name.startswith("1."):  # BatchNorm affine trains in prune unless freeze_bn
            assert p.grad is not None, name
        else:
            assert p.grad is None and not p.requires_grad, name
    set_stage(net, "prune", freeze_bn=True)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["0.scores", "3.scores", "6.scores", "8.scores"]


def test_score_gradient_is_straight_through():
    torch.manual_seed(1)
    layer = convert_to_masked(nn.Linear(6, 4))
    with torch.no_grad():
        layer.scores.mul_(torch.where(torch.rand_like(layer.scores) < 0.5, -1.0, 1.0))
    set_keep_fraction(layer, 0.5)
    set_stage(layer, "prune")
    x = torch.randn(3, 6)
    g_out = torch.randn(3, 4)
    (layer(x) * g_out).sum().backward()
    g_eff = g_out.T @ x  # dL/d(W ⊙ M)
    expected = g_eff * layer.weight.detach() * layer.scores.detach().sign()
    torch.testing.assert_close(layer.scores.grad, expected)
    # masked-out entries get a score gradient too: that is how they come back
    assert (layer.scores.grad[layer.mask == 0] != 0).any()


def test_finetune_gradients_reach_only_kept_weights():
    net = masked_net()
    set_keep_fraction(net, 0.3)
    set_stage(net, "finetune")
    net(torch.rand(4, 3, 8, 8)).square().sum().backward()
    for _, layer in masked_layers(net):
        assert layer.scores.grad is None and not layer.scores.requires_grad
        g = layer.weight.grad
        assert torch.all(g[layer.mask == 0] == 0)
        assert g[layer.mask == 1].abs().sum() > 0
    assert net[1].weight.grad is not None and net[0].bias.grad is not None


def test_pretrain_and_eval_stages():
    net = masked_net()
    set_stage(net, "pretrain")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if not n.endswith("scores")} and net.training
    set_stage(net, "eval")
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    with pytest.raises(CoreError):
        set_stage(net, "train")


def test_mask_changes_exactly_when_scores_change(monkeypatch):
    from core.robust.attacks import pgd

    net = masked_net()
    set_keep_fraction(net, 0.2)
    set_stage(net, "prune")
    calls = {"n": 0}
    original = masked._MaskedMixin.refresh_mask

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(masked._MaskedMixin, "refresh_mask", counting)
    layers = [layer for _, layer in masked_layers(net)]
    before = [(layer.mask.data_ptr(), layer.mask._version, layer.mask.clone()) for layer in layers]
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    net.eval()
    pgd(net, x, y, eps=8 / 255, step_size=2 / 255, steps=3)
    net.train()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert calls["n"] == 0  # neither forward nor attack steps touch the mask
    for layer, (ptr, version, m) in zip(layers, before):
        assert layer.mask.data_ptr() == ptr and layer.mask._version == version and torch.equal(layer.mask, m)

    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=100.0)
    opt.step()
    refresh_masks(net)
    assert calls["n"] == len(layers)
    assert any(not torch.equal(layer.mask, m) for layer, (_, _, m) in zip(layers, before))
    assert all(layer.mask.data_ptr() == ptr for layer, (ptr, _, _) in zip(layers, before))  # in place


@pytest.mark.parametrize("stage", ["prune", "finetune"])
def test_shared_effective_weights_is_exact_and_computed_once(stage, monkeypatch):
    from core.robust.attacks import pgd

    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])

    def step(net, shared: bool):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        with shared_effective_weights(net) if shared else nullcontext():
            net.eval()
            x_adv = pgd(net, x, y, eps=0.1, step_size=0.03, steps=3)
            net.train()
            loss = net(x).logsumexp(1).sum() + 2 * net(x_adv).logsumexp(1).sum()
        loss.backward()  # after the block: the shared product's graph is still whole
        return x_adv, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    ref_net, net = masked_net(), masked_net()
    for m in (ref_net, net):
        set_keep_fraction(m, 0.3)
        set_stage(m, stage)
    ref_adv, ref_grads = step(ref_net, shared=False)
    products = {"n": 0}
    original = masked._MaskedWeight.forward

    def counting(ctx, *args):
        products["n"] += 1
        return original(ctx, *args)

    monkeypatch.setattr(masked._MaskedWeight, "forward", staticmethod(counting))
    adv, grads = step(net, shared=True)
    assert products["n"] == len(masked_layers(net))  # one W ⊙ M per layer for the whole step
    torch.testing.assert_close(adv, ref_adv, rtol=0, atol=0)
    assert grads.keys() == ref_grads.keys() and any(
        n.endswith("scores" if stage == "prune" else "weight") for n in grads
    )
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name])


def test_shared_effective_weights_sees_in_place_changes():
    net = masked_net()
    set_keep_fraction(net, 0.3)
    set_stage(net, "finetune")
    layer = net[0]
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with shared_effective_weights(net):
        cached = layer.effective_weight()
        assert layer.effective_weight() is cached  # reused by every forward in the block
        (gx,) = torch.autograd.grad(net(x).sum(), x)  # input-only gradient: no parameter .grad
        assert gx.abs().sum() > 0 and all(p.grad is None for p in net.parameters())
        with torch.no_grad():  # an optimizer-style in-place update inside the block is seen
            layer.weight.add_(1.0)
        assert layer.effective_weight() is not cached
        torch.testing.assert_close(layer.effective_weight(), layer.weight * layer.mask)
        with torch.no_grad():  # so is a mask refresh
            layer.scores.copy_(torch.randn_like(layer.scores))
        refresh_masks(net)
        torch.testing.assert_close(layer.effective_weight(), layer.weight * layer.mask)
        set_stage(net, "eval")  # and a change of what trains
        assert not layer.effective_weight().requires_grad
        with shared_effective_weights(net):  # re-entrant
            pass
        assert layer._shared_weight is not None
    assert layer._shared_weight is None


def test_mask_selection_is_exact_on_large_layers():
    """Large layers select through a sampled threshold: same mask as a full topk, every k."""
    torch.manual_seed(0)
    layer = convert_to_masked(nn.Linear(1000, 600))  # 600k weights: the sampled path
    for k in (0.001, 0.01, 0.1, 0.45, 0.7, 0.99):
        set_keep_fraction(layer, k)
        n = layer.weight.numel()
        n_kept = n - math.floor(round((1 - k) * n, 6))
        want = torch.zeros(n)
        want[torch.topk(layer.scores.detach().abs().flatten(), n_kept).indices] = 1
        assert int(layer.mask.sum()) == n_kept
        assert torch.equal(layer.mask.flatten(), want), k
    with torch.no_grad():  # heavy ties: still exactly n_kept
        layer.scores.copy_(torch.randint(0, 3, layer.scores.shape).float())
    set_keep_fraction(layer, 0.01)
    assert int(layer.mask.sum()) == layer.weight.numel() - math.floor(round(0.99 * layer.weight.numel(), 6))
    assert torch.all(layer.scores.abs()[layer.mask == 1] >= layer.scores.abs()[layer.mask == 0].max())


def test_state_dict_round_trip_carries_mask_and_keep():
    net = masked_net(0)
    set_keep_fraction(net, 0.25)
    init_scores(net, "kaiming_normal")
    sd = net.state_dict()
    other = masked_net(1)
    other.load_state_dict(sd)
    x = torch.rand(2, 3, 8, 8)
    net.eval()
    other.eval()
    torch.testing.assert_close(other(x), net(x), rtol=0, atol=0)
    for (_, a), (_, b) in zip(masked_layers(net), masked_layers(other)):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.scores, b.scores)
        assert b.keep_fraction() == 0.25 and not b.is_dense()
        assert b.mask.dtype == b.weight.dtype and b.keep.dim() == 0


def _reference_kept(n: int, k: float) -> int:
    """inspire-group/hydra GetSubnet: ``j = int((1 - k) * n)`` smallest scores zeroed, float truncation."""
    return n - int((1 - k) * n)


@pytest.mark.parametrize(
    "n, k, kept",
    [
        (1000, 0.9, 900),
        (10, 0.9, 9),
        (1000, 0.7, 700),
        (1000, 0.05, 50),
        (1000, 0.01, 10),
        (100, 0.01, 1),
        (7, 0.5, 4),
        (3, 0.01, 1),
        (1, 0.01, 1),
        (4608, 0.1, 461),
        (1000, 1.0, 1000),
    ],
)
def test_kept_count_is_the_count_the_decimal_k_means(n, k, kept):
    assert masked.kept_count(n, k) == kept
    if (n, k) in ((1000, 0.9), (10, 0.9)):
        # the reference truncates the binary product (1 - 0.9) * 1000 = 99.99999999999997: one more kept
        assert _reference_kept(n, k) == kept + 1
    else:
        assert _reference_kept(n, k) == kept  # elsewhere both rules agree


def test_a_layer_of_1000_weights_at_k_09_keeps_900():
    layer = convert_to_masked(nn.Linear(100, 10))
    set_keep_fraction(layer, 0.9)
    assert int(layer.mask.sum()) == 900 and layer_sparsity(layer)[""]["nnz"] == 900
