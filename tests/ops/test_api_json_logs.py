"""``hydra-service api`` (the Compose and Dockerfile command) with ``HYDRA_LOG_JSON`` on prints nothing
but JSON objects — uvicorn's start-up and access lines included — with two worker processes, as
Compose runs it; a bare ``uvicorn --factory api.main:create_app`` printed its start-up lines as text."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ops.test_serve_json_logs import ROOT, _free_port

pytestmark = pytest.mark.slow


def test_the_production_api_command_prints_only_json_lines(tmp_path: Path) -> None:
    port, data = _free_port(), tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env.update(
        {
            "HYDRA_DATA_DIR": str(data),
            "HYDRA_LOG_JSON": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        }
    )
    cli = [sys.executable, "-m", "launch.service_cli"]
    subprocess.run([*cli, "migrate"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [*cli, "api", "--port", str(port), "--workers", "2"], cwd=tmp_path, env=env, stdout=out, stderr=err
        )

    def output() -> str:
        return f"stdout:\n{out_path.read_text()}\nstderr:\n{err_path.read_text()}"

    try:
        deadline = time.monotonic() + 150
        while True:
            assert proc.poll() is None, output()
            assert time.monotonic() < deadline, f"the API did not come up\n{output()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        # a request without a key: refused, and logged as JSON by the access logger
        assert httpx.get(f"{url}/v1/jobs", timeout=30).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    records = []
    for path in (out_path, err_path):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"a plain line in {path.name}: {line!r}\n{output()}")
            assert isinstance(record, dict) and {"ts", "level", "logger", "message"} <= set(record), line
            records.append(record)
    messages = [r["message"] for r in records if r["logger"] == "uvicorn.error"]
    assert any("Uvicorn running on" in m for m in messages), output()
    assert any("Started parent process" in m for m in messages), output()  # the supervisor of 2 workers
    assert sum("Application startup complete" in m for m in messages) == 2, output()
    assert any(r["logger"] == "uvicorn.access" and "GET /v1/jobs " in r["message"] for r in records), output()
