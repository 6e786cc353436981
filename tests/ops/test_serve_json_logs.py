"""With ``HYDRA_LOG_JSON`` on, ``hydra-service serve`` prints nothing but JSON objects: uvicorn's own
lines (start-up, access, shutdown), the launcher's messages and everything else, on stdout and stderr;
and the admin key is not among them (the launcher names its file instead)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_prints_only_json_lines(tmp_path: Path) -> None:
    port, data, cwd = _free_port(), tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
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
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch.service_cli", "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
        )

    def output() -> str:
        return f"stdout:\n{out_path.read_text()}\nstderr:\n{err_path.read_text()}"

    try:
        deadline = time.monotonic() + 150
        while True:
            assert proc.poll() is None, output()
            assert time.monotonic() < deadline, f"serve did not come up\n{output()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200 and (data / "admin.key").is_file():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        key = (data / "admin.key").read_text().strip()
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=150)
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
    by_logger = {}
    for record in records:
        by_logger.setdefault(record["logger"], []).append(record["message"])
    assert any("Uvicorn running on" in m for m in by_logger.get("uvicorn.error", [])), output()
    access = [r for r in records if r["logger"] == "uvicorn.access" and "GET /v1/jobs " in r["message"]]
    assert access and access[0]["tenant"] == "local", output()
    launcher = by_logger.get("launch.embedded", [])
    assert any(m.startswith("HYDRA service on ") for m in launcher), output()
    assert any(str(data / "admin.key") in m for m in launcher), output()
    assert any(m.startswith("worker stopped (exit ") for m in launcher), output()
    assert key not in output()
