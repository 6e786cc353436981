"""The embedded default as a user starts it: ``hydra-service serve`` (SQLite, local object folder, the
SQLite-backed Celery broker, a solo worker and the reaper, all in the data directory), a tiny job over
HTTP, and a clean stop on Ctrl-C. Started from one folder, with its state in another: nothing lands
in the current directory."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.worker.worker_helpers import tiny_spec, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_runs_a_job_with_nothing_installed_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    data = tmp_path / "data"  # HYDRA_DATA_DIR; everything else: the embedded defaults
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")} | {"HYDRA_DATA_DIR": str(data)}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch.service_cli", "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    key_path = data / "admin.key"
    try:

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 90, "the embedded service", every=0.5)
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = key_path.read_text().strip()
        assert key in log_path.read_text()  # printed for the user, stored in the database only hashed
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )  # the first submission imports the model code (preflight)
        job_id = client.post("/v1/jobs", json=tiny_spec()).raise_for_status().json()["id"]
        row = wait_for(
            lambda: (
                (r := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed", "canceled") and r
            ),
            180,
            "the job",
            every=0.5,
        )
        assert row["status"] == "succeeded", (row, (data / "worker.log").read_text()[-3000:])
        names = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
        assert "hydra_k0.1.compressed.safetensors" in names
        assert (data / "hydra.db").is_file() and (data / "broker.db").is_file()
        assert list((data / "objects" / "jobs" / job_id / "artifacts").iterdir())
        assert not list(cwd.iterdir())  # the state does not depend on where serve was started
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 1
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(timeout=60)
    text = log_path.read_text()
    assert "worker stopped (exit 0)" in text, text[-3000:]
    assert code in (0, 130, -signal.SIGINT)
    assert not _alive(int(workers[0]))
    # a second start reuses the admin key that still works
    assert key_path.read_text().strip() == key
