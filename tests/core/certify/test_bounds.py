"""IBP and CROWN-IBP bounds: closed-form answers on a linear layer, soundness against sampled and
PGD-found points on random masked networks, tightness, and refusal of layers the code cannot bound."""

import pytest
import torch
from torch import nn

from core.certify.bounds import (
    check_supported,
    crown_ibp_bounds,
    ibp_bounds,
    margin_spec,
    mixed_lower_bound,
    pad_margins,
    verified_accuracy,
    verified_counts,
)
from core.errors import CoreError
from core.models.zoo import create_model
from core.pruning.masked import convert_to_masked, init_scores, set_keep_fraction

CERTIFIED_CNNS = ["cnn_small_mnist", "cnn_large_mnist", "cnn_small_cifar", "cnn_large_cifar"]


def margins(model, x, C):
    return torch.einsum("bmk,bk->bm", C, model(x))


def box(x, eps):
    return (x - eps).clamp(min=0), (x + eps).clamp(max=1)


# ---------------------------------------------------------------- closed form on one linear layer
@pytest.mark.parametrize("masked", [False, True])
def test_single_linear_layer_bounds_equal_the_closed_form(masked):
    torch.manual_seed(0)
    layer = nn.Linear(6, 4).double()
    if masked:
        layer = convert_to_masked(layer)
        nn.init.normal_(layer.scores)
        layer.keep.fill_(0.5)
        layer.refresh_mask()
        assert int(layer.mask.sum()) == 12
    W = (layer.effective_weight() if masked else layer.weight).detach()
    b = layer.bias.detach()
    x = 0.3 + 0.4 * torch.rand(5, 6, dtype=torch.float64)  # away from the [0, 1] edges
    y = torch.tensor([0, 1, 2, 3, 1])
    eps = 0.05
    for C in (margin_spec(y, 4).double(), torch.randn(5, 3, 4, dtype=torch.float64)):
        CW = C @ W
        centre = torch.einsum("bmi,bi->bm", CW, x) + C @ b
        slack = eps * CW.abs().sum(-1)
        lower, upper = ibp_bounds(layer, x, eps, C)
        torch.testing.assert_close(lower, centre - slack, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(upper, centre + slack, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(crown_ibp_bounds(layer, x, eps, C), centre - slack, rtol=1e-12, atol=1e-12)
    lower, upper = ibp_bounds(layer, x, eps)  # no specification: bounds of the logits
    torch.testing.assert_close(lower, x @ W.T + b - eps * W.abs().sum(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(upper, x @ W.T + b + eps * W.abs().sum(1), rtol=1e-12, atol=1e-12)


def test_input_box_is_clipped_to_the_pixel_range():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[0.98, 0.01]])
    lower, upper = ibp_bounds(layer, x, 0.1)
    torch.testing.assert_close(lower, torch.tensor([[0.88 - 0.11]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(upper, torch.tensor([[1.0 - 0.0]]), rtol=0, atol=1e-6)


def test_margin_spec_rows_and_padding():
    C = margin_spec(torch.tensor([2, 0]), 3)
    expected = torch.tensor([[[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]], [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]])
    torch.testing.assert_close(C, expected)
    padded = pad_margins(torch.tensor([[5.0, 6.0], [7.0, 8.0]]), torch.tensor([2, 0]), 3)
    torch.testing.assert_close(padded, torch.tensor([[5.0, 6.0, 0.0], [0.0, 7.0, 8.0]]))


# ---------------------------------------------------------------- soundness on random masked networks
def small_masked_net(seed: int, keep: float) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )
    convert_to_masked(net)
    init_scores(net, "kaiming_normal")  # a random mask, not the magnitude one
    set_keep_fraction(net, keep)
    return net.eval()


def pgd_worst_margins(model, x, C, eps, steps=30):
    """Per-example smallest margin found by PGD on min_j (C @ logits)_j, with its starting point."""
    lo, hi = box(x, eps)
    best = margins(model, x, C).detach()
    adv = ((lo + hi) / 2).clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        m = margins(model, adv, C)
        (grad,) = torch.autograd.grad(m.min(1).values.sum(), adv)
        best = torch.minimum(best, m.detach())
        adv = torch.min(torch.max(adv.detach() - eps / 4 * grad.sign(), lo), hi)
    return torch.minimum(best, margins(model, adv, C).detach())


def sampled_worst_margins(model, x, C, eps, n=200):
    lo, hi = box(x, eps)
    worst = margins(model, x, C)
    for i in range(n):
        u = torch.rand_like(x)
        if i % 2:  # vertices of the box, where a piecewise-linear network's extremes often are
            u = u.round()
        worst = torch.minimum(worst, margins(model, lo + u * (hi - lo), C))
    return worst


def assert_sound(model, x, y, eps, num_classes):
    C = margin_spec(y, num_classes)
    with torch.no_grad():
        ibp_lower, ibp_upper = ibp_bounds(model, x, eps, C)
        crown_lower = crown_ibp_bounds(model, x, eps, C)
        found = sampled_worst_margins(model, x, C, eps)
    found = torch.minimum(found, pgd_worst_margins(model, x, C, eps))
    tol = 1e-5  # float32 rounding
    assert (found >= ibp_lower - tol).all(), (found - ibp_lower).min()
    assert (found >= crown_lower - tol).all(), (found - crown_lower).min()
    assert (margins(model, x, C) <= ibp_upper + tol).all()
    return ibp_lower, crown_lower, found


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("keep", [1.0, 0.5, 0.1])
def test_bounds_are_sound_on_random_masked_nets(seed, keep):
    model = small_masked_net(seed, keep)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(8, 1, 8, 8, generator=g)
    x[:2] = x[:2].round()  # some pixels on the edges of [0, 1]
    y = torch.randint(0, 5, (8,), generator=g)
    assert_sound(model, x, y, eps=0.05, num_classes=5)


def test_bounds_are_sound_on_masked_cnn_small_mnist():
    torch.manual_seed(0)
    model = convert_to_masked(create_model("cnn_small_mnist"))
    init_scores(model, "kaiming_normal")
    set_keep_fraction(model, 0.2)
    model.eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 7, 9])
    ibp_lower, crown_lower, found = assert_sound(model, x, y, eps=0.02, num_classes=10)
    assert (crown_lower <= found).all() and (ibp_lower <= crown_lower + 1e-4).float().mean() > 0.5


def test_crown_is_tighter_than_ibp_on_average():
    model = small_masked_net(3, 0.5)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(4))
    C = margin_spec(y, 5)
    with torch.no_grad():
        ibp_lower, _ = ibp_bounds(model, x, 0.05, C)
        crown_lower = crown_ibp_bounds(model, x, 0.05, C)
    assert (crown_lower - ibp_lower).mean() > 0
    assert (crown_lower >= ibp_lower - 1e-6).float().mean() >= 0.8


def test_mixed_bound_interpolates_crown_and_ibp():
    model = small_masked_net(0, 0.5)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    C = margin_spec(torch.arange(6) % 5, 5)
    ibp_lower, _ = ibp_bounds(model, x, 0.03, C)
    crown_lower = crown_ibp_bounds(model, x, 0.03, C)
    torch.testing.assert_close(mixed_lower_bound(model, x, 0.03, C, 0.0), ibp_lower, rtol=0, atol=0)
    torch.testing.assert_close(mixed_lower_bound(model, x, 0.03, C, 1.0), crown_lower, rtol=0, atol=0)
    torch.testing.assert_close(
        mixed_lower_bound(model, x, 0.03, C, 0.25), 0.25 * crown_lower + 0.75 * ibp_lower, rtol=1e-6, atol=1e-6
    )


def test_bounds_at_eps_zero_are_the_logits():
    model = small_masked_net(1, 0.5)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    C = margin_spec(torch.tensor([0, 1, 2, 3]), 5)
    exact = margins(model, x, C)
    torch.testing.assert_close(ibp_bounds(model, x, 0.0, C)[0], exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(crown_ibp_bounds(model, x, 0.0, C), exact, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- verified accuracy
def test_verified_accuracy_is_clean_accuracy_at_eps_zero_and_shrinks_with_eps():
    model = small_masked_net(2, 1.0)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the network gets right: clean accuracy 1
    y[:10] = (y[:10] + 1) % 5  # and 10 it gets wrong
    assert verified_accuracy(model, (x, y), 0.0, "ibp", batch_size=16) == pytest.approx(0.75)
    accs = [verified_accuracy(model, (x, y), eps, "crown_ibp", batch_size=16) for eps in (0.0, 0.01, 0.05, 0.3)]
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]
    loader = [(x[:20], y[:20]), (x[20:], y[20:])]
    assert verified_counts(model, loader, 0.01, "ibp")[2] == 40
    with pytest.raises(CoreError) as err:
        verified_accuracy(model, (x, y), 0.01, method="lp")
    assert err.value.code == "invalid_bound"


# ---------------------------------------------------------------- what is refused
@pytest.mark.parametrize("name", CERTIFIED_CNNS)
def test_certified_cnns_are_supported_dense_and_masked(name):
    model = create_model(name)
    check_supported(model)
    check_supported(convert_to_masked(model))


@pytest.mark.parametrize(
    "layer, type_name", [(nn.BatchNorm2d(4), "BatchNorm2d"), (nn.MaxPool2d(2), "MaxPool2d"), (nn.Tanh(), "Tanh")]
)
def test_unsupported_layers_are_refused_by_name(layer, type_name):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(CoreError) as err:
        check_supported(net)
    assert err.value.code == "unsupported_layer" and err.value.field == "model.arch"
    assert "'1'" in err.value.message and type_name in err.value.message
    with pytest.raises(CoreError):
        ibp_bounds(net, torch.rand(1, 1, 4, 4), 0.1)


def test_unsupported_layer_inside_a_normalized_model_is_named_by_path():
    model = create_model("cnn_small_mnist")
    model.net[1] = nn.BatchNorm2d(model.net[0].out_channels)
    with pytest.raises(CoreError) as err:
        check_supported(model)
    assert "net.1" in err.value.message and "BatchNorm2d" in err.value.message


def test_inference_path_equals_the_differentiable_path():
    model = small_masked_net(4, 0.5)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    C = margin_spec(torch.arange(6) % 5, 5)
    with_grad = ibp_bounds(model, x, 0.04, C)
    assert with_grad[0].requires_grad  # training differentiates through the bound
    with torch.inference_mode():  # the in-place path
        fast = ibp_bounds(model, x, 0.04, C)
        fast_crown = crown_ibp_bounds(model, x, 0.04, C)
    torch.testing.assert_close(fast, tuple(t.detach() for t in with_grad), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast_crown, crown_ibp_bounds(model, x, 0.04, C).detach(), rtol=1e-6, atol=1e-6)


def test_a_custom_network_is_refused_at_its_first_unsupported_leaf():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x))

    with pytest.raises(CoreError) as err:
        check_supported(nn.Sequential(nn.Identity(), Block()))
    assert "'1.bn'" in err.value.message and "BatchNorm2d" in err.value.message

    class Residual(nn.Module):  # only supported leaves, but a forward the bound code cannot follow
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return x + self.fc(x)

    with pytest.raises(CoreError) as err:
        check_supported(nn.Sequential(Residual()))
    assert "'0'" in err.value.message and "Residual" in err.value.message and "custom forward" in err.value.message


def test_verification_runs_in_float64_and_leaves_the_network_as_it_was(monkeypatch):
    """A margin smaller than float32 rounding of the bound computation is not certified by accident:
    the certificate is computed on a float64 copy; the caller's network keeps its dtype and mode."""
    model = small_masked_net(3, 1.0).train()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    seen = []
    real = ibp_bounds

    def spy(net, inputs, *args, **kwargs):
        seen.append((next(net.parameters()).dtype, inputs.dtype))
        return real(net, inputs, *args, **kwargs)

    import core.certify.bounds as bounds_mod

    monkeypatch.setattr(bounds_mod, "ibp_bounds", spy)
    verified, correct, total = verified_counts(model, (x, y), 0.01, "ibp")
    assert seen and all(d == (torch.float64, torch.float64) for d in seen)
    assert (correct, total) == (16, 16) and 0 <= verified <= 16
    assert next(model.parameters()).dtype == torch.float32 and model.training
