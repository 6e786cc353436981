"""``pip install ./hydra_client`` in a fresh virtual environment (no system site-packages): the
client and its ``hydra-client`` command, with httpx, tqdm and PyYAML and their own dependencies
only: no torch, no typer/click/rich, none of the service.

The dependencies' wheels are fetched once with ``pip download`` (the machine's configured index),
then the install itself runs with ``--no-index`` from that folder, as it would on a machine with a
private wheelhouse; the source is a copy, so the checkout gets no build/ or egg-info."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "hydra_client"
DIRECT = {"httpx", "tqdm", "pyyaml"}
BOOTSTRAP = {"pip", "setuptools"}  # what `python -m venv` puts in every environment (3.11: both)

# Run inside the fresh environment: every installed distribution, and the closure of the client's
# requirements (markers evaluated there, with pip's own copy of `packaging`).
CLOSURE = r"""
import json, re
from importlib import metadata
from pip._vendor.packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def requires(name):
    out = []
    for line in metadata.distribution(name).requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(norm(req.name))
    return out

installed = sorted(norm(d.metadata["Name"]) for d in metadata.distributions())
direct = requires("hydra-compress-client")
closure, todo = set(), list(direct)
while todo:
    name = todo.pop()
    if name not in closure:
        closure.add(name)
        todo += requires(name)
print(json.dumps({"installed": installed, "direct": direct, "closure": sorted(closure)}))
"""


# the fresh environment must see only what it installed: not this checkout (PYTHONPATH), not our venv
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=CLEAN_ENV
    )


def test_pip_install_of_the_client_folder_gives_the_client_alone(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    fetched = run(sys.executable, "-m", "pip", "download", "-q", "-d", wheels, "setuptools>=77", *_requirements())
    if fetched.returncode != 0:
        pytest.skip(f"no package index to fetch the client's dependencies from: {fetched.stderr[-300:]}")

    source = tmp_path / "src" / "hydra_client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", venv)  # never --system-site-packages
    assert made.returncode == 0, made.stderr
    python, bin_dir = venv / "bin" / "python", venv / "bin"

    installed = run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, source, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    no_torch = run(python, "-c", "import torch", cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    helped = run(bin_dir / "hydra-client", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert all(word in helped.stdout for word in ("submit", "wait", "status", "download", "cancel"))
    refused = run(bin_dir / "hydra-client", "submit", tmp_path / "missing.yaml", "--key", "k", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr

    found = json.loads(run(python, "-c", CLOSURE, cwd=tmp_path).stdout)
    assert set(found["direct"]) == DIRECT
    assert set(found["installed"]) == {"hydra-compress-client", *found["closure"], *BOOTSTRAP}, found
    assert not {"torch", "typer", "click", "rich", "fastapi", "numpy"} & set(found["installed"])
    imported = run(
        python, "-c", "import hydra_client; print(hydra_client.__file__, hydra_client.__version__)", cwd=tmp_path
    )
    assert str(venv) in imported.stdout and imported.stdout.split()[1] == _version()


def _requirements() -> list[str]:
    return list(tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["dependencies"])


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_client_distribution_matches_the_project() -> None:
    """Same requirements as the full project states for them, same version, same command."""
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(client["dependencies"]) <= set(project["dependencies"])
    assert client["scripts"] == {"hydra-client": project["scripts"]["hydra-client"]}
    import hydra_client

    assert hydra_client.__version__ == project["version"]
