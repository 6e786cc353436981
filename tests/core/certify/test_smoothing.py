"""Randomized smoothing against a known answer: a linear base classifier, whose smoothed classifier
has a closed-form top-class probability and certified radius (Cohen et al. 2019, sec. 3)."""

import math

import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from core.certify.smoothing import ABSTAIN, CERTIFY_METHOD, Smooth, certify_dataset, lower_confidence_bound
from core.errors import CoreError

SIGMA = 0.5
ALPHA = 0.001


class LinearTwoClass(nn.Module):
    """f(x) = 1 if w·x + b > 0 else 0, as two logits."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([-s, s], dim=1)


def linear_setup(distance: float):
    """A base classifier and a point at l_2 distance ``distance`` from its boundary, on the class-1 side."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    x = torch.rand(1, 4, 4, generator=g, dtype=torch.float64)
    b = float(distance * w.norm() - x.flatten() @ w)  # so that (w·x + b) / |w| = distance
    return LinearTwoClass(w, b), x


def smooth(model, seed: int) -> Smooth:
    return Smooth(model, num_classes=2, sigma=SIGMA, generator=torch.Generator().manual_seed(seed))


def test_clopper_pearson_matches_scipy_binomtest():
    for k, n in [(0, 10), (1, 10), (50, 100), (9_990, 10_000), (10_000, 10_000)]:
        expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * ALPHA, method="exact").low
        assert lower_confidence_bound(k, n, ALPHA) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("distance", [0.1, 0.3, 0.6])
def test_linear_certified_radius_is_sound_and_tight(distance):
    model, x = linear_setup(distance)
    n = 10_000
    p_a = norm.cdf(distance / SIGMA)  # exact top-class probability of the smoothed classifier
    true_radius = SIGMA * norm.ppf(p_a)  # == distance
    assert true_radius == pytest.approx(distance, rel=1e-9)
    # a generous floor: p_hat at 4 sd below p_a, then the one-sided CP slack (z_alpha sd)
    sd = math.sqrt(p_a * (1 - p_a) / n)
    floor = SIGMA * norm.ppf(p_a - (4 + norm.ppf(1 - ALPHA)) * sd)
    for seed in range(8):
        prediction, radius = smooth(model, seed).certify(x, n0=100, n=n, alpha=ALPHA, batch_size=1000)
        assert prediction == 1
        assert radius <= true_radius  # soundness: never certifies beyond the true smoothed radius
        assert radius >= floor  # and no looser than the sampling error explains


def test_abstains_on_the_decision_boundary():
    model, x = linear_setup(0.0)  # p_A = 1/2 exactly
    for seed in range(5):
        s = smooth(model, seed)
        prediction, radius = s.certify(x, n0=100, n=2_000, alpha=ALPHA, batch_size=512)
        assert (prediction, radius) == (ABSTAIN, 0.0)
        assert s.predict(x, n=2_000, alpha=ALPHA, batch_size=512) == ABSTAIN


def test_predict_is_confident_far_from_the_boundary():
    model, x = linear_setup(1.0)
    assert smooth(model, 0).predict(x, n=1_000, alpha=ALPHA, batch_size=300) == 1


def test_sampling_counts_every_draw_once():
    model, x = linear_setup(0.2)
    counts = smooth(model, 0)._sample_noise(x, num=1_001, batch_size=64)  # 64 does not divide 1001
    assert counts.sum() == 1_001


def test_invalid_settings_are_refused():
    model, x = linear_setup(0.2)
    with pytest.raises(CoreError) as err:
        smooth(model, 0).certify(x, n0=10, n=100, alpha=0.7, batch_size=10)
    assert err.value.code == "invalid_alpha"
    with pytest.raises(CoreError):
        Smooth(model, num_classes=2, sigma=0.0)


def _tiny_trained_model():
    """A small MLP trained for a few steps on three Gaussian blobs in 2x4x4 'images'."""
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(3, 2, 4, 4, generator=g)
    y = torch.arange(90) % 3
    x = (centres[y] + 0.15 * torch.randn(90, 2, 4, 4, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        noisy = x + 0.25 * torch.randn_like(x)
        loss = nn.functional.cross_entropy(model(noisy), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


def test_certify_dataset_summary_on_a_tiny_trained_model():
    model, x, y = _tiny_trained_model()
    radii = [0.0, 0.1, 0.25, 0.5]
    res = certify_dataset(
        model, (x, y), sigma=0.25, n0=50, n=400, alpha=ALPHA, radii=radii, max_samples=30, batch_size=128, seed=1
    )
    assert res["method"] == CERTIFY_METHOD
    assert res["num_samples"] == 30 and (res["n0"], res["n"], res["alpha"], res["sigma"]) == (50, 400, ALPHA, 0.25)
    acc = [res["certified_accuracy_at"][r] for r in radii]
    assert acc == sorted(acc, reverse=True)  # certified accuracy cannot grow with the radius
    assert acc[0] <= res["clean_smoothed_accuracy"]  # radius 0 never beats the smoothed classifier itself
    assert res["clean_smoothed_accuracy"] > 0.6  # the model did learn the blobs
    assert 0 <= res["abstain_rate"] <= 1 and res["mean_certified_radius"] >= 0
    # the largest certifiable radius with n=400 samples caps the mean
    assert res["mean_certified_radius"] <= 0.25 * norm.ppf(ALPHA ** (1 / 400))
    again = certify_dataset(
        model, (x, y), sigma=0.25, n0=50, n=400, alpha=ALPHA, radii=radii, max_samples=30, batch_size=128, seed=1
    )
    assert again == res  # seeded: reproducible
