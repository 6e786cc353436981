"""The embedded service notices its worker dying: ``hydra-service serve`` as a user starts it, the
worker SIGKILLed as the OOM killer would, then ``/readyz`` says not-ready within the lease, the launcher
logs the death and restarts the worker after its back-off, and a job submitted meanwhile runs and
succeeds. Settings are shrunk so that it all happens in seconds (a 5 s lease; a restart back-off of
8 s, longer than the lease, so the not-ready window is there to be seen)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.client.embedded_service import TINY_SPEC, EmbeddedService

pytestmark = pytest.mark.slow

LEASE_S = 5
BACKOFF_S = 8.0
MARGIN_S = 3.0  # scheduling on a busy machine, and the last beat before the kill was up to lease/4 old


def _ts(record: dict) -> datetime:
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))


def _worker_pid(service: EmbeddedService) -> int:
    assert service.proc is not None
    out = subprocess.run(["pgrep", "-P", str(service.proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def _wait(predicate, timeout: float, what: str, service: EmbeddedService):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{service.logs()[-4000:]}")


def test_a_sigkilled_worker_makes_the_service_not_ready_is_restarted_and_the_queued_job_succeeds(
    tmp_path: Path,
) -> None:
    service = EmbeddedService(
        tmp_path,
        extra_env={
            "HYDRA_LEASE_SECONDS": str(LEASE_S),
            "HYDRA_WORKER_RESTART_BACKOFF_S": str(BACKOFF_S),
        },
    ).start()
    try:
        client = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}, timeout=60)

        def readyz() -> httpx.Response:
            return httpx.get(f"{service.url}/readyz", timeout=5)

        _wait(lambda: readyz().status_code == 200, 90, "the first worker's heartbeat", service)
        first = _worker_pid(service)
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()

        not_ready = _wait(lambda: (r := readyz()).status_code == 503 and r, LEASE_S + MARGIN_S, "/readyz 503", service)
        flipped_s = time.monotonic() - killed_at
        body = not_ready.json()
        assert body["error_code"] == "service_unavailable"
        assert f"worker (no worker heartbeat within the lease of {LEASE_S} s" in body["detail"], body

        # a job submitted while no worker is alive is accepted and waits in the queue
        spec = {**TINY_SPEC, "pruning": {"methods": ["hydra"], "k": [0.1]}}
        job_id = client.post("/v1/jobs", json=spec).raise_for_status().json()["id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"

        second = _wait(
            lambda: (
                (
                    pids := subprocess.run(
                        ["pgrep", "-P", str(service.proc.pid)], capture_output=True, text=True
                    ).stdout.split()
                )
                and int(pids[0]) != first
                and int(pids[0])
            ),  # fmt: skip
            BACKOFF_S + 10,
            "the restarted worker",
            service,
        )
        assert time.monotonic() - killed_at >= BACKOFF_S - 0.5  # not before its back-off
        _wait(lambda: readyz().status_code == 200, 60, "/readyz 200 with the restarted worker", service)
        ready_again_s = time.monotonic() - killed_at

        row = _wait(
            lambda: (
                (r := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed", "canceled") and r
            ),
            180,
            "the job queued while the worker was dead",
            service,
        )
        assert row["status"] == "succeeded", (row, service.logs()[-3000:])
        # the launcher's own account, one JSON line each: the death (with its signal), then the restart
        records = [json.loads(line) for line in service.serve_log.read_text().splitlines() if line.startswith("{")]
        died = [
            r for r in records if r["message"].startswith(f"worker (pid {first}) died: killed by SIGKILL (signal 9)")
        ]
        restarted = [r for r in records if r["message"] == f"worker restarted (pid {second}, restart 1)"]
        assert len(died) == 1 and len(restarted) == 1, service.logs()[-3000:]
        assert died[0]["level"] == "error" and f"restarting it in {BACKOFF_S:.1f}s" in died[0]["message"]
        restart_s = (_ts(restarted[0]) - _ts(died[0])).total_seconds()
        assert BACKOFF_S <= restart_s < BACKOFF_S + 2, restart_s
        print(
            f"\n/readyz 503 {flipped_s:.1f} s after SIGKILL (lease {LEASE_S} s); death logged, worker restarted "
            f"{restart_s:.2f} s later (back-off {BACKOFF_S} s); /readyz 200 again {ready_again_s:.1f} s after SIGKILL"
        )
    finally:
        code = service.stop()
    assert code in (0, 130, -signal.SIGINT)
    assert "worker stopped (exit 0)" in service.serve_log.read_text()
