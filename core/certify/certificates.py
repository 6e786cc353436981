"""The two certificates, as the pipeline reports them: each number with the exact procedure behind it.

* :func:`smoothing_certificate` — Cohen et al.'s CERTIFY on the smoothed classifier
  (``core.certify.smoothing``): certified accuracy per l_2 radius, smoothed accuracy, abstentions,
  mean certified radius.
* :func:`bound_certificate` — verified robust accuracy under IBP and/or CROWN-IBP margin lower bounds
  over the l_inf ball ∩ [0, 1] (``core.certify.bounds``).

Both take the already-drawn sample ``(x, y)`` (the pipeline draws it class-stratified) and return
metrics at the top level, plus ``procedures`` (the fractions of the sample: these get counts and
intervals), ``methods`` and ``details``. Each is also offered in two halves, for a certification
sharded over data-parallel ranks (``core.pipeline.evaluate``): ``*_examples`` computes the per-example
results of a contiguous block ``[start, stop)`` of the sample exactly as a one-process run computes them
(the smoothing noise of the examples before the block is drawn and discarded), and ``*_summary`` turns
the per-example results of the whole sample into the certificate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from core.certify.bounds import METHOD_DESCRIPTIONS, check_supported, verified_flags
from core.certify.smoothing import CERTIFY_METHOD, certify_examples, summarize_certified
from core.errors import CoreError

Examples = dict[str, torch.Tensor]


def smoothing_examples(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    seed: int,
    start: int = 0,
    stop: int | None = None,
) -> Examples:
    """CERTIFY's per-example results on ``x[start:stop]`` (``certify_examples``)."""
    if len(x) == 0:
        raise CoreError("invalid_dataset", "dataset", "certification needs a non-empty (x, y) pair of equal length")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            num_classes = int(model(x[:1]).shape[1])
        return certify_examples(model, x, sigma, n0, n, alpha, batch_size, int(seed), num_classes, start, stop)
    finally:
        model.train(was_training)


def smoothing_summary(
    examples: Examples,
    y: torch.Tensor,
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    radii: Sequence[float],
    seed: int,
) -> dict[str, Any]:
    """The certificate of the whole sample from its per-example results."""
    res = summarize_certified(examples, y, sigma=sigma, n0=n0, n=n, alpha=alpha, radii=list(radii), seed=int(seed))
    setting = (
        f"{CERTIFY_METHOD} (sigma={sigma:g}, n0={res['n0']}, n={res['n']}, alpha={res['alpha']:g}, "
        f"noise seed {seed}) on {res['num_samples']} test samples"
    )
    out: dict[str, Any] = {}
    procedures: dict[str, str] = {}
    for r, acc in res["certified_accuracy_at"].items():
        key = f"certified_acc@{r:g}"
        out[key] = acc
        procedures[key] = f"certified accuracy of the smoothed classifier at l_2 radius {r:g}: {setting}"
    out["smoothed_acc"] = res["clean_smoothed_accuracy"]
    procedures["smoothed_acc"] = f"accuracy of the smoothed classifier's plurality vote over the n samples: {setting}"
    out["abstain_rate"] = res["abstain_rate"]
    procedures["abstain_rate"] = f"fraction of abstentions (pA_lower < 1/2): {setting}"
    out["mean_certified_radius"] = res["mean_certified_radius"]  # a radius, not a fraction: no procedure row
    methods = {key: CERTIFY_METHOD for key in out}
    return {**out, "procedures": procedures, "methods": methods, "details": res, "method": CERTIFY_METHOD}


def smoothing_certificate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    radii: Sequence[float],
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """CERTIFY every sample of ``(x, y)``; the noise is seeded by ``seed``."""
    if len(x) != len(y):
        raise CoreError("invalid_dataset", "dataset", "certification needs a non-empty (x, y) pair of equal length")
    settings = {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "seed": seed}
    examples = smoothing_examples(model, x, batch_size=batch_size, **settings)  # type: ignore[arg-type]
    return smoothing_summary(examples, y, radii=radii, **settings)  # type: ignore[arg-type]


def bound_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    bounds: Sequence[str],
    batch_size: int,
    start: int = 0,
    stop: int | None = None,
) -> Examples:
    """Per example of ``(x, y)[start:stop]``: verified under each bound method (``verified_<method>``)
    and clean-correct (``correct``)."""
    check_supported(model)
    xs, ys = x[start:stop], y[start:stop]
    out: Examples = {}
    for method in bounds:
        out[f"verified_{method}"], out["correct"] = verified_flags(model, (xs, ys), eps, method, batch_size)
    return out


def bound_summary(
    examples: Examples,
    y: torch.Tensor,
    *,
    eps: float,
    bounds: Sequence[str],
    extra_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The certificate of the whole sample from its per-example results."""
    total = len(y)
    out: dict[str, Any] = {}
    procedures: dict[str, str] = {}
    methods: dict[str, str] = {}
    details: dict[str, Any] = {
        "eps": eps,
        "num_samples": total,
        "norm": "linf",
        "domain": "[0, 1]",
        **(extra_details or {}),
    }
    for method in bounds:
        flags = examples[f"verified_{method}"]
        verified, counted = int(flags.sum()), len(flags)
        key = f"verified_acc_{method}"
        out[key] = verified / max(1, counted)
        methods[key] = METHOD_DESCRIPTIONS[method]
        procedures[key] = (
            f"verified robust accuracy: every margin z_y - z_j lower-bounded above 0 by {METHOD_DESCRIPTIONS[method]}, "
            f"over the l_inf ball eps={eps:.4g} intersected with [0, 1], on {counted} test samples"
        )
        details["clean_acc"] = int(examples["correct"].sum()) / max(1, counted)
    return {**out, "procedures": procedures, "methods": methods, "details": details}


def bound_certificate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    bounds: Sequence[str],
    batch_size: int,
    extra_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Verified robust accuracy under each bound method of ``bounds`` at l_inf ``eps``."""
    examples = bound_examples(model, x, y, eps=eps, bounds=bounds, batch_size=batch_size)
    return bound_summary(examples, y, eps=eps, bounds=bounds, extra_details=extra_details)
