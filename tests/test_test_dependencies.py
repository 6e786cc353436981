"""Every third-party module the tests import is declared in pyproject.toml (dependencies or the
``test`` extra), so a clean clone's ``scripts/setup.sh`` installs it.

A module missing from the declaration passes on a developer's machine where it happens to be
installed, and on CI either errors (a browser test's ``from selenium import ...``) or silently skips
(``pytest.importorskip``): the fuzz and reference-attack tests then never run. That happened once: a
comment swallowed three entries of the ``test`` extra.
"""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"core", "api", "worker", "service", "hydra_client", "launch", "migrations", "tests", "bench", "scripts"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return {_norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in reqs}


def _imported_by_tests() -> dict[str, set[str]]:
    """top-level module -> the test files importing it (plain, lazy and pytest.importorskip)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in OURS:
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_declaration_parses_into_real_entries() -> None:
    declared = _declared()
    # the entries a comment once swallowed, and the ones every test run needs
    for must in ("pytest", "selenium", "schemathesis", "torchattacks", "moto", "torch"):
        assert must in declared, f"{must} is not declared in pyproject.toml"
    assert not any(d.startswith("#") or " " in d for d in declared), declared


def test_every_third_party_module_the_tests_import_is_declared() -> None:
    declared = _declared()
    dists = packages_distributions()
    missing = []
    for module, files in sorted(_imported_by_tests().items()):
        providers = {_norm(d) for d in dists.get(module, [])}
        if not providers:
            missing.append(f"{module} (not installed; imported by {sorted(files)})")
        elif not providers & declared:
            missing.append(f"{module} from {sorted(providers)} (imported by {sorted(files)})")
    assert not missing, "declare these in pyproject.toml's dependencies or [test] extra:\n" + "\n".join(missing)
