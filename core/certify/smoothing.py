"""Randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019): prediction and l_2 certification.

After ``locuslab/smoothing`` ``code/core.py``: the smoothed classifier is
``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ² I)``, and ``CERTIFY`` lower-bounds the top-class
probability with a one-sided Clopper–Pearson interval. Noise is drawn in pixel space ([0, 1] images,
not clipped, as in Cohen et al.); the model normalises its own input.

Differences from the reference: no hard-coded device (the input's device is used), an optional
``torch.Generator`` for reproducible certificates, and the noise is written in place into one
preallocated batch under ``torch.inference_mode`` with the class counts kept on the device, so the
sampling loop costs little more than the forward passes themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm
from torch import nn

from core.config import OptionsModel
from core.errors import CoreError

ABSTAIN = -1
CERTIFY_METHOD = "Cohen et al. 2019 CERTIFY, Clopper-Pearson"


class SmoothingOptions(OptionsModel):
    """Randomized smoothing's certificate, Cohen et al.'s CERTIFY (core.certify.certificates.SmoothingCertificate),
    run for the smoothing objective. Formerly the flat fields smoothing_<name>, still accepted."""

    flat_prefix: ClassVar[str] = "smoothing_"

    n0: int = Field(100, ge=1, le=10_000_000, description="CERTIFY: noise samples that select the class.")
    n: int = Field(10_000, ge=1, le=10_000_000, description="CERTIFY: noise samples that estimate pA.")
    alpha: float = Field(0.001, gt=0, lt=0.5, description="CERTIFY: failure probability of the certificate.")
    radii: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        description="l_2 radii at which certified accuracy is reported.",
    )
    batch_size: int = Field(256, ge=1, le=100_000, description="Noisy samples per forward in CERTIFY.")


@dataclass(frozen=True)
class CertifySettings:
    """What a CERTIFY run's numbers depend on besides the model and the data: the noise level ``sigma``,
    the selection and estimation sample sizes ``n0`` and ``n``, the failure probability ``alpha`` and the
    ``seed`` of the noise generator (the batch size only groups the same draws)."""

    sigma: float
    n0: int
    n: int
    alpha: float
    seed: int


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper–Pearson lower bound on a binomial proportion from ``n_a``
    successes in ``n`` trials: ``Beta.ppf(alpha; n_a, n - n_a + 1)`` (0 when ``n_a == 0``), the same
    number as ``binomtest(n_a, n).proportion_ci(1 - 2·alpha, method="exact").low``."""
    if n_a <= 0:
        return 0.0
    return float(beta_dist.ppf(alpha, n_a, n - n_a + 1))


