"""Uncertainty of the numbers in a report.

- An accuracy measured on ``n`` samples with ``k`` correct gets its two-sided 95% Clopper-Pearson
  ("exact") interval, from scipy's ``binomtest`` (no normal approximation: at 99% sparsity and a few
  hundred samples the normal interval leaves [0, 1] or collapses at 0 and 1).
- Repeated seeds are summarised by mean, sample standard deviation (ddof = 1) and each seed's value.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

CONFIDENCE = 0.95
INTERVAL_METHOD = "two-sided 95% Clopper-Pearson interval from the sample count"


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact binomial confidence interval for ``k`` successes out of ``n`` trials."""
    from scipy.stats import binomtest  # here: the API reads reports (seed summaries) without scipy

    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def accuracy_with_interval(correct: int, n: int) -> dict[str, Any]:
    """``{"value", "correct", "n", "ci95": [lo, hi]}`` for one measured accuracy."""
    lo, hi = clopper_pearson(correct, n)
    return {"value": correct / n if n else 0.0, "correct": int(correct), "n": int(n), "ci95": [lo, hi]}


def seed_summary(values: dict[str, float]) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1; 0 for a single seed) and every seed's value."""
    xs = [float(v) for v in values.values()]
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {
        "mean": statistics.fmean(xs),
        "std": std if math.isfinite(std) else 0.0,
        "n_seeds": len(xs),
        "per_seed": dict(values),
    }


__all__ = ["clopper_pearson", "accuracy_with_interval", "seed_summary", "INTERVAL_METHOD", "CONFIDENCE"]
