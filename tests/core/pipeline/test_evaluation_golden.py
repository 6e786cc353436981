"""The final evaluation gives the same numbers, procedures, samples and checks as before the attacks
became plug-ins: every scenario of ``tests/evaluation_golden.py`` (our PGD under a fixed seed, the
smooth-ReLU PGD, every AutoAttack component for 2, 3 and 4 classes, l_inf and l_2, randomized smoothing
and the IBP/CROWN-IBP bounds) is compared, bit for bit, with the results recorded before the change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.evaluation_golden import SCENARIOS, run_scenario

GOLDEN = json.loads((Path(__file__).resolve().parents[2] / "data" / "evaluation_golden.json").read_text())


def test_the_golden_file_covers_every_scenario():
    assert set(GOLDEN) == set(SCENARIOS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_evaluation_results_are_identical_to_the_golden_ones(name):
    result = run_scenario(name)
    golden = GOLDEN[name]
    assert list(result["metrics"]) == list(golden["metrics"])  # the report's metric order too
    for key in ("metrics", "counts", "intervals", "procedures", "samples", "checks"):
        assert result[key] == golden[key], key
    assert result == golden
