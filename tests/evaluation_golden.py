"""Scenarios of the final evaluation whose full results are pinned in ``tests/data/evaluation_golden.json``.

Each scenario evaluates a tiny network (seeded random weights, no training) on a tiny synthetic test
set with ``evaluate_variant``, so every attack (our PGD, the smooth-ReLU PGD, each AutoAttack
component) and both certificates run in seconds. The golden file was recorded on the code *before*
the attacks became plug-ins (issue 17, item 2) and ``tests/core/pipeline/test_evaluation_golden.py`` asserts that
the results are still identical, bit for bit (floats are stored as JSON's shortest round-trip repr).

Regenerate (only when a change of numbers is intended, and say so in the commit):

    PYTHONPATH=. python -m tests.evaluation_golden > tests/data/evaluation_golden.json
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from core.data.datasets import TensorImageDataset
from core.spec import load_spec

BASE: dict[str, Any] = {
    "seed": 3,
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "test_batch_size": 8},
    "pruning": {"methods": ["hydra"], "k": [0.1]},
    "export": {"formats": ["compressed"]},
}

#: name -> (number of classes, objective, evaluation)
SCENARIOS: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "pgd_linf_4_classes_full_suite": (
        4,
        {"type": "pgd", "eps": 0.1, "step_size": 0.03, "steps": 2},
        {"pgd_steps": 6, "pgd_restarts": 2, "max_samples": 20, "autoattack_max_samples": 12},
    ),
    "pgd_l2_3_classes_full_suite": (
        3,
        {"type": "pgd", "eps": 0.5, "step_size": 0.1, "steps": 2, "norm": "l2"},
        {"pgd_steps": 5, "max_samples": 16, "autoattack_max_samples": 16},
    ),
    "pgd_linf_2_classes_no_smooth": (
        2,
        {"type": "pgd", "eps": 0.1, "step_size": 0.03, "steps": 2},
        {"pgd_steps": 4, "pgd_smooth_relu": False, "max_samples": 16, "autoattack_max_samples": 10},
    ),
    "pgd_only": (
        5,
        {"type": "pgd", "eps": 0.08, "step_size": 0.02, "steps": 2},
        {"pgd_steps": 7, "pgd_restarts": 3, "autoattack": False, "max_samples": 24},
    ),
    "smoothing_certificate": (
        4,
        {"type": "smoothing", "sigma": 0.25},
        {"smoothing_n0": 10, "smoothing_n": 200, "smoothing_batch_size": 64, "certify_max_samples": 10},
    ),
    "crown_ibp_certificate_and_attacks": (
        4,
        {"type": "crown_ibp", "eps": 0.02},
        {"pgd_steps": 4, "max_samples": 16, "autoattack_max_samples": 8, "certify_max_samples": 12},
    ),
}


def tiny_network(num_classes: int, seed: int = 0) -> nn.Sequential:
    """A 1x8x8-input MLP with seeded weights (supported by the bounds, ReLU modules for smooth PGD)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, num_classes)).eval()


def tiny_test_set(model: nn.Module, num_classes: int, n: int = 40, seed: int = 1) -> TensorImageDataset:
    """Images in [0, 1] labelled by ``model`` itself, 15% of the labels flipped (accuracy ~0.85)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    flip = torch.rand(n, generator=g) < 0.15
    y = torch.where(flip, (y + 1) % num_classes, y)
    return TensorImageDataset(x, y)


def run_scenario(name: str, should_cancel: Any = None) -> dict[str, Any]:
    from core.pipeline.evaluate import evaluate_variant

    num_classes, objective, evaluation = SCENARIOS[name]
    spec = load_spec({**BASE, "objective": objective, "evaluation": {"measure_latency": False, **evaluation}})
    model = tiny_network(num_classes)
    ds = tiny_test_set(model, num_classes)
    result = evaluate_variant(model, ds, spec, torch.device("cpu"), num_classes, should_cancel)
    return json.loads(json.dumps(result, sort_keys=False, default=str))


def main() -> None:
    print(json.dumps({name: run_scenario(name) for name in SCENARIOS}, indent=1))


if __name__ == "__main__":
    main()
