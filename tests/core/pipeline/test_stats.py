"""Intervals and seed summaries against known answers."""

from __future__ import annotations

import math

import pytest

from core.pipeline.stats import accuracy_with_interval, clopper_pearson, seed_summary


def test_clopper_pearson_matches_closed_forms():
    # k = 0: upper bound 1 - (alpha/2)^(1/n); k = n: lower bound (alpha/2)^(1/n)
    lo, hi = clopper_pearson(0, 50)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 50), rel=1e-9)
    lo, hi = clopper_pearson(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 50), rel=1e-9)


def test_clopper_pearson_known_value_and_coverage_shape():
    # the definition: beta quantiles Beta(k, n-k+1) at 2.5% and Beta(k+1, n-k) at 97.5%
    lo, hi = clopper_pearson(632, 1000)
    assert lo == pytest.approx(0.6012559, abs=1e-6) and hi == pytest.approx(0.6619643, abs=1e-6)
    assert (
        clopper_pearson(5, 10)[1] - clopper_pearson(5, 10)[0]
        > clopper_pearson(500, 1000)[1] - clopper_pearson(500, 1000)[0]
    )


def test_accuracy_with_interval_and_bad_counts():
    a = accuracy_with_interval(3, 4)
    assert a["value"] == 0.75 and a["correct"] == 3 and a["n"] == 4 and a["ci95"][0] < 0.75 < a["ci95"][1]
    with pytest.raises(ValueError):
        clopper_pearson(5, 4)


def test_seed_summary_mean_and_sample_std():
    s = seed_summary({"0": 0.8, "1": 0.6, "2": 0.7})
    assert s["mean"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(0.1)  # sample std, ddof = 1
    assert s["per_seed"] == {"0": 0.8, "1": 0.6, "2": 0.7} and s["n_seeds"] == 3
    assert seed_summary({"4": 0.5})["std"] == 0.0 and not math.isnan(seed_summary({"4": 0.5})["std"])