class Smooth:
    """A smoothed classifier ``g`` built from a base classifier ``f`` (logits over ``num_classes``)
    and the noise level ``sigma``."""

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        sigma: float,
        generator: torch.Generator | None = None,
    ) -> None:
        if not sigma > 0:
            raise CoreError("invalid_sigma", "objective.sigma", f"sigma must be > 0, got {sigma}")
        if num_classes < 2:
            raise CoreError("invalid_num_classes", "num_classes", "smoothing needs at least 2 classes")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.generator = generator

    # ------------------------------------------------------------ the paper's procedures
    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int) -> tuple[int, float]:
        """Cohen et al.'s ``CERTIFY``: pick the top class from ``n0`` noisy samples, then lower-bound
        its probability ``pA`` from ``n`` fresh samples. Returns ``(prediction, radius)``, or
        ``(ABSTAIN, 0.0)`` when the bound is below 1/2.

        With probability at least 1 - alpha over the randomness of the noise, if the answer is not
        ``ABSTAIN`` then the smoothed classifier ``g`` predicts ``prediction`` at ``x`` and at every
        point within l_2 distance ``radius = sigma · Φ⁻¹(pA_lower)`` of ``x``.

        ``x`` is one input without the batch dimension."""
        prediction, radius, _ = self.certify_with_counts(x, n0, n, alpha, batch_size)
        return prediction, radius

    def certify_with_counts(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int
    ) -> tuple[int, float, np.ndarray]:
        """:meth:`certify`, also returning the class counts of the ``n`` estimation samples."""
        _check_counts(n0, n, alpha, batch_size)
        counts_selection = self._sample_noise(x, n0, batch_size)
        c_a = int(counts_selection.argmax())
        counts_estimation = self._sample_noise(x, n, batch_size)
        p_a = lower_confidence_bound(int(counts_estimation[c_a]), n, alpha)
        if p_a < 0.5:
            return ABSTAIN, 0.0, counts_estimation
        return c_a, self.sigma * float(norm.ppf(p_a)), counts_estimation

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """Cohen et al.'s ``PREDICT``: the top class of ``n`` noisy samples if a two-sided binomial
        test separates it from the runner-up at level ``alpha``, else ``ABSTAIN``.

        With probability at least 1 - alpha over the randomness of the noise, the answer is either
        ``ABSTAIN`` or the prediction of the smoothed classifier ``g`` at ``x``."""
        _check_counts(1, n, alpha, batch_size)
        counts = self._sample_noise(x, n, batch_size)
        top2 = counts.argsort()[::-1][:2]
        count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
        if binomtest(count1, count1 + count2, p=0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2[0])

    # ------------------------------------------------------------ sampling
    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int, classify: bool = True) -> np.ndarray:
        """Class counts of ``f(x + δ)`` over ``num`` draws of ``δ ~ N(0, σ² I)``. ``classify=False``
        only draws the noise (the same draws, in the same batches, no forward pass): what a shard of a
        data-parallel certification does for the examples before its own, so its generator stands where
        a one-process run's would (``certify_examples``)."""
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        with torch.inference_mode():
            size = min(batch_size, num)
            batch = torch.empty((size, *x.shape), dtype=x.dtype, device=x.device)
            remaining = num
            while remaining > 0:
                this = min(size, remaining)
                noisy = batch[:this]
                noisy.normal_(0.0, self.sigma, generator=self.generator).add_(x)
                if classify:
                    predictions = self.base_classifier(noisy).argmax(1)
                    counts += torch.bincount(predictions, minlength=self.num_classes)[: self.num_classes]
                remaining -= this
        return counts.cpu().numpy()

    def skip(self, x: torch.Tensor, n0: int, n: int, batch_size: int) -> None:
        """Draw the noise :meth:`certify_with_counts` draws for ``x``, without classifying it."""
        self._sample_noise(x, n0, batch_size, classify=False)
        self._sample_noise(x, n, batch_size, classify=False)


def _check_counts(n0: int, n: int, alpha: float, batch_size: int) -> None:
    if n0 < 1 or n < 1:
        raise CoreError("invalid_samples", "evaluation.smoothing.n", f"n0 and n must be >= 1, got {n0}, {n}")
    if not 0 < alpha < 0.5:
        raise CoreError("invalid_alpha", "evaluation.smoothing.alpha", f"alpha must be in (0, 0.5), got {alpha}")
    if batch_size < 1:
        raise CoreError("invalid_batch_size", "batch_size", f"batch_size must be >= 1, got {batch_size}")


def _spread_indices(total: int, limit: int | None) -> torch.Tensor:
    """Evenly spaced example indices, so a capped evaluation does not see only the first classes of
    a class-sorted test set."""
    if limit is None or limit >= total:
        return torch.arange(total)
    return torch.unique(torch.linspace(0, total - 1, limit).round().long())


