"""STYLE.md's dependency rules: core is pure PyTorch; the API enqueues by name, never imports the worker."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = {
    "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "celery", "kombu", "redis",
    "boto3", "botocore", "api", "worker", "service",
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


def test_core_imports_no_service_libraries():
    bad = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN_IN_CORE) for p in (ROOT / "core").rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_api_never_imports_the_worker():
    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "api").rglob("*.py") if "worker" in imported_roots(p)]
    assert bad == []


def test_no_unsafe_torch_load():
    offenders = []
    for p in list(ROOT.glob("core/**/*.py")) + list(ROOT.glob("api/**/*.py")) + list(ROOT.glob("worker/**/*.py")) + list(ROOT.glob("service/**/*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and getattr(
                getattr(node.func, "value", None), "id", None
            ) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
