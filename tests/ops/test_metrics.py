"""``/metrics``: Prometheus text with the HTTP metrics by route and the job metrics read from the
database at scrape time, on Postgres and on SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.db import jobs, workers
from service.db.base import JobEvent, WorkerBeat, utcnow
from service.db.keys import authenticate
from service.db.session import session_scope


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_count_jobs_queue_leases_heartbeats_and_epochs(app, db_settings, make_token, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import api.metrics

    monkeypatch.setattr(api.metrics, "SETTLE_S", 0.0)  # the events below are written with past timestamps
    token = make_token("metrics")
    now = utcnow()
    with session_scope(db_settings) as s:
        tenant_id = authenticate(s, token).tenant_id
        ids = [jobs.create_job(s, tenant_id, {"name": f"j{i}"})[0].id for i in range(5)]
        # ids[0] stays queued; ids[1] runs with a live lease; ids[2] runs with an expired lease, then is
        # reaped; ids[3] succeeded after two attempts; ids[4] canceled while queued
        assert jobs.claim_job(s, ids[1], "host-a:101:aaaa", 600) == 1
        assert jobs.claim_job(s, ids[2], "host-b:202:bbbb", -1) == 1
        assert jobs.requeue_stale_jobs(s) == [ids[2]]
        assert jobs.claim_job(s, ids[2], "host-b:202:cccc", -1) == 2  # expired again, not reaped yet
        assert jobs.claim_job(s, ids[3], "host-c:303:dddd", 600) == 1
        jobs.release_job(s, ids[3], "host-c:303:dddd", 1, "worker shutting down")
        assert jobs.claim_job(s, ids[3], "host-c:303:eeee", 600) == 2
        s.add_all(
            [
                JobEvent(
                    job_id=ids[3],
                    kind="stage_started",
                    payload={"stage": "pretrain"},
                    created_at=now - timedelta(seconds=100),
                ),
                JobEvent(
                    job_id=ids[3],
                    kind="epoch_finished",
                    payload={"stage": "pretrain", "epoch": 1},
                    created_at=now - timedelta(seconds=88),
                ),
                JobEvent(
                    job_id=ids[3],
                    kind="epoch_finished",
                    payload={"stage": "pretrain", "epoch": 2},
                    created_at=now - timedelta(seconds=48),
                ),
                JobEvent(
                    job_id=ids[3],
                    kind="stage_started",
                    payload={"stage": "prune"},
                    created_at=now - timedelta(seconds=47),
                ),
                JobEvent(
                    job_id=ids[3],
                    kind="epoch_finished",
                    payload={"stage": "prune", "epoch": 1},
                    created_at=now - timedelta(seconds=44),
                ),
            ]
        )
        s.commit()
        assert jobs.finish_job(s, ids[3], "host-c:303:eeee", 2, "succeeded", report={})
        jobs.request_cancel(s, tenant_id, ids[4])
        workers.beat(s, "host-z:999", "host-z", 999)  # an idle worker, alive
        s.add(WorkerBeat(name="host-y:888", host="host-y", pid=888, heartbeat_at=now - timedelta(hours=1)))
        s.commit()

    with TestClient(app) as client:
        assert client.get(f"/v1/jobs/{ids[0]}", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/v1/jobs/nope", headers={"Authorization": f"Bearer {token}"}).status_code == 404
        samples = scrape(client)
        again = scrape(client)  # the epoch histogram is incremental: a second scrape counts nothing twice

    assert value(samples, "hydra_metrics_database_up") == 1
    assert {
        st: value(samples, "hydra_jobs", status=st) for st in ("queued", "running", "succeeded", "failed", "canceled")
    } == {"queued": 1, "running": 2, "succeeded": 1, "failed": 0, "canceled": 1}
    assert value(samples, "hydra_queue_depth") == 1
    assert value(samples, "hydra_queue_oldest_age_seconds") >= 0
    assert value(samples, "hydra_jobs_running") == 2
    assert value(samples, "hydra_jobs_lease_expired") == 1
    assert value(samples, "hydra_job_attempts_total") == 1 + 2 + 2
    assert value(samples, "hydra_jobs_retried") == 2
    assert value(samples, "hydra_lease_expiries_total") == 1
    assert value(samples, "hydra_workers_busy") == 2
    # the stalest busy worker: host-b's lease was claimed with -1 s, so its heartbeat is the older one
    assert 0 <= value(samples, "hydra_worker_heartbeat_age_seconds") < 60
    assert value(samples, "hydra_workers_alive") == 1  # host-z beat just now; host-y is long silent
    assert 0 <= value(samples, "hydra_workers_newest_heartbeat_age_seconds") < 60
    # aggregates only: no label anywhere names a host or a pid (nor the worker label at all)
    labels = {label for _, pairs in samples for label in pairs}
    assert not any(name == "worker" for name, _ in labels), sorted(labels)
    assert not any(host in v for _, v in labels for host in ("host-", "101", "202", "303", "999", "888"))
    assert value(samples, "hydra_epoch_duration_seconds_count", stage="pretrain") == 2
    assert value(samples, "hydra_epoch_duration_seconds_sum", stage="pretrain") == pytest.approx(12 + 40, abs=0.01)
    assert value(samples, "hydra_epoch_duration_seconds_bucket", stage="pretrain", le="15.0") == 1
    assert value(samples, "hydra_epoch_duration_seconds_bucket", stage="pretrain", le="60.0") == 2
    assert value(samples, "hydra_epoch_duration_seconds_count", stage="prune") == 1
    assert value(again, "hydra_epoch_duration_seconds_count", stage="pretrain") == 2
    # HTTP metrics by route template, not by URL
    assert value(samples, "http_requests_total", handler="/v1/jobs/{job_id}", method="GET", status="200") == 1
    assert value(samples, "http_requests_total", handler="/v1/jobs/{job_id}", method="GET", status="404") == 1
    assert value(samples, "http_request_duration_seconds_count", handler="/v1/jobs/{job_id}", method="GET") == 2
    assert not any(name.startswith("http_") and ("handler", "/metrics") in labels for name, labels in samples)


def test_metrics_answer_when_the_database_is_down(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from service.settings import Settings
    from tests.service.svc_helpers import RecordingQueue, build_app

    settings = Settings(
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        broker_url="memory://",
        storage_dir=str(tmp_path / "o"),
        work_dir=str(tmp_path / "w"),
    )
    with TestClient(build_app(settings, RecordingQueue())) as client:
        samples = scrape(client)
    assert value(samples, "hydra_metrics_database_up") == 0
