"""Budget allocation: global top-k equals a brute-force top-k, the learned rates meet the global budget
exactly after finalize, the penalty pulls the kept fraction to the target, and the rate gradient means
what it says."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CoreError
from core.pruning.allocation import (
    LearnedAllocation,
    RateTraining,
    allocation_report,
    apply_allocation,
    check_pruning_combination,
    global_keep_counts,
    project_counts,
)
from core.pruning.masked import convert_to_masked, kept_count, masked_layers, set_stage


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return convert_to_masked(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(12 * 4 * 4, 20),
            nn.ReLU(),
            nn.Linear(20, 5),
        )
    )


def random_scores(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (_, layer) in enumerate(masked_layers(model)):  # distinct scales: a real global choice
            layer.scores.copy_(torch.randn(layer.scores.shape, generator=g) * (0.3 + i))


@pytest.mark.parametrize("k", [0.01, 0.1, 0.5, 0.93])
def test_global_topk_equals_brute_force(k):
    model = tiny_net()
    random_scores(model)
    report = apply_allocation(model, "global", k, min_per_layer=0)
    layers = masked_layers(model)
    everything = torch.cat([layer.scores.detach().abs().reshape(-1) for _, layer in layers])
    n = everything.numel()
    target = kept_count(n, k)
    brute = torch.zeros(n, dtype=torch.bool)
    brute[torch.argsort(everything, descending=True)[:target]] = True
    ours = torch.cat([layer.mask.reshape(-1).bool() for _, layer in layers])
    assert torch.equal(ours, brute)
    assert report["__total__"]["kept"] == target
    for name, layer in layers:  # keep agrees with the mask, so a per-layer refresh picks the same set
        assert kept_count(layer.mask.numel(), float(layer.keep)) == report[name]["kept"]
        before = layer.mask.clone()
        layer.refresh_mask()
        assert torch.equal(layer.mask, before)
    assert global_keep_counts(model, k, min_per_layer=0) == {name: report[name]["kept"] for name, _ in layers}


def test_global_reserves_one_weight_per_layer():
    model = tiny_net()
    random_scores(model)
    with torch.no_grad():
        masked_layers(model)[1][1].scores.mul_(1e-9)  # this layer would be emptied
    k = 0.05
    assert global_keep_counts(model, k, min_per_layer=0)[masked_layers(model)[1][0]] == 0
    report = apply_allocation(model, "global", k)
    assert report[masked_layers(model)[1][0]]["kept"] == 1
    total = sum(layer.mask.numel() for _, layer in masked_layers(model))
    assert report["__total__"]["kept"] == kept_count(total, k)


def test_global_count_is_exact_with_tied_scores():
    model = tiny_net()
    with torch.no_grad():
        for _, layer in masked_layers(model):
            layer.scores.fill_(0.5)
    report = apply_allocation(model, "global", 0.1)
    total = sum(layer.mask.numel() for _, layer in masked_layers(model))
    assert report["__total__"]["kept"] == kept_count(total, 0.1)


def test_uniform_is_layerwise_k():
    model = tiny_net()
    report = apply_allocation(model, "uniform", 0.2)
    for name, layer in masked_layers(model):
        assert report[name]["kept"] == kept_count(layer.mask.numel(), 0.2)


def test_project_counts_is_exact():
    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.randint(1, 5000) for _ in range(rng.randint(1, 12))]
        target = rng.randint(len(sizes), sum(sizes))
        logits = [rng.uniform(-8, 3) for _ in sizes]
        counts = project_counts(logits, sizes, target)
        assert sum(counts) == target
        assert all(1 <= c <= n for c, n in zip(counts, sizes))


@pytest.mark.parametrize("k", [0.01, 0.05, 0.3])
def test_learned_finalize_meets_the_budget_exactly(k):
    model = tiny_net()
    random_scores(model)
    alloc = LearnedAllocation(model, k)
    with torch.no_grad():  # a learned, non-uniform and off-budget allocation
        alloc.logits.add_(torch.linspace(-2.0, 1.5, alloc.logits.numel()))
    report = alloc.finalize(model, k)
    total = sum(layer.mask.numel() for _, layer in masked_layers(model))
    assert report["__total__"]["kept"] == kept_count(total, k)  # exact, so within 0.1% too
    for name, layer in masked_layers(model):
        assert int(layer.mask.sum()) == report[name]["kept"] == kept_count(layer.mask.numel(), float(layer.keep))
        assert report[name]["learned_rate"] == pytest.approx(report[name]["rate"], rel=1e-5)
    rates = [report[name]["rate"] for name, _ in masked_layers(model)]
    assert rates[0] < rates[-1]  # the learned (non-uniform) preference survives the projection


def test_penalty_pulls_the_kept_fraction_to_the_target():
    model = tiny_net()
    k = 0.05
    alloc = LearnedAllocation(model, k, RateTraining(gamma=1.0, lr=0.05))
    with torch.no_grad():
        alloc.logits.add_(torch.tensor([1.5, -1.0, 2.0, 0.5]))
    alloc.set_progress(1.0)
    start = float(alloc.kept_fraction().detach())
    for _ in range(400):
        alloc.zero_grad()
        alloc.penalty(k).backward()
        alloc.step()
    assert abs(start / k - 1) > 0.5
    assert float(alloc.kept_fraction().detach()) == pytest.approx(k, rel=1e-3)


def test_gamma_is_stepwise_increasing():
    alloc = LearnedAllocation(tiny_net(), 0.1, RateTraining(gamma=10.0, gamma_steps=4, gamma_ratio=0.1))
    seen = []
    for p in (0.0, 0.3, 0.6, 0.9, 1.0):
        alloc.set_progress(p)
        seen.append(float(alloc.gamma_now))
    assert seen == pytest.approx([0.01, 0.1, 1.0, 10.0, 10.0])


def test_rate_gradient_is_the_marginal_loss_of_the_next_weights():
    """With ∂L/∂M = c for every entry, L grows by c per kept weight: ∂L/∂log r = c · n · r."""
    model = tiny_net()
    random_scores(model)
    alloc = LearnedAllocation(model, 0.1)
    alloc.refresh(model)
    c = -0.003
    for _, layer in masked_layers(model):
        layer.scores.grad = c * torch.sign(layer.scores.detach())
    alloc.accumulate_grad(model)
    r = alloc.rates().detach()
    for i, (_, layer) in enumerate(masked_layers(model)):
        n = layer.scores.numel()
        expected = c * n * float(r[i]) * (1 - float(r[i]))  # chain rule to the logit
        assert float(alloc.logits.grad[i]) == pytest.approx(expected, rel=0.1)


def test_learned_training_moves_rates_and_ends_on_budget():
    torch.manual_seed(0)
    model = tiny_net()
    k = 0.1
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 5, (16,))
    alloc = LearnedAllocation(model, k, RateTraining(lr=0.05))
    alloc.refresh(model)
    set_stage(model, "prune")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    before = alloc.rates().detach().clone()
    steps = 12
    for step in range(steps):
        alloc.set_progress(step / steps)
        opt.zero_grad()
        alloc.zero_grad()
        loss = F.cross_entropy(model(x), y) + alloc.penalty(k)
        loss.backward()
        alloc.accumulate_grad(model)
        assert alloc.logits.grad is not None and torch.isfinite(alloc.logits.grad).all()
        opt.step()
        alloc.step()
        alloc.refresh(model)
    assert not torch.allclose(alloc.rates().detach(), before)
    state = alloc.state_dict()
    clone = LearnedAllocation(model, k)
    clone.load_state_dict(state)
    assert torch.equal(clone.logits, alloc.logits)
    assert clone.optimizer.state_dict()["state"].keys() == alloc.optimizer.state_dict()["state"].keys()
    report = alloc.finalize(model, k)
    total = sum(layer.mask.numel() for _, layer in masked_layers(model))
    assert abs(report["__total__"]["kept"] - k * total) <= 0.001 * total
    assert report == allocation_report(model) | {n: report[n] for n in alloc.names}


def test_bad_combinations_are_refused_with_the_field():
    check_pruning_combination("hydra", "learned", "unstructured")
    check_pruning_combination("lwm", "global", "unstructured")
    cases = [
        (("lwm", "learned", "unstructured"), "pruning.allocation"),
        (("hydra", "global", "channel"), "pruning.allocation"),
        (("hydra", "sideways", "unstructured"), "pruning.allocation"),
        (("hydra", "uniform", "2:4"), "pruning.granularity"),
    ]
    for args, fld in cases:
        with pytest.raises(CoreError) as err:
            check_pruning_combination(*args)
        assert err.value.field == fld
    with pytest.raises(CoreError):
        apply_allocation(tiny_net(), "learned", 0.1)
    with pytest.raises(CoreError):
        LearnedAllocation(tiny_net(), 1.0)
