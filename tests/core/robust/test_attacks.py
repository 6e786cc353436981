"""PGD: stays in the ball and in [0, 1], raises the loss, reaches the known worst case of a linear
classifier, and agrees with torchattacks on a small CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CoreError
from core.pruning.masked import convert_to_masked, set_keep_fraction, set_stage
from core.robust.attacks import pgd


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    )


def stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: bright left half vs bright right half, plus noise (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.35 + 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    left = torch.zeros(n, 1, 8, 8)
    left[..., :4] = 1
    side = torch.where(y.view(-1, 1, 1, 1) == 0, left, 1 - left)
    return (x + 0.2 * side).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained_cnn() -> nn.Module:
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(60):
        x, y = stripes(64, seed=i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_stays_in_ball_and_box_and_raises_the_loss(trained_cnn, norm, eps, loss):
    x, y = stripes(32, seed=100)
    x[:4] = 0.0  # on the box edge: the clamp must bind
    x[4:8] = 1.0
    step = eps / 4
    torch.manual_seed(0)
    x_adv = pgd(trained_cnn, x, y, norm=norm, eps=eps, step_size=step, steps=10, loss=loss, restarts=2)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert torch.all(size <= eps * (1 + 1e-5) + 1e-7)
    with torch.no_grad():
        clean, adv = trained_cnn(x), trained_cnn(x_adv)
        if loss == "ce":
            before, after = F.cross_entropy(clean, y), F.cross_entropy(adv, y)
        else:
            before = torch.tensor(0.0)
            after = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
    assert after > before


def test_no_parameter_gradients_and_mode_untouched(trained_cnn):
    model = convert_to_masked(tiny_cnn(1))
    set_keep_fraction(model, 0.5)
    set_stage(model, "finetune")  # weights require grad
    x, y = stripes(8, seed=3)
    for training in (True, False):
        model.train(training)
        pgd(model, x, y, eps=0.1, step_size=0.02, steps=3)
        assert model.training is training
    assert all(p.grad is None for p in model.parameters())


def linear_problem(d: int = 20, n: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(d, 2).double()
    x = 0.3 + 0.4 * torch.rand(n, d, dtype=torch.float64)  # bounds [0, 1] can't bind at eps 0.05
    with torch.no_grad():
        y = model(x).argmax(1)
    w = model.weight.detach()
    dw = w[y] - w[1 - y]  # w_y - w_other, per example
    margin = (model(x).gather(1, y[:, None]) - model(x).gather(1, (1 - y)[:, None])).squeeze(1).detach()
    return model, x, y, dw, margin


def adv_margin(model, x, y):
    with torch.no_grad():
        z = model(x)
    return (z.gather(1, y[:, None]) - z.gather(1, (1 - y)[:, None])).squeeze(1)


@pytest.mark.parametrize("random_start", [True, False])
def test_known_answer_linf_linear(random_start):
    model, x, y, dw, margin = linear_problem()
    eps = 0.05
    x_adv = pgd(model, x, y, norm="linf", eps=eps, step_size=eps / 4, steps=10, random_start=random_start)
    expected = margin - eps * dw.abs().sum(1)
    torch.testing.assert_close(adv_margin(model, x_adv, y), expected, rtol=1e-4, atol=1e-10)


def test_known_answer_l2_linear():
    model, x, y, dw, margin = linear_problem()
    eps = 0.05
    x_adv = pgd(model, x, y, norm="l2", eps=eps, step_size=eps / 4, steps=10, random_start=False)
    expected = margin - eps * dw.norm(dim=1)
    torch.testing.assert_close(adv_margin(model, x_adv, y), expected, rtol=1e-4, atol=1e-10)
    # from a random start in the ball, enough steps still converge to the same worst case
    x_adv = pgd(model, x, y, norm="l2", eps=eps, step_size=eps / 2, steps=200, random_start=True)
    torch.testing.assert_close(adv_margin(model, x_adv, y), expected, rtol=1e-4, atol=1e-10)


def test_known_answer_trades_kl_linear():
    """For two classes the KL to the clean prediction is convex in the margin m', which a linf ball
    moves within [m - eps·|dw|_1, m + eps·|dw|_1]; from the TRADES start PGD walks to one end."""
    model, x, y, dw, margin = linear_problem()
    eps = 0.05
    with torch.no_grad():
        target = model(x)
    x_adv = pgd(model, x, loss="kl", target_logits=target, norm="linf", eps=eps, step_size=eps / 4, steps=10)
    got = adv_margin(model, x_adv, y)
    reach = eps * dw.abs().sum(1)
    at_end = torch.minimum((got - (margin - reach)).abs(), (got - (margin + reach)).abs())
    assert torch.all(at_end <= 1e-4 * (margin.abs() + reach))


def test_agrees_with_torchattacks(trained_cnn):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = stripes(256, seed=200)
    eps, alpha, steps = 0.1, 0.025, 10
    torch.manual_seed(0)
    ours = pgd(trained_cnn, x, y, eps=eps, step_size=alpha, steps=steps)
    torch.manual_seed(0)
    theirs = torchattacks.PGD(trained_cnn, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    with torch.no_grad():
        clean = (trained_cnn(x).argmax(1) == y).float().mean().item()
        acc_ours = (trained_cnn(ours).argmax(1) == y).float().mean().item()
        acc_theirs = (trained_cnn(theirs).argmax(1) == y).float().mean().item()
    assert clean > 0.9 and acc_ours < clean - 0.1  # the attack does something on this model
    assert abs(acc_ours - acc_theirs) <= 0.04


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(norm="l1"), "attack.norm"),
        (dict(loss="mse"), "attack.loss"),
        (dict(eps=-1.0), "attack.eps"),
        (dict(steps=-1), "attack.steps"),
        (dict(restarts=0), "attack.restarts"),
    ],
)
def test_bad_settings_are_refused(kwargs, field):
    args = dict(eps=0.1, step_size=0.01, steps=1) | kwargs
    with pytest.raises(CoreError) as err:
        pgd(nn.Linear(4, 2), torch.rand(2, 4), torch.tensor([0, 1]), **args)
    assert err.value.field == field


# The AutoAttack known-answer tests (linear classifiers, exact worst case) are in test_attack_suite.py.
