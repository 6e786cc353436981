"""The job row's state machine, on Postgres and on SQLite: idempotent creation, the lease that keeps
two attempts from ever writing to one job, cancellation, the reaper and artifacts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from service.db import jobs, keys
from service.db.base import JobStatus, utcnow
from service.db.session import build_engine, get_sessionmaker
from service.settings import Settings
from tests.service.svc_helpers import migrate


@pytest.fixture(params=["postgresql", "sqlite"])
def db_settings(request, database_url: str, tmp_path: Path) -> Settings:  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        return Settings(database_url=database_url)
    url = f"sqlite:///{tmp_path / 'hydra.db'}"
    migrate(url)
    return Settings(database_url=url)


@pytest.fixture
def make_session(db_settings: Settings):  # type: ignore[no-untyped-def]
    return get_sessionmaker(db_settings)


@pytest.fixture
def tenant_id(make_session) -> int:  # type: ignore[no-untyped-def]
    import uuid

    with make_session() as s:
        return keys.get_or_create_tenant(s, f"t-{uuid.uuid4().hex[:8]}").id


def new_job(make_session, tenant_id: int, key: str | None = None, max_attempts: int = 3) -> str:  # type: ignore[no-untyped-def]
    with make_session() as s:
        job, created = jobs.create_job(s, tenant_id, {"name": "j", "seed": 1}, key, max_attempts)
        assert created
        return job.id


def statuses(s: Session, job_id: str) -> list[str]:
    return [e.payload["status"] for e in jobs.list_events(s, job_id) if e.kind == "status"]


def test_create_is_idempotent_per_tenant(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    with make_session() as s:
        a, created_a = jobs.create_job(s, tenant_id, {"seed": 1}, "key-1", 3)
        b, created_b = jobs.create_job(s, tenant_id, {"seed": 1}, "key-1", 3)
        c, created_c = jobs.create_job(s, tenant_id, {"seed": 1}, None, 3)
        other = keys.get_or_create_tenant(s, f"other-{tenant_id}")
        d, created_d = jobs.create_job(s, other.id, {"seed": 1}, "key-1", 3)
    assert (created_a, created_b, created_c, created_d) == (True, False, True, True)
    assert a.id == b.id and len({a.id, c.id, d.id}) == 3
    assert a.status == JobStatus.QUEUED and a.attempt == 0 and a.max_attempts == 3


def test_concurrent_creates_with_one_key_make_one_job(make_session, tenant_id, db_settings) -> None:  # type: ignore[no-untyped-def]
    """250 simultaneous submissions with the same Idempotency-Key: one row, every caller gets its id."""

    def submit(_: int) -> tuple[str, bool]:
        with make_session() as s:
            job, created = jobs.create_job(s, tenant_id, {"seed": 7}, "same-key", 3)
            return job.id, created

    workers = 32 if db_settings.database_url.startswith("postgresql") else 8
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(submit, range(250)))
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with make_session() as s:
        rows, count = jobs.list_jobs(s, tenant_id)
    assert count == 1


def test_claim_lease_and_refusals(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(make_session, tenant_id)
    with make_session() as s:
        assert jobs.claim_job(s, job_id, "w1", 60) == 1
        assert jobs.claim_job(s, job_id, "w2", 60) is None  # lease held: a duplicate message loses
        assert jobs.heartbeat(s, job_id, "w1", 1, 60)
        assert not jobs.heartbeat(s, job_id, "w2", 1, 60)
        assert jobs.record_progress(
            s,
            job_id,
            "w1",
            1,
            stage="prune",
            variant="hydra-k0.01",
            epoch=3,
            epochs=20,
            fraction=0.4,
            metrics={"loss": 0.5, "bad": float("nan")},
        )
        job = jobs.get_job(s, tenant_id, job_id)
        assert (job.status, job.stage, job.variant, job.epoch, job.epochs) == ("running", "prune", "hydra-k0.01", 3, 20)
        assert job.fraction == pytest.approx(0.4) and job.metrics == {"loss": 0.5, "bad": None}
        assert job.started_at is not None and job.lease_expires_at > utcnow() + timedelta(seconds=50)
        # progress without a lease length keeps the granted length
        assert jobs.record_progress(s, job_id, "w1", 1, epoch=4)
        job = jobs.get_job(s, None, job_id)
        assert job.stage == "prune" and job.epoch == 4
        assert job.lease_expires_at > utcnow() + timedelta(seconds=50)
        assert not jobs.record_progress(s, job_id, "w1", 2, epoch=5)  # wrong attempt
        assert not jobs.finish_job(s, job_id, "w2", 1, "succeeded")
        assert jobs.finish_job(s, job_id, "w1", 1, "succeeded", report={"ok": True})
        assert not jobs.finish_job(s, job_id, "w1", 1, "failed", error_reason="late")  # final is final
        job = jobs.get_job(s, tenant_id, job_id)
        assert job.status == "succeeded" and job.report == {"ok": True} and job.fraction == 1.0
        assert job.finished_at is not None and job.error_reason is None
        assert statuses(s, job_id) == ["queued", "running", "succeeded"]
        assert jobs.claim_job(s, job_id, "w3", 60) is None


def test_expired_lease_is_taken_over_and_the_loser_is_refused(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(make_session, tenant_id)
    with make_session() as s:
        assert jobs.claim_job(s, job_id, "w1", 0.001) == 1
        import time

        time.sleep(0.05)
        assert jobs.claim_job(s, job_id, "w2", 60) == 2  # the lease ran out: the job is taken over
        assert not jobs.heartbeat(s, job_id, "w1", 1, 60)  # the presumed-dead worker can write nothing
        assert not jobs.record_progress(s, job_id, "w1", 1, epoch=9)
        assert not jobs.finish_job(s, job_id, "w1", 1, "failed", error_reason="x")
        assert jobs.finish_job(s, job_id, "w2", 2, "failed", error_reason="diverged")
        job = jobs.get_job(s, None, job_id)
        assert (job.status, job.attempt, job.error_reason, job.lease_owner) == ("failed", 2, "diverged", "w2")


def test_reaper_requeues_then_gives_up(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(make_session, tenant_id, max_attempts=2)
    later = lambda: utcnow() + timedelta(seconds=120)  # noqa: E731
    with make_session() as s:
        # (the database is shared by the session's tests: look only at this job)
        assert job_id not in jobs.requeue_stale_jobs(s, now=later())
        assert jobs.claim_job(s, job_id, "w1", 60) == 1
        assert job_id not in jobs.requeue_stale_jobs(s)  # lease still valid
        assert job_id in jobs.requeue_stale_jobs(s, now=later())
        job = jobs.get_job(s, None, job_id)
        assert job.status == "queued" and job.lease_owner is None and job.attempt == 1
        assert job_id in jobs.list_unsent_queued(s, older_than_s=0, now=later())
        assert jobs.claim_job(s, job_id, "w2", 60) == 2
        assert job_id not in jobs.requeue_stale_jobs(s, now=later())  # out of attempts: failed, not requeued
        job = jobs.get_job(s, None, job_id)
        assert job.status == "failed"
        assert job.error_reason == "gave up after 2 attempts (worker lost each time)"
        assert jobs.claim_job(s, job_id, "w3", 60) is None
        assert statuses(s, job_id) == ["queued", "running", "queued", "running", "failed"]


def test_cancel_queued_running_and_stale(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    queued, running, stale = (new_job(make_session, tenant_id) for _ in range(3))
    with make_session() as s:
        job = jobs.request_cancel(s, tenant_id, queued)
        assert job.status == "canceled" and job.finished_at is not None
        assert jobs.claim_job(s, queued, "w", 60) is None
        assert jobs.is_cancel_requested(s, queued)

        assert jobs.claim_job(s, running, "w", 60) == 1
        assert not jobs.is_cancel_requested(s, running)
        job = jobs.request_cancel(s, tenant_id, running)
        assert job.status == "running" and job.cancel_requested
        assert jobs.is_cancel_requested(s, running)
        assert jobs.finish_job(s, running, "w", 1, "canceled")

        assert jobs.claim_job(s, stale, "w", 60) == 1
        jobs.request_cancel(s, tenant_id, stale)
        assert stale not in jobs.requeue_stale_jobs(s, now=utcnow() + timedelta(seconds=120))
        assert jobs.get_job(s, None, stale).status == "canceled"

        assert jobs.request_cancel(s, tenant_id + 10_000, queued) is None  # not the tenant's job
        assert jobs.request_cancel(s, tenant_id, "no-such-job") is None


def test_unsent_queued_sweep(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    sent, unsent = new_job(make_session, tenant_id), new_job(make_session, tenant_id)
    with make_session() as s:
        jobs.mark_enqueued(s, sent)
        soon = utcnow() + timedelta(seconds=61)
        found = jobs.list_unsent_queued(s, older_than_s=60, now=soon)
        assert unsent in found and sent not in found
        assert unsent not in jobs.list_unsent_queued(s, older_than_s=60)  # too fresh: the API may still send
        resend = jobs.list_unsent_queued(s, older_than_s=60, resend_after_s=30, now=soon)
        assert sent in resend and unsent in resend


def test_events_cursor(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(make_session, tenant_id)
    with make_session() as s:
        ids = [jobs.append_event(s, job_id, "epoch_finished", {"epoch": i, "acc": 0.5}) for i in range(5)]
        assert ids == sorted(ids)
        after = jobs.list_events(s, job_id, after_id=ids[1])
        assert [e.payload["epoch"] for e in after] == [2, 3, 4]
        assert [e.payload["epoch"] for e in jobs.list_events(s, job_id, after_id=ids[1], limit=2)] == [2, 3]


def test_artifacts_upsert(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(make_session, tenant_id)
    with make_session() as s:
        jobs.add_artifact(s, job_id, "model.safetensors", "k/1", 10, "a" * 64, "application/octet-stream")
        jobs.add_artifact(s, job_id, "report.json", "k/2", 5, "b" * 64, "application/json")
        art = jobs.add_artifact(s, job_id, "model.safetensors", "k/3", 11, "c" * 64)  # a retried attempt
        assert (art.storage_key, art.size, art.sha256) == ("k/3", 11, "c" * 64)
        assert [a.name for a in jobs.list_artifacts(s, job_id)] == ["model.safetensors", "report.json"]
        assert jobs.get_artifact(s, job_id, "nope") is None


def test_sqlite_engine_creates_its_folder(tmp_path: Path) -> None:
    engine = build_engine(f"sqlite:///{tmp_path / 'deep' / 'er' / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_release_hands_the_job_back_without_spending_an_attempt(make_session, tenant_id) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(make_session, tenant_id, max_attempts=1)
    with make_session() as s:
        assert jobs.claim_job(s, job_id, "w1", 60) == 1
        assert not jobs.release_job(s, job_id, "w2", 1, "not mine")
        assert jobs.release_job(s, job_id, "w1", 1, "SIGTERM")
        job = jobs.get_job(s, None, job_id)
        assert (job.status, job.attempt, job.max_attempts, job.lease_owner) == ("queued", 1, 2, None)
        assert not jobs.release_job(s, job_id, "w1", 1, "twice")
        assert jobs.claim_job(s, job_id, "w2", 60) == 2  # claimable again despite max_attempts=1 at first
        assert statuses(s, job_id) == ["queued", "running", "queued", "running"]