def certify_examples(
    model: nn.Module,
    x_all: torch.Tensor,
    settings: CertifySettings,
    batch_size: int,
    num_classes: int,
    start: int = 0,
    stop: int | None = None,
) -> dict[str, torch.Tensor]:
    """``CERTIFY`` on the examples ``x_all[start:stop]`` with the noise of a one-process run over all of
    ``x_all`` (one generator seeded by ``settings.seed``, the examples in order): the earlier examples' noise is
    drawn and discarded, so a data-parallel shard gives, example for example, the one-process numbers.
    Per example: ``prediction`` (``ABSTAIN`` = -1), ``radius`` (float64) and ``plurality`` (the top class
    of the ``n`` estimation samples)."""
    stop = len(x_all) if stop is None else stop
    generator = torch.Generator(device=x_all.device)
    generator.manual_seed(int(settings.seed))
    smooth = Smooth(model, num_classes, settings.sigma, generator=generator)
    n0, n = settings.n0, settings.n
    for i in range(start):
        smooth.skip(x_all[i], n0, n, batch_size)
    predictions, radii_out, plurality = [], [], []
    for i in range(start, stop):
        pred, radius, counts = smooth.certify_with_counts(x_all[i], n0, n, settings.alpha, batch_size)
        predictions.append(pred)
        radii_out.append(radius)
        plurality.append(int(counts.argmax()))
    return {
        "prediction": torch.tensor(predictions, dtype=torch.long),
        "radius": torch.tensor(radii_out, dtype=torch.float64),
        "plurality": torch.tensor(plurality, dtype=torch.long),
    }


def summarize_certified(
    examples: dict[str, torch.Tensor],
    labels: torch.Tensor,
    settings: CertifySettings,
    radii: Sequence[float],
) -> dict[str, Any]:
    """:func:`certify_dataset`'s summary of the per-example results of :func:`certify_examples`."""
    pred_t, rad_t, lab_t = examples["prediction"], examples["radius"], labels.cpu().long()
    correct = (pred_t == lab_t) & (pred_t != ABSTAIN)
    total = len(lab_t)
    certified = {float(r): float(((rad_t >= r) & correct).sum()) / total for r in radii}
    return {
        "certified_accuracy_at": certified,
        "mean_certified_radius": float(torch.where(correct, rad_t, torch.zeros_like(rad_t)).mean()),
        "abstain_rate": float((pred_t == ABSTAIN).double().mean()),
        "clean_smoothed_accuracy": float((examples["plurality"] == lab_t).double().mean()),
        "num_samples": total,
        "n0": settings.n0,
        "n": settings.n,
        "alpha": settings.alpha,
        "sigma": float(settings.sigma),
        "seed": int(settings.seed),
        "method": CERTIFY_METHOD,
    }


def certify_dataset(
    model: nn.Module,
    dataset_tensors: tuple[torch.Tensor, torch.Tensor],
    sigma: float,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    max_samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Run ``CERTIFY`` on every example of ``(x, y)`` (at most ``max_samples``, evenly spaced) and
    summarise.

    Returns ``certified_accuracy_at`` {radius: fraction correct, not abstained and certified at that
    radius or more}, ``mean_certified_radius`` (the radius when correct and not abstained, else 0,
    averaged), ``abstain_rate``, ``clean_smoothed_accuracy`` (the smoothed classifier's plurality
    vote over the ``n`` estimation samples, no abstention — never below the certified accuracy at
    radius 0), and the settings. Each example's certificate holds with probability at least
    1 - alpha over the noise."""
    x_all, y_all = dataset_tensors
    if len(x_all) != len(y_all) or len(x_all) == 0:
        raise CoreError("invalid_dataset", "dataset", "certification needs a non-empty (x, y) pair of equal length")
    was_training = model.training
    model.eval()
    if num_classes is None:
        with torch.inference_mode():
            num_classes = int(model(x_all[:1]).shape[1])
    idx = _spread_indices(len(x_all), max_samples).to(x_all.device)
    settings = CertifySettings(sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed)
    try:
        examples = certify_examples(model, x_all[idx], settings, batch_size, num_classes)
    finally:
        model.train(was_training)
    return summarize_certified(examples, y_all[idx], settings, radii)


__all__ = [
    "ABSTAIN",
    "CERTIFY_METHOD",
    "CertifySettings",
    "Smooth",
    "certify_dataset",
    "certify_examples",
    "summarize_certified",
    "lower_confidence_bound",
]
