"""The final attack suite against cases with a known answer.

- A linear classifier's exact worst case over the l_inf ball intersected with [0, 1] is computable in
  closed form (each margin ``(w_y - w_j)·x' + b_y - b_j`` is minimised coordinate-wise at a corner), so
  the robust accuracy every attack reports must equal it (attacks can only be weaker, never stronger).
- A network whose input gradient is zero everywhere (input quantisation with a zero-gradient round)
  masks gradients: PGD and APGD see nothing, Square does, and the check must flag it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.robust.suite import (
    ATTACKS,
    AttackSettings,
    autoattack_flags,
    autoattack_plan,
    clean_flags,
    masking_check,
    pgd_flags,
    planned_attacks,
)
from core.spec import EvaluationSpec

EPS = 0.1


class _LinearImage(nn.Module):
    """A linear classifier on (N, 1, 3, 4) images (Square samples image-shaped patches)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        self.weight, self.bias = self.linear.weight, self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _linear_problem(num_classes: int, n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = _LinearImage(num_classes, 12)
    with torch.no_grad():
        model.weight.copy_(torch.randn(num_classes, 12, generator=g))
        model.bias.copy_(0.1 * torch.randn(num_classes, generator=g))
    x = torch.rand(n, 1, 3, 4, generator=g)
    y = model(x).argmax(1)  # clean accuracy 1 by construction
    flip = torch.rand(n, generator=g) < 0.1
    y = torch.where(flip, (y + 1) % num_classes, y)
    return model.eval(), x, y


def _exact_robust(model: _LinearImage, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Per example: robust under every x' in the l_inf ball ∩ [0, 1] (exact for a linear model)."""
    w, b = model.weight.detach(), model.bias.detach()
    x_flat = x.flatten(1)
    robust = torch.ones(len(x), dtype=torch.bool)
    for j in range(w.shape[0]):
        d = w[y] - w[j]  # (n, dim): margin direction against class j
        worst_x = torch.where(d > 0, (x_flat - eps).clamp(0, 1), (x_flat + eps).clamp(0, 1))
        margin = (d * worst_x).sum(1) + b[y] - b[j]
        robust &= (margin > 0) | (torch.arange(w.shape[0])[j] == y)
    return robust & (model(x).argmax(1) == y)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_attacks_are_sound_and_their_worst_case_is_a_linear_models_exact_one(num_classes):
    model, x, y = _linear_problem(num_classes)
    exact = _exact_robust(model, x, y, EPS)
    clean = clean_flags(model, x, y, 32)
    assert 0 < int(exact.sum()) < int(clean.sum())  # a non-trivial case
    torch.manual_seed(0)
    flags_pgd = pgd_flags(model, x, y, norm="linf", eps=EPS, step_size=EPS / 4, steps=20, restarts=1, batch_size=32)
    aa, description = autoattack_flags(
        model, x, y, clean, norm="linf", eps=EPS, num_classes=num_classes, seed=0, batch_size=32
    )
    assert list(aa) == autoattack_plan(num_classes)[0] and "pyautoattack" in description
    worst = clean & flags_pgd
    for attack, flags in {"pgd": flags_pgd, **aa}.items():
        # sound: no attack breaks an example that is provably robust (its points stay in the ball)
        assert not (exact & ~flags).any(), attack
        worst &= flags
    if num_classes == 2:  # one margin: every gradient attack reaches its exact corner
        assert torch.equal(flags_pgd & clean, exact) and torch.equal(aa["apgd-ce"], exact)
    if num_classes != 3:  # 2 classes: CE is the margin; >= 4: APGD-T attacks each margin in turn
        assert torch.equal(worst, exact)


def test_ten_classes_run_the_standard_suite():
    attacks, description = autoattack_plan(10)
    assert attacks == ["apgd-ce", "apgd-t", "fab-t", "square"] and "9 target classes" in description
    model, x, y = _linear_problem(10, n=24)
    exact = _exact_robust(model, x, y, EPS)
    clean = clean_flags(model, x, y, 32)
    aa, _ = autoattack_flags(model, x, y, clean, norm="linf", eps=EPS, num_classes=10, seed=0, batch_size=32)
    worst = clean.clone()
    for flags in aa.values():
        worst &= flags
    assert torch.equal(worst, exact)


class _RoundedInput(nn.Module):
    """Quantises its input with a zero-gradient round: the function changes, its gradient is 0."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x * 4) / 4  # d round / dx = 0 almost everywhere
        return self.inner(q)


def test_masked_gradients_are_flagged_and_the_worst_case_still_counts_square():
    inner, x, y = _linear_problem(4, n=48, seed=1)
    model = _RoundedInput(inner).eval()
    y = model(x).argmax(1)
    clean = clean_flags(model, x, y, 32)
    torch.manual_seed(0)
    flags_pgd = pgd_flags(model, x, y, norm="linf", eps=0.2, step_size=0.05, steps=10, restarts=1, batch_size=32)
    aa, _ = autoattack_flags(model, x, y, clean, norm="linf", eps=0.2, num_classes=4, seed=0, batch_size=32)
    acc = {"pgd": float(flags_pgd.float().mean()), **{a: float(f.float().mean()) for a, f in aa.items()}}
    assert acc["square"] < acc["pgd"] - 0.02
    check = masking_check(acc)
    assert check["possible_gradient_masking"] and check["best_gradient_free_attack"] == "square"
    worst = clean & flags_pgd
    for f in aa.values():
        worst &= f
    assert float(worst.float().mean()) <= acc["square"]


def test_masking_check_is_quiet_when_gradients_work():
    check = masking_check({"pgd": 0.50, "apgd-ce": 0.48, "square": 0.47})
    assert not check["possible_gradient_masking"] and check["gap"] == pytest.approx(0.01)


def test_the_registry_holds_every_evaluation_attack_under_its_report_key():
    """The metric keys are the report's: renderers read them, so they never change."""
    assert {name: (attack.metric, attack.gradient_free) for name, attack in ATTACKS.items()} == {
        "pgd": ("pgd_acc", False),
        "pgd_smooth": ("pgd_smooth_acc", False),
        "apgd-ce": ("apgd_ce_acc", False),
        "apgd-t": ("apgd_t_acc", False),
        "apgd-dlr": ("apgd_dlr_acc", False),
        "fab-t": ("fab_t_acc", False),
        "square": ("square_acc", True),
    }


@pytest.mark.parametrize(
    ("num_classes", "evaluation", "planned"),
    [
        (10, {}, ["pgd", "pgd_smooth", "apgd-ce", "apgd-t", "fab-t", "square"]),
        (3, {}, ["pgd", "pgd_smooth", "apgd-ce", "apgd-dlr", "square"]),
        (2, {"pgd_smooth_relu": False}, ["pgd", "apgd-ce", "square"]),
        (10, {"autoattack": False}, ["pgd", "pgd_smooth"]),
    ],
)
def test_the_evaluation_plans_the_attacks_its_switches_and_classes_allow_in_order(num_classes, evaluation, planned):
    settings = AttackSettings("linf", EPS, EPS / 4, 0, 32, num_classes, EvaluationSpec(**evaluation))
    assert [attack.name for attack in planned_attacks(settings)] == planned


def test_each_registered_attack_runs_alone_and_is_sound_on_a_linear_model():
    model, x, y = _linear_problem(4, n=24)
    exact = _exact_robust(model, x, y, EPS)
    clean = clean_flags(model, x, y, 32)
    settings = AttackSettings("linf", EPS, EPS / 4, 0, 32, 4, EvaluationSpec(pgd_steps=10))
    torch.manual_seed(0)
    for attack in planned_attacks(settings):
        flags = attack.run(model, x, y, settings, clean=clean)
        assert flags.dtype == torch.bool and flags.shape == y.shape, attack.name
        assert not (exact & ~flags).any(), attack.name
        assert not model._forward_pre_hooks, attack.name  # no stop hook left on the network
