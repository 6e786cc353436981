"""The embedded default's state lives in one data directory, whatever the current directory is:
``create-key`` in a fresh one migrates first and prints a key that the service then accepts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from service.settings import Settings, default_data_dir
from tests.service.svc_helpers import RecordingQueue, build_app

ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str], cwd: Path, data: Path | None, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_") and k != "XDG_DATA_HOME"}
    env.update({"HOME": str(home), "PYTHONPATH": str(ROOT)})
    if data is not None:
        env["HYDRA_DATA_DIR"] = str(data)
    return subprocess.run(
        [sys.executable, "-m", "launch.service_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_settings_put_every_embedded_default_under_the_data_dir(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("HYDRA_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "hydra-compress"
    s = Settings(_env_file=None)
    assert s.data_dir == str(tmp_path / "xdg" / "hydra-compress")
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir="relative/state", work_dir="/elsewhere/work")
    root = tmp_path / "relative" / "state"  # resolved once: a later chdir does not move it
    assert (s.data_dir, s.database_url, s.broker_url) == (
        str(root),
        f"sqlite:///{root}/hydra.db",
        f"sqla+sqlite:///{root}/broker.db",
    )
    assert (s.storage_dir, s.work_dir) == (str(root / "objects"), "/elsewhere/work")  # explicit wins


def test_create_key_in_a_fresh_directory_migrates_and_the_key_works(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    data = tmp_path / "state"
    created = _cli(["create-key", "--tenant", "acme"], cwd, data, home)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert (data / "hydra.db").is_file() and not list(cwd.iterdir())
    listed = _cli(["list-keys"], cwd, data, home)
    assert listed.returncode == 0 and "acme" in listed.stdout, listed.stderr

    settings = Settings(data_dir=str(data), broker_url="memory://", rate_limit_per_minute=0)
    with TestClient(build_app(settings, RecordingQueue())) as client:
        response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text

    # without HYDRA_DATA_DIR: the per-user default, not the current directory
    shown = _cli(["data-dir"], cwd, None, home)
    assert shown.returncode == 0 and shown.stdout.strip() == str(home / ".local" / "share" / "hydra-compress")
