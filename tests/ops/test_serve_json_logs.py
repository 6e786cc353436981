"""With ``HYDRA_LOG_JSON`` on, ``hydra-service serve`` prints nothing but JSON objects: uvicorn's own
lines (start-up, access, shutdown), the launcher's messages and everything else, on stdout and stderr;
and the admin key is not among them (the launcher names its file instead)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.ops.server_process import free_port, json_env, serving

pytestmark = pytest.mark.slow


def test_serve_prints_only_json_lines(tmp_path: Path) -> None:
    port, data, cwd = free_port(), tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "launch.service_cli", "serve", "--port", str(port)]
    ready = (data / "admin.key").is_file
    with serving(
        command, cwd=cwd, env=json_env(data), url=url, ready=ready, stop=signal.SIGINT, stop_timeout_s=150
    ) as output:
        key = (data / "admin.key").read_text().strip()
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200

    records = output.json_records()
    by_logger: dict[str, list[str]] = {}
    for record in records:
        by_logger.setdefault(record["logger"], []).append(record["message"])
    assert any("Uvicorn running on" in m for m in by_logger.get("uvicorn.error", [])), output
    access = [r for r in records if r["logger"] == "uvicorn.access" and "GET /v1/jobs " in r["message"]]
    assert access and access[0]["tenant"] == "local", output
    launcher = by_logger.get("launch.embedded", [])
    assert any(m.startswith("HYDRA service on ") for m in launcher), output
    assert any(str(data / "admin.key") in m for m in launcher), output
    assert any(m.startswith("worker stopped (exit ") for m in launcher), output
    assert key not in str(output)
