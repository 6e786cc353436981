"""The installed wheel works on its own: ``hydra-service migrate``, ``serve`` and ``demo`` from the
package, with no repository anywhere on the path.

The wheel is built from a copy of this tree (``pip wheel --no-deps --no-build-isolation``: no
network), installed with ``pip install --no-deps --target <site>``, and its console scripts are run
from a folder outside the repository with ``PYTHONPATH=<site>`` and ``PYTHONSAFEPATH=1``: the
project's dependencies (torch, FastAPI, ...) come from this interpreter's environment, the project
itself only from ``<site>``. A ``sitecustomize`` probe, on the path after ``<site>``, drops an editable
install of the project from the import system (a module missing from the wheel then fails instead of
being found in a checkout) and records, at exit, the file of every module of ours the process loaded
and its ``sys.path``: each must be in ``<site>``, none in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.ops.server_process import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OURS = ("core", "api", "worker", "service", "hydra_client", "launch", "migrations")
# the tree's top-level entries that are no part of the wheel's build
NOT_BUILT = {".git", ".venv", ".ci", ".pytest_cache", "build", "dist", "runs", "data", "var", "tests", "bench"}

PROBE = '''\
"""Test probe (tests/ops/test_wheel.py): only the installed wheel; report what was imported."""
import atexit, json, os, sys

sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
OURS = %r


def _report():
    modules = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())
               if name.split(".")[0] in OURS}
    path = os.path.join(os.environ["HYDRA_WHEEL_PROBE_DIR"], "%%d.json" %% os.getpid())
    with open(path, "w") as handle:
        json.dump({"argv": sys.argv, "sys_path": sys.path, "modules": modules}, handle)


atexit.register(_report)
''' % (OURS,)


@dataclass
class Installed:
    wheel: Path
    site: Path
    bin: Path
    probe: Path  # the folder of sitecustomize.py
    probe_dir: Path  # where the probes write their reports
    work: Path  # the current directory of every command: outside the repository

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_") and k != "PYTHONPATH"}
        env.update(
            {
                "PYTHONPATH": os.pathsep.join([str(self.site), str(self.probe)]),
                "PYTHONSAFEPATH": "1",
                "PYTHONUNBUFFERED": "1",
                "HOME": str(self.work / "home"),
                "HYDRA_WHEEL_PROBE_DIR": str(self.probe_dir),
            }
        )
        env.update(extra)
        return env

    def run(self, args: list[str], timeout: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=self.work, env=self.env(**extra), capture_output=True, text=True, timeout=timeout
        )

    def python(self, code: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-c", code], **extra)

    def probes(self) -> list[dict]:
        """What each process started since the last call loaded (and forget it)."""
        out = []
        for path in sorted(self.probe_dir.glob("*.json")):
            out.append(json.loads(path.read_text()))
            path.unlink()
        return out


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".egg-info"))}
    if Path(directory).resolve() == ROOT:
        ignored |= {n for n in names if n in NOT_BUILT}
    return ignored


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    src, dist, site = base / "src", base / "dist", base / "site"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_copy_ignore)  # the build writes build/ and *.egg-info
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("hydra_compress-*.whl")
    put = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert put.returncode == 0, put.stdout + put.stderr
    probe = base / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    probe_dir = base / "probes"
    probe_dir.mkdir()
    work = base / "work"
    (work / "home").mkdir(parents=True)
    yield Installed(wheel, site, site / "bin", probe, probe_dir, work)


def _assert_only_the_wheel(installed: Installed, probes: list[dict], expected: set[str]) -> None:
    """Every module of ours each process loaded is a file of the installed wheel; the repository and
    the current directory are not on its path (the interpreter's own environment may be inside the
    repository: scripts/setup.sh makes .venv there); the modules in ``expected`` were loaded."""
    assert probes, "no process reported its imports"
    site, loaded = installed.site.resolve(), set()
    environment = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    for probe in probes:
        for name, file in probe["modules"].items():
            if file is not None:
                assert Path(file).resolve().is_relative_to(site), (name, file, probe["argv"])
        for entry in probe["sys_path"]:
            resolved = Path(entry or ".").resolve()
            if not any(resolved.is_relative_to(prefix) for prefix in environment):
                assert not resolved.is_relative_to(ROOT), (entry, probe["argv"])
            assert resolved != installed.work.resolve(), (entry, probe["argv"])
        loaded |= set(probe["modules"])
    assert expected <= loaded, sorted(expected - loaded)


def test_the_wheel_ships_the_migrations_the_demo_spec_and_the_entry_points(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {
        "migrations/__init__.py",
        "migrations/env.py",
        "migrations/script.py.mako",
        "launch/service_cli.py",
        "launch/embedded.py",
        "launch/demo.py",
        "launch/demo_mnist5k.yaml",
        "api/templates/base.html",
        "api/static/hydra.css",
    } <= names
    assert any(n.startswith("migrations/versions/") and n.endswith(".py") for n in names)
    assert not {n.split("/")[0] for n in names} & {"tests", "scripts", "bench", "examples"}
    for line in (
        "hydra-service = launch.service_cli:app",
        "hydra-compress = launch.cli:app",
        "hydra-client = hydra_client.cli:main",
    ):
        assert line in entry_points
    # one source of truth for the demo spec: the documented examples/ file is the packaged one
    assert (ROOT / "examples" / "demo_mnist5k.yaml").resolve() == (ROOT / "launch" / "demo_mnist5k.yaml").resolve()


def test_migrate_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    from migrations import head_revision

    db = tmp_path / "fresh.db"
    out = installed.run([str(installed.bin / "hydra-service"), "migrate", "--database-url", f"sqlite:///{db}"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "database at head"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
        assert {"jobs", "api_keys", "tenants"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    _assert_only_the_wheel(installed, installed.probes(), {"launch.service_cli", "migrations", "service.settings"})


def test_serve_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [str(installed.bin / "hydra-service"), "serve", "--port", str(port)],
            cwd=installed.work,
            env=installed.env(HYDRA_DATA_DIR=str(data)),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 150
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"serve did not come up:\n{log_path.read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200 and (data / "admin.key").is_file():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        key = (data / "admin.key").read_text().strip()
        jobs = httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert jobs.status_code == 200, jobs.text  # the database was migrated from the wheel's revisions
        assert httpx.get(f"{url}/ui/static/hydra.css", timeout=30).status_code == 200  # package data
        assert httpx.get(f"{url}/ui", timeout=30, follow_redirects=True).status_code == 200  # templates
        assert (data / "hydra.db").is_file() and not (installed.work / "hydra.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    assert "stopping: API down" in log_path.read_text()
    _assert_only_the_wheel(
        installed,
        installed.probes(),
        {"launch.service_cli", "launch.embedded", "api.main", "worker.reaper", "migrations"},
    )


def test_demo_and_its_spec_from_the_wheel(installed: Installed) -> None:
    out = installed.run([str(installed.bin / "hydra-service"), "demo", "--help"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "usage: hydra-service demo" in out.stdout and "--spec" in out.stdout
    # the spec the demo submits by default is found in the installed package and is a valid job spec
    code = (
        "import json; from launch.demo import default_spec; from core.spec import load_spec; "
        "path = default_spec(); spec = load_spec(path); "
        "print(json.dumps({'path': str(path), 'name': spec.name, 'methods': list(spec.pruning.methods)}))"
    )
    out = installed.python(code)
    assert out.returncode == 0, out.stdout + out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(found["path"]).resolve() == (installed.site / "launch" / "demo_mnist5k.yaml").resolve()
    assert found["name"] == "demo-mnist5k-hydra-vs-lwm" and found["methods"] == ["hydra", "lwm"]
    assert Path(found["path"]).read_bytes() == (ROOT / "examples" / "demo_mnist5k.yaml").read_bytes()
    _assert_only_the_wheel(installed, installed.probes(), {"launch.demo", "core.spec"})


def test_the_other_console_scripts_from_the_wheel(installed: Installed) -> None:
    for script, word in (("hydra-client", "submit"), ("hydra-compress", "run")):
        out = installed.run([str(installed.bin / script), "--help"])
        assert out.returncode == 0 and word in out.stdout, out.stdout + out.stderr
    _assert_only_the_wheel(installed, installed.probes(), {"hydra_client.cli", "launch.cli", "core.cli"})
