"""docs/STYLE.md's dependency rules, from the imports in the source (lazy ones inside functions included).

The layers, lowest first: ``core`` (pure PyTorch) and ``service`` (settings, database, storage);
``migrations`` (Alembic, on ``service``'s models); ``api`` and ``worker``, which never import each
other (the API enqueues by task name); ``launch``, the only package that may import both (the
console entry points, the embedded launcher, the demo). ``hydra_client`` imports no other package
of ours. No import cycle between the packages.
"""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "celery",
    "kombu",
    "redis",
    "boto3",
    "botocore",
    "api",
    "worker",
    "service",
    "launch",
    "migrations",
}
# package -> the packages of ours it must not import
FORBIDDEN = {
    "service": {"api", "worker", "launch", "migrations"},  # the lowest layer (migrations/env.py imports it)
    "migrations": {"api", "worker", "launch"},
    "api": {"worker", "launch"},
    "worker": {"api", "launch"},
    "hydra_client": {"core", "service", "api", "worker", "launch", "migrations"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def our_packages() -> list[str]:
    """The top-level packages the wheel ships (pyproject's ``packages.find`` includes)."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    names = sorted({pattern.rstrip("*").rstrip(".") for pattern in include})
    assert all((ROOT / name / "__init__.py").is_file() for name in names), names
    return names


def package_imports(package: str) -> dict[str, set[str]]:
    """file -> the other packages of ours it imports."""
    ours = set(our_packages())
    return {str(p.relative_to(ROOT)): (imported_roots(p) & ours) - {package} for p in (ROOT / package).rglob("*.py")}


def test_core_imports_no_service_libraries():
    bad = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN_IN_CORE) for p in (ROOT / "core").rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_api_never_imports_the_worker():
    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "api").rglob("*.py") if "worker" in imported_roots(p)]
    assert bad == []


def test_each_package_imports_only_the_layers_below_it():
    assert set(FORBIDDEN) | {"core", "launch"} == set(our_packages())  # a new package gets a rule here
    bad = {
        file: sorted(roots & FORBIDDEN[package])
        for package in FORBIDDEN
        for file, roots in package_imports(package).items()
        if roots & FORBIDDEN[package]
    }
    assert bad == {}


def test_only_launch_imports_both_api_and_worker():
    both = [
        package for package in our_packages() if {"api", "worker"} <= set().union(*package_imports(package).values())
    ]
    assert both == ["launch"]


def test_no_import_cycle_between_packages():
    graph = {package: set().union(*package_imports(package).values()) for package in our_packages()}
    done: set[str] = set()

    def visit(package: str, path: list[str]) -> None:
        assert package not in path, f"import cycle: {' -> '.join(path + [package])}"
        if package not in done:
            for dependency in sorted(graph[package]):
                visit(dependency, path + [package])
            done.add(package)

    for package in graph:
        visit(package, [])


def test_no_unsafe_torch_load():
    offenders = []
    for p in [p for package in our_packages() for p in (ROOT / package).rglob("*.py")]:
        for node in ast.walk(ast.parse(p.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "load"
                and getattr(getattr(node.func, "value", None), "id", None) == "torch"
            ):
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_no_import_cycle_between_modules():
    """No module reaches itself through imports (lazy ones inside functions included; imports under
    TYPE_CHECKING excluded). The import-linter contracts in pyproject.toml (run by .ci/run) keep the
    layers; this keeps every module of every layer out of cycles."""
    import grimp

    graph = grimp.build_graph(*our_packages(), exclude_type_checking_imports=True)
    cycles = set()
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported == importer or imported.startswith(importer + "."):
                continue  # a package importing its own submodule (its public face)
            chain = graph.find_shortest_chain(importer=imported, imported=importer)
            if chain and not importer.startswith(imported + "."):
                cycles.add(" -> ".join((importer, *chain)))
    assert sorted(cycles) == []
