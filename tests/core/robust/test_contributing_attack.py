"""CONTRIBUTING.md's "Adding an evaluation attack" recipe is exact: its module, dropped into
``core/robust/suite/``, is the whole change (the evaluation runs it, tallies it with its procedure, puts it
in the headline worst case and the gradient-masking check), its test passes, and adding it changes no
other number of the evaluation (the golden of ``tests/core/pipeline/test_evaluation_golden.py``)."""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.core.robust.test_attack_suite as attack_suite_tests
from core.robust.suite import ATTACKS
from tests.evaluation_golden import run_scenario

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = json.loads((ROOT / "tests" / "data" / "evaluation_golden.json").read_text())


def _recipe_snippets() -> list[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split("## Adding an evaluation attack", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def noise_module() -> Iterator[types.ModuleType]:
    """The recipe's module, imported as ``core.robust.suite.noise`` (its import registers the attack)."""
    module = types.ModuleType("core.robust.suite.noise")
    sys.modules[module.__name__] = module
    try:
        exec(compile(_recipe_snippets()[0], "CONTRIBUTING.md:core/robust/suite/noise.py", "exec"), module.__dict__)
        yield module
    finally:
        ATTACKS.unregister("noise")
        sys.modules.pop(module.__name__, None)


def test_the_recipe_has_the_module_and_its_test():
    module, test = _recipe_snippets()
    assert "@register_attack" in module and test.lstrip().startswith("def test_")


def test_the_recipes_test_passes(noise_module):
    namespace = dict(vars(attack_suite_tests))
    exec(compile(_recipe_snippets()[1], "CONTRIBUTING.md:tests/core/robust/test_attack_suite.py", "exec"), namespace)
    (name,) = [key for key in namespace if key.startswith("test_") and key not in vars(attack_suite_tests)]
    namespace[name]()


def test_the_recipes_attack_runs_in_the_evaluation_and_changes_no_other_number(noise_module):
    result = run_scenario("pgd_linf_4_classes_full_suite")
    golden = GOLDEN["pgd_linf_4_classes_full_suite"]
    keys = list(result["metrics"])
    assert keys.index("pgd_smooth_acc") < keys.index("noise_acc") < keys.index("apgd_ce_acc")  # its order
    assert result["procedures"]["noise_acc"] == (
        "one random corner of the linf eps=0.1 ball per example on the 'final' sample (20 test samples)"
    )
    for key, value in golden["metrics"].items():
        if key != "robust_acc":
            assert result["metrics"][key] == value, key
            assert result["procedures"][key] == golden["procedures"][key], key
    assert result["metrics"]["robust_acc"] <= golden["metrics"]["robust_acc"]
    assert "PGD-6 smooth-ReLU, NOISE, APGD-CE" in result["procedures"]["robust_acc"]
    masking = result["checks"]["gradient_masking"]  # noise is gradient-free: it is compared as well
    assert masking["best_gradient_free_attack"] in {"noise", "square"}


def test_an_evaluation_that_does_not_apply_it_is_unchanged(noise_module):
    result = run_scenario("pgd_l2_3_classes_full_suite")  # l_2: the corner attack does not apply
    assert result == GOLDEN["pgd_l2_3_classes_full_suite"]
