"""The two certificates, as the pipeline reports them: each number with the exact procedure behind it.

* :func:`smoothing_certificate` — Cohen et al.'s CERTIFY on the smoothed classifier
  (``core.certify.smoothing``): certified accuracy per l_2 radius, smoothed accuracy, abstentions,
  mean certified radius.
* :func:`bound_certificate` — verified robust accuracy under IBP and/or CROWN-IBP margin lower bounds
  over the l_inf ball ∩ [0, 1] (``core.certify.bounds``).

Both take the already-drawn sample ``(x, y)`` (the pipeline draws it class-stratified) and return
metrics at the top level, plus ``procedures`` (the fractions of the sample: these get counts and
intervals), ``methods`` and ``details``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from core.certify.bounds import METHOD_DESCRIPTIONS, check_supported, verified_counts
from core.certify.smoothing import CERTIFY_METHOD, certify_dataset


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
    res = certify_dataset(
        model,
        (x, y),
        sigma=sigma,
        n0=n0,
        n=n,
        alpha=alpha,
        radii=list(radii),
        max_samples=None,
        batch_size=batch_size,
        seed=int(seed),
    )
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
    check_supported(model)
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
        verified, correct, counted = verified_counts(model, (x, y), eps, method, batch_size)
        key = f"verified_acc_{method}"
        out[key] = verified / max(1, counted)
        methods[key] = METHOD_DESCRIPTIONS[method]
        procedures[key] = (
            f"verified robust accuracy: every margin z_y - z_j lower-bounded above 0 by {METHOD_DESCRIPTIONS[method]}, "
            f"over the l_inf ball eps={eps:.4g} intersected with [0, 1], on {counted} test samples"
        )
        details["clean_acc"] = correct / max(1, counted)
    return {**out, "procedures": procedures, "methods": methods, "details": details}
