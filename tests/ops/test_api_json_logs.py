"""``hydra-service api`` (the Compose and Dockerfile command) with ``HYDRA_LOG_JSON`` on prints nothing
but JSON objects — uvicorn's start-up and access lines included — with two worker processes, as
Compose runs it; a bare ``uvicorn --factory api.main:create_app`` printed its start-up lines as text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.ops.server_process import free_port, json_env, serving

pytestmark = pytest.mark.slow


def test_the_production_api_command_prints_only_json_lines(tmp_path: Path) -> None:
    port, env = free_port(), json_env(tmp_path / "data")
    url = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "launch.service_cli"]
    subprocess.run([*cli, "migrate"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    with serving([*cli, "api", "--port", str(port), "--workers", "2"], cwd=tmp_path, env=env, url=url) as output:
        # a request without a key: refused, and logged as JSON by the access logger
        assert httpx.get(f"{url}/v1/jobs", timeout=30).status_code == 401

    records = output.json_records()
    messages = [r["message"] for r in records if r["logger"] == "uvicorn.error"]
    assert any("Uvicorn running on" in m for m in messages), output
    assert any("Started parent process" in m for m in messages), output  # the supervisor of 2 workers
    assert sum("Application startup complete" in m for m in messages) == 2, output
    assert any(r["logger"] == "uvicorn.access" and "GET /v1/jobs " in r["message"] for r in records), output
