"""What a report claims is checkable: worst case over attacks, fair samples, intervals, seeds, and the
smooth ReLU backward that removes the gradient masking of very sparse networks."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch import nn

from core.data.datasets import TensorImageDataset
from core.pipeline.evaluate import evaluate_variant, validate
from core.pipeline.plan import plan_steps
from core.pipeline.runner import run_job
from core.robust.attacks import smooth_relu_backward
from core.spec import load_spec

TINY = {
    "seed": 1,
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 128, "max_test_samples": 60, "batch_size": 64},
    "objective": {"type": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
    "pruning": {"methods": ["hydra"], "k": [0.1]},
    "stages": {"pretrain": {"epochs": 1, "lr": 0.05}, "prune": {"epochs": 1, "lr": 0.1}, "finetune": None},
    "evaluation": {"pgd_steps": 2, "val_pgd_steps": 1, "val_max_samples": 20, "autoattack_max_samples": 20},
    "export": {"formats": ["compressed", "dense"]},  # no ONNX export (seconds per network) in these tests
}


def test_smooth_relu_backward_keeps_the_forward_and_passes_gradient_through_inactive_units():
    model = nn.Sequential(nn.Linear(3, 1), nn.ReLU())
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(-10.0)  # inactive on [0, 1]^3
    x = torch.rand(4, 3, requires_grad=True)
    (g_exact,) = torch.autograd.grad(model(x).sum(), x)
    assert torch.count_nonzero(g_exact) == 0  # the masked gradient
    with smooth_relu_backward(model, tau=2.0):
        out = model(x)
        (g_smooth,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(out, model(x))  # same forward
    assert (g_smooth > 0).all()
    assert torch.count_nonzero(torch.autograd.grad(model(x).sum(), x)[0]) == 0  # restored on exit


class _Constant(nn.Module):
    """Predicts the label from the first pixel: class = round(x[0] * 9)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = (x.flatten(1)[:, 0] * 9).round().long().clamp(0, 9)
        return torch.nn.functional.one_hot(idx, 10).float() * 10 + 0 * x.flatten(1)[:, :1]


def test_capped_evaluations_on_a_class_sorted_split_see_every_class():
    labels = torch.arange(10).repeat_interleave(30)  # class-sorted, 300 samples
    images = (labels.float() / 9).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    ds = TensorImageDataset(images, labels)
    spec = load_spec(
        {**TINY, "evaluation": {"max_samples": 50, "autoattack": False, "pgd_smooth_relu": False, "pgd_steps": 1}}
    )
    result = evaluate_variant(_Constant(), ds, spec, torch.device("cpu"), num_classes=10)
    assert result["samples"]["final"]["per_class"] == {str(c): 5 for c in range(10)}
    assert result["metrics"]["benign_acc"] == 1.0
    assert result["counts"]["benign_acc"] == [50, 50]
    lo, hi = result["intervals"]["benign_acc"]
    assert hi == 1.0 and 0.9 < lo < 1.0
    # the per-epoch validation sample is stratified too: first-N would have been classes 0 and 1 only
    assert (
        validate(_Constant(), ds, load_spec({**TINY, "evaluation": {"val_max_samples": 20}}), torch.device("cpu"))[
            "val_acc"
        ]
        == 1.0
    )


def test_multi_seed_jobs_repeat_every_network_and_report_mean_and_std(tmp_path):
    spec = load_spec({**TINY, "seeds": [0, 1], "evaluation": {**TINY["evaluation"], "autoattack": False}})
    names = [s.variant for s in plan_steps(spec)]
    assert names == [
        "dense_s0",
        "dense_s0",
        "hydra_k0.1_s0",
        "hydra_k0.1_s0",
        "dense_s1",
        "dense_s1",
        "hydra_k0.1_s1",
        "hydra_k0.1_s1",
    ]
    report = run_job(spec, tmp_path)
    assert report["seeds"] == [0, 1]
    agg = {a["variant"]: a for a in report["aggregate"]}
    assert set(agg) == {"dense", "hydra_k0.1"}
    per_seed = agg["hydra_k0.1"]["metrics"]["benign_acc"]["per_seed"]
    assert per_seed == {
        "0": report["variants"]["hydra_k0.1_s0"]["metrics"]["benign_acc"],
        "1": report["variants"]["hydra_k0.1_s1"]["metrics"]["benign_acc"],
    }
    assert agg["hydra_k0.1"]["metrics"]["benign_acc"]["mean"] == pytest.approx(sum(per_seed.values()) / 2)
    # the two seeds really trained different networks
    assert (
        report["variants"]["dense_s0"]["artifacts"]["compressed"]["sha256"]
        != report["variants"]["dense_s1"]["artifacts"]["compressed"]["sha256"]
    )
    md = (tmp_path / "report.md").read_text()
    assert "Mean ± standard deviation over seeds [0, 1]" in md and "±" in md


def test_the_headline_is_the_worst_case_over_every_attack_on_the_exported_network(tmp_path):
    report = run_job(load_spec(TINY), tmp_path)
    v = report["variants"]["hydra_k0.1"]
    m = v["metrics"]
    assert report["headline_robust_metric"] == "robust_acc"
    attacks = ["pgd_acc", "pgd_smooth_acc", "apgd_ce_acc", "apgd_t_acc", "fab_t_acc", "square_acc"]
    for key in attacks:
        assert key in m and key in v["procedures"] and key in v["intervals"]
    assert m["robust_acc"] <= min(m[k] for k in attacks[2:]) + 1e-9  # same (robust) sample
    assert "exported network" in v["evaluated"]
    assert "possible_gradient_masking" in v["checks"]["gradient_masking"]["details"]
    assert Counter(v["samples"]["robust"]["per_class"]).total() == 20
    assert json.loads((tmp_path / "report.json").read_text())["interval_method"].startswith("two-sided 95%")


def test_the_smooth_relu_backward_reaches_every_architecture_of_the_zoo():
    """Every ReLU of every catalogue network is a module the smooth backward can reach (an F.relu
    call would silently keep the exact, maskable gradient for the training attack)."""
    import torch.nn.functional as F

    from core.models.zoo import create_model, list_models

    for name, entry in list_models().items():
        torch.manual_seed(0)
        model = create_model(name).eval()
        calls = {"n": 0}
        real = F.relu

        def counting(*args, calls=calls, real=real, **kwargs):
            calls["n"] += 1
            return real(*args, **kwargs)

        F.relu = counting
        try:
            # inside the block every nn.ReLU runs the surrogate, so an F.relu call is a forward() of its own
            with smooth_relu_backward(model), torch.no_grad():
                model(torch.rand(1, *entry["input_shape"]))
        finally:
            F.relu = real
        assert calls["n"] == 0, f"{name} calls F.relu {calls['n']} times"
        assert any(isinstance(m, torch.nn.ReLU) for m in model.modules()), name
