"""A stop (cancel or SIGTERM: both make ``should_cancel`` answer True) ends the final evaluation within
seconds at any stage: inside our PGD, inside each of AutoAttack's components, inside randomized-smoothing
CERTIFY and inside the bound certificate, not after the attack or the certificate (issue 16, item 7).

Each test configures an attack or certificate to run for minutes on a network that sleeps 2 ms per
forward pass, requests the stop from another thread after a short delay, and asserts that
``RunCanceled`` came from inside that stage well within the bound (measured: milliseconds)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from core.errors import RunCanceled
from core.pipeline.evaluate import evaluate_variant
from core.robust.suite import ATTACKS
from core.spec import load_spec
from tests.evaluation_golden import BASE, tiny_network, tiny_test_set

BOUND_S = 2.0  # far above the measured latency; the stages configured here run for minutes


class _SlowForward(nn.Sequential):
    """The tiny network, 2 ms per forward pass: what a CIFAR-sized network costs per batch, scaled down."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return super().forward(x)


def stop_after(
    delay_s: float, objective: dict[str, Any], evaluation: dict[str, Any], num_classes: int = 4, n: int = 64
) -> tuple[RunCanceled, float]:
    """Evaluate with a stop requested from a timer thread after ``delay_s``; return the exception and
    the seconds from the request to the exception."""
    spec = load_spec({**BASE, "objective": objective, "evaluation": {"measure_latency": False, **evaluation}})
    inner = tiny_network(num_classes)
    model = _SlowForward(*inner).eval()
    ds = tiny_test_set(inner, num_classes, n=n)
    requested = threading.Event()
    at: list[float] = []

    def request() -> None:
        at.append(time.monotonic())
        requested.set()

    trace = sys.gettrace()
    timer = threading.Timer(delay_s, request)
    timer.start()
    try:
        with pytest.raises(RunCanceled) as raised:
            evaluate_variant(model, ds, spec, torch.device("cpu"), num_classes, requested.is_set)
        latency = time.monotonic() - at[0]
    finally:
        timer.cancel()
    assert not model.training  # put back in the mode it came in (eval)
    assert not model._forward_pre_hooks  # no stop hook left behind
    assert sys.gettrace() is trace  # nor pyautoattack's check_dynamic tracer
    return raised.value, latency


PGD = {"type": "pgd", "eps": 0.1, "step_size": 0.03, "steps": 2}


def test_a_stop_inside_pgd_takes_effect_within_a_step():
    exc, latency = stop_after(0.5, PGD, {"pgd_steps": 10_000, "autoattack": False, "pgd_smooth_relu": False})
    assert "PGD" in str(exc) and latency < BOUND_S


@contextlib.contextmanager
def without(*names: str) -> Iterator[None]:
    """The registry without the attacks ``names`` (those that would run before the one timed)."""
    removed = {name: ATTACKS.get(name) for name in names}
    for name in names:
        ATTACKS.unregister(name)
    try:
        yield
    finally:
        for name, attack in removed.items():
            ATTACKS.register(name, attack)


def test_a_stop_inside_the_smooth_relu_pgd_takes_effect_within_a_step():
    with without("pgd"):
        exc, latency = stop_after(0.5, PGD, {"pgd_steps": 10_000, "autoattack": False})
    assert "the smooth-ReLU PGD" in str(exc) and latency < BOUND_S


@pytest.mark.parametrize(
    ("component", "before"),
    [
        ("APGD-CE", ()),
        ("APGD-T", ("apgd-ce",)),
        ("FAB-T", ("apgd-ce", "apgd-t")),
        ("SQUARE", ("apgd-ce", "apgd-t", "fab-t")),
    ],
)
def test_a_stop_inside_autoattack_takes_effect_within_a_forward_pass(component, before):
    """A one-step PGD, then the AutoAttack component on 64 examples (minutes at 2 ms per forward pass;
    the components before it are left out)."""
    evaluation = {"pgd_steps": 1, "pgd_smooth_relu": False, "autoattack_max_samples": 64}
    with without(*before):
        exc, latency = stop_after(0.5, PGD, evaluation)
    assert f"AutoAttack {component}" in str(exc) and latency < BOUND_S


def test_a_stop_inside_randomized_smoothing_certify_takes_effect_within_a_noise_batch():
    evaluation = {"smoothing": {"n0": 10, "n": 10_000_000, "batch_size": 64}, "certify_max_samples": 8}
    exc, latency = stop_after(0.5, {"type": "smoothing", "sigma": 0.25}, evaluation)
    assert "certification" in str(exc) and latency < BOUND_S


def test_a_stop_inside_the_bound_certificate_takes_effect_within_a_batch():
    """400 samples one at a time, IBP then CROWN-IBP: at least 1.6 s of forward passes."""
    evaluation = {"autoattack": False, "pgd_smooth_relu": False, "pgd_steps": 1, "max_samples": 8}
    evaluation.update(bounds={"batch_size": 1}, certify_max_samples=400)
    exc, latency = stop_after(0.3, {"type": "crown_ibp", "eps": 0.02}, evaluation, n=400)
    assert "certification" in str(exc) and latency < BOUND_S
