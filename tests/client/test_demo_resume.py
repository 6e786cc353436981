"""The demo after Ctrl-C: run again, it follows the job the interrupted run submitted (the service
resumes it) instead of submitting a second, identical one; and its last line opens the job in the
dashboard. Against an in-memory stand-in for the jobs API, through the real ``Client``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from hydra_client import Client
from launch import demo

SPEC = {"name": "demo", "seed": 0, "stages": {"pretrain": {"epochs": 1, "lr": 0.1}}}


class Jobs:
    """``POST /v1/jobs`` and ``GET /v1/jobs/{id}``, the job's status set by the test."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.submitted: list[dict[str, Any]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.submitted.append(json.loads(request.content))
            job_id = f"job-{len(self.submitted)}"
            self.rows[job_id] = {"id": job_id, "status": "queued"}
            return httpx.Response(201, json=self.rows[job_id])
        job_id = request.url.path.rsplit("/", 1)[-1]
        if job_id not in self.rows:
            return httpx.Response(404, json={"error_code": "not_found", "detail": "no such job", "field": None})
        return httpx.Response(200, json=self.rows[job_id])

    def client(self, url: str = "http://svc") -> Client:
        return Client(url, "k", transport=httpx.MockTransport(self.handler), retries=0)


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_an_unfinished_or_unshown_job_is_followed_again(tmp_path: Path, status: str) -> None:
    jobs, record = Jobs(), tmp_path / demo.RECORD_NAME
    first, resumed = demo.job_to_follow(jobs.client(), SPEC, record)
    assert (first, resumed) == ("job-1", False)
    jobs.rows[first]["status"] = status
    assert demo.job_to_follow(jobs.client(), SPEC, record) == (first, True)
    assert len(jobs.submitted) == 1


@pytest.mark.parametrize(
    "why", ["failed", "canceled", "shown", "other spec", "other service", "job gone", "record unreadable"]
)
def test_otherwise_a_new_job_is_submitted(tmp_path: Path, why: str) -> None:
    jobs, record = Jobs(), tmp_path / demo.RECORD_NAME
    first, _ = demo.job_to_follow(jobs.client(), SPEC, record)
    jobs.rows[first]["status"] = "running"
    spec, client = SPEC, jobs.client()
    if why in ("failed", "canceled"):
        jobs.rows[first]["status"] = why
    elif why == "shown":
        demo.mark_shown(record, first)
    elif why == "other spec":
        spec = {**SPEC, "seed": 1}
    elif why == "other service":
        client = jobs.client("http://elsewhere")
    elif why == "job gone":
        del jobs.rows[first]
    else:
        record.write_text("{not json")
    assert demo.job_to_follow(client, spec, record) == ("job-2", False)
    assert json.loads(record.read_text())["job_id"] == "job-2"


def test_run_again_after_ctrl_c_follows_the_same_job_and_ends_with_its_dashboard_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = Jobs()
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(json.dumps(SPEC))
    followed: list[str] = []

    def interrupted(client: Client, job_id: str) -> dict[str, Any]:
        followed.append(job_id)
        raise KeyboardInterrupt

    def fails(client: Client, job_id: str) -> dict[str, Any]:
        followed.append(job_id)
        return {"id": job_id, "status": "failed", "error_reason": "stopped by the test"}

    monkeypatch.setattr(demo, "_data_dir", lambda: tmp_path / "data")
    monkeypatch.setattr(demo, "Client", lambda url, key, timeout: jobs.client(url))
    argv = ["--url", "http://svc", "--key", "k", "--spec", str(spec_path)]

    monkeypatch.setattr(demo, "follow", interrupted)
    assert demo.main(argv) == 130
    first = capsys.readouterr()
    assert "run the demo again" in first.err
    assert first.out.strip().splitlines()[-1] == "open the job in the dashboard: http://svc/ui/jobs/job-1"

    jobs.rows["job-1"]["status"] = "running"  # the service resumed it (attempt 2)
    monkeypatch.setattr(demo, "follow", fails)
    assert demo.main(argv) == 1
    second = capsys.readouterr()
    assert followed == ["job-1", "job-1"] and len(jobs.submitted) == 1
    assert "following again job job-1" in second.out
    assert second.out.strip().splitlines()[-1] == "open the job in the dashboard: http://svc/ui/jobs/job-1"
