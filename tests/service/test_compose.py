"""docker-compose.yml stays in step with the code: settings it sets exist, commands it runs resolve,
the services a production deployment needs are there, and the worker reserves a GPU."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OUR_SERVICES = [name for name, svc in SERVICES.items() if "build" in svc]
_DEFAULT = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _DEFAULT.sub(r"\1", str(v)) for k, v in env.items()}


def test_required_services_and_images() -> None:
    assert {"postgres", "redis", "minio", "createbuckets", "migrate", "api", "worker"} <= set(SERVICES)
    images = {name: svc.get("image", "") for name, svc in SERVICES.items()}
    assert images["postgres"].startswith("postgres:") and images["redis"].startswith("redis:")
    assert images["minio"].startswith("minio/minio") and images["createbuckets"].startswith("minio/mc")
    assert "mc mb" in " ".join(SERVICES["createbuckets"]["command"])
    assert {"migrate", "api", "worker"} <= set(OUR_SERVICES)
    assert SERVICES["migrate"]["command"] == ["hydra-service", "migrate"]
    assert SERVICES["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_every_hydra_variable_is_a_setting(name: str) -> None:
    env = environment(SERVICES[name])
    hydra = {k: v for k, v in env.items() if k.startswith("HYDRA_")}
    assert hydra, f"{name} sets no HYDRA_* variables"
    unknown = [k for k in hydra if k[len("HYDRA_") :].lower() not in Settings.model_fields]
    assert unknown == []
    # and together they pass the production checks (no SQLite, no local storage, S3 credentials)
    settings = Settings(**{k[len("HYDRA_") :].lower(): v for k, v in hydra.items()})
    assert settings.env == "prod" and settings.storage_backend == "s3"


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def _module_defines(module: str, name: str) -> bool:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"module {module} not found"
    tree = ast.parse(Path(spec.origin).read_text())
    return any(
        isinstance(node, (ast.Assign, ast.AnnAssign, ast.FunctionDef))
        and (
            name in [getattr(t, "id", None) for t in getattr(node, "targets", [getattr(node, "target", None)])]
            or getattr(node, "name", None) == name
        )
        for node in tree.body
    )


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_commands_resolve(name: str) -> None:
    command = SERVICES[name]["command"]
    assert isinstance(command, list), "use the exec form so signals reach the process"
    program, args = command[0], command[1:]
    if program == "uvicorn":
        target = args[args.index("--factory") + 1] if "--factory" in args else next(a for a in args if ":" in a)
        assert callable(_resolve(target))
    elif program == "celery":
        module = args[args.index("-A") + 1]
        if importlib.util.find_spec(module.split(":")[0]) is None:
            pytest.fail(f"celery app module {module} does not exist")
        assert _module_defines(module, "app"), f"{module} defines no module-level `app`"
        # every queue a worker consumes is one the API sends to: the default queue, or a GPU-count
        # queue of HYDRA_GPU_QUEUES (service/routing.py) in the shared environment
        env = SERVICES[name].get("environment") or {}
        routed = [q.split(":")[1] for q in str(env.get("HYDRA_GPU_QUEUES", "")).split(",") if ":" in q]
        queues = args[args.index("-Q") + 1].split(",")
        assert set(queues) <= {Settings().queue_name, *routed}, (queues, routed)
        assert queues[0] in (Settings().queue_name, *routed)
    elif program == "hydra-service":
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        cli = _resolve(scripts["hydra-service"])
        commands = {c.name or c.callback.__name__.replace("_", "-") for c in cli.registered_commands}
        assert args[0] in commands
    elif program == "python":
        assert args[0] == "-m" and importlib.util.find_spec(args[1]) is not None
    else:
        pytest.fail(f"unexpected program {program!r} in {name}")


def test_worker_reserves_a_gpu() -> None:
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) and d.get("count", 0) >= 1 for d in devices)
    command = SERVICES["worker"]["command"]
    assert command[command.index("--concurrency") + 1] == "1"


def test_dockerfile_ships_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("core", "api", "worker", "service", "hydra_client", "launch", "migrations"):
        assert f"COPY {folder} " in dockerfile
    assert "alembic.ini" in dockerfile
