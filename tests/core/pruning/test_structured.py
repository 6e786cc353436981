"""Channel granularity: whole filters masked, the straight-through gradient of the channel scores, and
the physical rebuild that gives the masked network's logits for a VGG, a ResNet and a WRN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from core.errors import CoreError
from core.models.zoo import VGG, Normalize, NormalizedModel, WideResNet, create_model
from core.pruning.masked import convert_to_masked, masked_layers, set_stage
from core.pruning.structured import ChannelPruning, check_channel_supported, rebuild_pruned


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics: a removed channel's BN constant must not leak into the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)


def small_vgg() -> nn.Module:
    return NormalizedModel(VGG([8, "M", 16, 16, "M", 24, "M"], 3, 10), Normalize([0.5] * 3, [0.25] * 3))


def small_wrn() -> nn.Module:
    return NormalizedModel(WideResNet(10, 2, 3, 10), Normalize([0.5] * 3, [0.25] * 3))


BUILDERS = {"vgg": small_vgg, "resnet18": lambda: create_model("resnet18"), "wrn": small_wrn}


def channel_pruned(build, k: float, seed: int = 0, init: str = "scaled"):
    torch.manual_seed(seed)
    model = convert_to_masked(build()).eval()
    randomise_norms(model, seed)
    x = torch.rand(2, 3, 32, 32)
    cp = ChannelPruning(model, x)
    cp.init_scores(model, init)
    cp.set_keep(k)
    cp.refresh(model)
    return model, cp, x


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("scores"))


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_rebuilt_network_gives_the_masked_logits(arch):
    k = 0.5 if arch == "resnet18" else 0.25
    model, cp, x = channel_pruned(BUILDERS[arch], k, init="kaiming_normal")
    torch.manual_seed(0)
    dense = convert_to_masked(BUILDERS[arch]()).eval()
    randomise_norms(dense, 0)
    xs = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        masked_logits = model(xs)
        assert not torch.allclose(masked_logits, dense(xs), atol=1e-3)  # the masks do change the network
    small, widths = rebuild_pruned(model, x)
    assert not any(isinstance(m, type(masked_layers(model)[0][1])) for m in small.modules())
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(xs), masked_logits, atol=1e-5, rtol=0)
    assert n_params(small) < n_params(model)
    counts = cp.channel_counts()
    for name, c in counts.items():
        assert widths[name] == c["kept"] < c["channels"]
    # the rebuilt layers are plain and their BatchNorms shrank with them
    for m in small.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean.numel() == m.num_features == m.weight.numel()


def test_masks_are_whole_filters_and_residual_partners_share_them():
    model, cp, _ = channel_pruned(BUILDERS["resnet18"], 0.25)
    layers = dict(masked_layers(model))
    for layer in layers.values():
        rows = layer.mask.flatten(1)
        kept_rows = rows.any(1)
        cols = layer.mask.transpose(0, 1).flatten(1).any(1)
        # every entry is on exactly when its filter and its input channel are kept
        expected = kept_rows[:, None] & cols[None, :]
        assert torch.equal(layer.mask.flatten(2).bool().all(2) if layer.mask.dim() > 2 else layer.mask.bool(), expected)
    net = model.net
    stream = [net.layer2[0].conv2, net.layer2[0].shortcut[0], net.layer2[1].conv2]
    rows = [m.mask.flatten(1).any(1) for m in stream]
    assert all(torch.equal(rows[0], r) for r in rows[1:])  # coupled by the residual adds
    assert int(rows[0].sum()) == 32  # 25% of 128
    assert torch.equal(net.layer3[0].conv1.mask.transpose(0, 1).flatten(1).any(1), rows[0])


def test_scaled_init_is_l1_filter_pruning():
    torch.manual_seed(3)
    model = convert_to_masked(small_vgg()).eval()
    x = torch.rand(1, 3, 32, 32)
    cp = ChannelPruning(model, x)
    cp.init_scores(model, "scaled")
    cp.set_keep(0.5)
    cp.refresh(model)
    conv = model.net.features[0]
    l1 = conv.weight.detach().abs().flatten(1).sum(1)
    expected = torch.zeros(8, dtype=torch.bool)
    expected[torch.topk(l1, 4).indices] = True
    assert torch.equal(conv.mask.flatten(1).any(1), expected)


def test_channel_score_gradient_is_the_straight_through_mask_gradient():
    """accumulate_grad equals autograd through continuous channel gates m_j (product rule), BN in train mode."""
    model, cp, _ = channel_pruned(small_vgg, 0.5)
    model.train()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    set_stage(model, "prune", freeze_bn=True)
    F.cross_entropy(model(x), y).backward()
    cp.accumulate_grad(model)
    ours = [s.grad.clone() for s in cp.scores]
    assert all(layer.scores.grad is None for _, layer in masked_layers(model))  # probes consumed

    set_stage(model, "eval")
    model.train()
    gates = [m.clone().requires_grad_(True) for m in cp._masks]
    overrides = {}
    for name, layer in masked_layers(model):
        w = layer.weight
        out_vec, in_vec = torch.ones(w.shape[0]), torch.ones(w.shape[1])
        for dim, base in ((0, out_vec), (1, in_vec)):
            vec = base
            for gi, pos, root in cp._plan.get(name, {0: [], 1: []})[dim]:
                vec = vec.index_put((pos,), gates[gi][root])
            if dim == 0:
                out_vec = vec
            else:
                in_vec = vec
        tail = (1,) * (w.dim() - 2)
        overrides[f"{name}.mask"] = (out_vec.view(-1, 1, *tail) * in_vec.view(1, -1, *tail)).expand_as(w)
    loss = F.cross_entropy(functional_call(model, overrides, (x,)), y)
    reference = torch.autograd.grad(loss, gates)
    for a, b in zip(ours, reference):
        assert torch.all(torch.isfinite(a))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert any(float(r.abs().max()) > 0 for r in reference)


def test_a_prune_step_changes_the_channel_scores_only():
    model, cp, _ = channel_pruned(small_vgg, 0.5)
    model.train()
    set_stage(model, "prune")
    opt = torch.optim.SGD(cp.optimizer_parameters(model), lr=0.5)
    probes = {id(layer.scores) for _, layer in masked_layers(model)}
    assert not any(id(p) in probes for p in cp.optimizer_parameters(model))
    before = [s.detach().clone() for s in cp.scores]
    weights = [layer.weight.detach().clone() for _, layer in masked_layers(model)]
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    cp.accumulate_grad(model)
    opt.step()
    cp.refresh(model)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, cp.scores))
    assert all(torch.equal(w, layer.weight) for w, (_, layer) in zip(weights, masked_layers(model)))
    counts = cp.finalize(model)
    assert all(c["kept"] == max(1, c["channels"] // 2) for c in counts.values())


def test_channel_state_resumes_to_the_same_masks():
    model, cp, x = channel_pruned(small_vgg, 0.5, init="kaiming_normal")
    masks = [layer.mask.clone() for _, layer in masked_layers(model)]
    fresh = convert_to_masked(small_vgg())
    fresh.load_state_dict(model.state_dict())
    again = ChannelPruning(fresh, x)
    again.load_state_dict(cp.state_dict())
    again.refresh(fresh)
    assert all(torch.equal(m, layer.mask) for m, (_, layer) in zip(masks, masked_layers(fresh)))
    assert again.channel_counts() == cp.channel_counts()


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.c(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.ln(self.a(x.flatten(1))))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.b = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.dw(torch.relu(self.a(x))))).mean((2, 3)))


@pytest.mark.parametrize("net,shape", [(Grouped, (1, 3, 8, 8)), (WithLayerNorm, (1, 6))])
def test_unsupported_architectures_are_refused_with_the_field(net, shape):
    with pytest.raises(CoreError) as err:
        check_channel_supported(net(), torch.rand(shape))
    assert err.value.field == "pruning.granularity"


@pytest.mark.parametrize("net", [Concat, Depthwise])
def test_concatenation_and_depthwise_convolutions_are_rebuilt_exactly(net):
    torch.manual_seed(0)
    model = convert_to_masked(net())
    x = torch.rand(2, 3, 8, 8)
    cp = ChannelPruning(model, x)
    cp.init_scores(model, "kaiming_normal")
    cp.set_keep(0.5)
    cp.refresh(model)
    small, widths = rebuild_pruned(model, x)  # verifies the logits against the masked network
    full = sum(p.numel() for p in net().parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.75 * full
    if net is Depthwise:  # its input channel is its output channel: one group from a through dw
        assert widths["dw"] == widths["a"] == 4 and small.dw.groups == 4


def test_supported_architecture_passes_the_check():
    check_channel_supported(create_model("cnn_small_mnist"), torch.rand(1, 1, 28, 28))
