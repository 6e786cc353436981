"""Sharpness-aware score steps (pruning.score_sharpness, core/pruning/sharpness.py): the ascent step on
the scores and the gradient the optimizer steps with, against a case whose gradient is known in closed
form; the wrapper on every allocation and at channel granularity; the spec's validation; a job."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CoreError
from core.models.zoo import create_model
from core.pipeline import runner as runner_mod
from core.pipeline.runner import run_job
from core.pipeline.training import train_step
from core.pruning.masked import convert_to_masked, kept_count, masked_layers, set_stage
from core.pruning.methods import build_pruner
from core.pruning.sharpness import SharpnessAwarePruner
from core.spec import PruningSpec, load_spec
from tests.core.pruning.test_pruner import TINY

C = 0.3  # weight of the quadratic score term: makes the score gradient depend on the scores


class QuadraticObjective:
    """``L = ½||(W⊙M)x − t||² + ½·C·||S − ref||²`` on one masked linear layer; records each call's
    scores, mask and loss. HYDRA's straight-through gradient: ``∂L/∂S = (r xᵀ) ⊙ W ⊙ sign(S) + C·(S − ref)``
    with ``r = (W⊙M)x − t``."""

    def __init__(self, ref: torch.Tensor) -> None:
        self.ref = ref
        self.seen: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def loss(self, model, x, t):
        layer = model
        out = model(x)
        loss = 0.5 * ((out - t) ** 2).sum() + 0.5 * C * ((layer.scores - self.ref) ** 2).sum()
        self.seen.append((layer.scores.detach().clone(), layer.mask.detach().clone(), float(loss.detach())))
        return loss, out


def analytic_grad(w, s, x, t, ref):
    """The closed-form score gradient at scores ``s`` (mask = top-k of |s| at k = 0.5)."""
    n = s.numel()
    mask = torch.zeros(n)
    mask[torch.topk(s.abs().reshape(-1), kept_count(n, 0.5)).indices] = 1.0
    mask = mask.view_as(s)
    r = x @ (w * mask).T - t  # (batch, out); the layer has no bias
    return (r.T @ x) * w * torch.sign(s) + C * (s - ref), mask


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_the_step_ascends_along_the_gradient_and_descends_with_the_perturbed_points_gradient(scope):
    torch.manual_seed(0)
    model = convert_to_masked(nn.Linear(6, 3, bias=False))
    x, t = torch.randn(8, 6), torch.randn(8, 3)
    rho, lr = 0.5, 0.05
    pruning = PruningSpec(k=[0.5], score_sharpness={"rho": rho, "scope": scope})
    pruner = build_pruner(pruning, "hydra", 0.5, model, x[:2])
    assert isinstance(pruner, SharpnessAwarePruner)
    pruner.enter(model)
    set_stage(model, "prune")
    w = model.weight.detach().clone()
    s0 = model.scores.detach().clone()
    optimizer = torch.optim.SGD([model.scores], lr=lr, momentum=0.0, weight_decay=0.0)
    _, kept = analytic_grad(w, s0, x, t, s0)
    # ref: 3 units further out for the kept scores, further in for the pruned ones, so the ascent step
    # (away from ref) shrinks the kept scores and grows the pruned ones: the perturbed mask differs
    ref = s0 + 3.0 * torch.sign(s0) * (2 * kept - 1)
    objective = QuadraticObjective(ref)

    train_step(model, objective, optimizer, x, t, refresh=True, hook=pruner)

    assert len(objective.seen) == 2  # one extra forward/backward
    g0, m0 = analytic_grad(w, s0, x, t, ref)
    assert torch.equal(objective.seen[0][1], m0)
    e = rho * g0 / g0.norm() if scope == "global" else rho * s0.norm() * g0 / g0.norm()
    s_perturbed, m_perturbed, loss_perturbed = objective.seen[1]
    torch.testing.assert_close(s_perturbed, s0 + e)  # the ascent step: along +g, length rho (·||s||)
    assert loss_perturbed > objective.seen[0][2]  # it raises the loss
    g1, m1 = analytic_grad(w, s0 + e, x, t, ref)
    assert torch.equal(m_perturbed, m1)  # the perturbed scores' own top-k mask
    assert not torch.equal(m1, m0)  # this radius does move the mask: the case tests that too
    torch.testing.assert_close(model.scores.detach(), s0 - lr * g1)  # descent from s0 with g(s0 + e)
    assert not torch.allclose(g1, g0)
    _, m_final = analytic_grad(w, model.scores.detach(), x, t, ref)
    assert torch.equal(model.mask, m_final)  # after the step: the updated scores' mask


class CountingCE:
    def __init__(self) -> None:
        self.calls = 0

    def loss(self, model, x, y):
        self.calls += 1
        logits = model(x)
        return F.cross_entropy(logits, y), logits


def run_steps(allocation: str, granularity: str, sharpness: dict | None, steps: int = 2):
    torch.manual_seed(0)
    model = convert_to_masked(create_model("cnn_small_mnist"))
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    pruning = PruningSpec(k=[0.5], allocation=allocation, granularity=granularity, score_sharpness=sharpness)
    pruner = build_pruner(pruning, "hydra", 0.5, model, x[:2])
    pruner.enter(model)
    set_stage(model, "prune")
    params = pruner.optimizer_parameters(model)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1.0)
    objective = CountingCE()
    for i in range(steps):
        pruner.set_progress(i / steps)
        train_step(model, objective, optimizer, x, y, refresh=True, hook=pruner)
    pruner.finish(model)
    scores = [s.detach().clone() for s in pruner.score_tensors(model)]
    return pruner, objective.calls, scores, [layer.mask.clone() for _, layer in masked_layers(model)]


@pytest.mark.parametrize(
    "allocation, granularity",
    [("uniform", "unstructured"), ("global", "unstructured"), ("learned", "unstructured"), ("uniform", "channel")],
)
def test_every_allocation_and_channel_granularity_take_the_sharpness_aware_step(allocation, granularity):
    plain, plain_calls, plain_scores, plain_masks = run_steps(allocation, granularity, None)
    sharp, calls, scores, masks = run_steps(allocation, granularity, {"rho": 0.5})
    assert isinstance(sharp, SharpnessAwarePruner) and not isinstance(plain, SharpnessAwarePruner)
    assert (plain_calls, calls) == (2, 4)
    assert sharp.last_shift_norm > 0
    assert any(not torch.allclose(a, b) for a, b in zip(plain_scores, scores))  # another gradient
    # the inner pruner's budget rule still holds after the stage (learned: exact projection)
    assert sum(int(m.sum()) for m in masks) == sum(int(m.sum()) for m in plain_masks) or allocation == "learned"
    if allocation == "learned":
        total = sum(m.numel() for m in masks)
        assert sum(int(m.sum()) for m in masks) == kept_count(total, 0.5)


def test_the_spec_validates_score_sharpness():
    spec = load_spec({**TINY, "pruning": {"methods": ["hydra", "lwm"], "score_sharpness": {"rho": 0.1}}})
    assert spec.pruning.score_sharpness is not None and spec.pruning.score_sharpness.scope == "layer"
    assert load_spec(TINY).pruning.score_sharpness is None  # off by default
    for pruning, field in [
        ({"methods": ["lwm"], "score_sharpness": {"rho": 0.1}}, "pruning.score_sharpness"),
        ({"score_sharpness": {"rho": 0.0}}, "pruning.score_sharpness.rho"),
        ({"score_sharpness": {"rho": 0.1, "scope": "weights"}}, "pruning.score_sharpness.scope"),
        ({"score_sharpness": {}}, "pruning.score_sharpness.rho"),
    ]:
        with pytest.raises(CoreError) as err:
            load_spec({**TINY, "pruning": pruning})
        assert err.value.field == field, (pruning, err.value)


def test_a_job_with_sharpness_runs_two_objective_calls_per_prune_step_and_leaves_lwm_alone(tmp_path, monkeypatch):
    spec = load_spec({**TINY, "pruning": {"methods": ["hydra", "lwm"], "k": [0.05], "score_sharpness": {"rho": 0.1}}})
    calls: collections.Counter[str] = collections.Counter()
    build_objective = runner_mod.build_objective

    def counting_objective(cfg):
        objective = build_objective(cfg)
        loss = objective.loss

        def counted(model, x, y):
            calls[type(model).__name__] += 1
            return loss(model, x, y)

        objective.loss = counted
        return objective

    monkeypatch.setattr(runner_mod, "build_objective", counting_objective)
    report = run_job(spec, tmp_path)
    assert set(report["variants"]) == {"dense", "hydra_k0.05", "lwm_k0.05"}
    # pretrain: 2 batches; the hydra prune stage: 2 batches x 2 calls; lwm has no prune stage
    assert sum(calls.values()) == 2 + 4
