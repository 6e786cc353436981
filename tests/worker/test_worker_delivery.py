"""Delivery semantics without worker processes: the Celery settings that make a killed worker's job
come back, and the lease that makes every extra delivery harmless (docs/DELIVERY.md, the
failure table). Jobs here are rows only; nothing trains."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.db import jobs as db_jobs
from service.db.keys import get_or_create_tenant
from service.db.session import session_scope


class RecordingCelery:
    """Stands in for the Celery app where a test only checks what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        self.sent.append((name, args, options))


@pytest.fixture
def queued_job(settings: Any) -> Iterator[str]:
    """A job row that must never train: its spec is invalid, and it is canceled after the test."""
    spec = {"name": "row-only", "model": {"arch": "not-a-model"}}
    with session_scope(settings) as session:
        tenant = get_or_create_tenant(session, "delivery-tests")
        job, _ = db_jobs.create_job(session, tenant.id, spec, max_attempts=settings.max_attempts)
    yield job.id
    with session_scope(settings) as session:
        db_jobs.request_cancel(session, None, job.id)


def _row(settings: Any, job_id: str) -> Any:
    with session_scope(settings) as session:
        return db_jobs.get_job(session, None, job_id)


def test_celery_is_configured_so_a_killed_worker_gives_the_message_back(settings: Any) -> None:
    from worker.celery_app import RUN_JOB_TASK, create_celery

    app = create_celery(settings)
    conf = app.conf
    # acks_late alone loses the task of a SIGKILLed pool child; with reject_on_worker_lost it comes back
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_routes[RUN_JOB_TASK]["queue"] == settings.queue_name
    # the visibility timeout is explicit and not "longer than any job": the lease guards duplicates
    assert conf.broker_transport_options["visibility_timeout"] == 3600
    assert "hydra-reaper" in conf.beat_schedule

    import worker.tasks  # noqa: F401 - registers the tasks on the module's app
    from worker.celery_app import app as module_app

    task = module_app.tasks[RUN_JOB_TASK]
    assert task.acks_late is True and task.reject_on_worker_lost is True


def test_a_second_delivery_is_refused_while_the_lease_is_held(settings: Any, queued_job: str) -> None:
    from worker.runner import run_attempt

    with session_scope(settings) as session:
        assert db_jobs.claim_job(session, queued_job, "first-worker", settings.lease_seconds) == 1
    # what a duplicate or redelivered message does: it returns at once and changes nothing
    assert run_attempt(settings, queued_job, app=None) == "not_claimed"
    row = _row(settings, queued_job)
    assert (row.status, row.attempt, row.lease_owner) == ("running", 1, "first-worker")


def test_an_attempt_that_lost_its_lease_stops_and_writes_nothing(
    settings: Any, queued_job: str, tmp_path: Path
) -> None:
    from service.storage import build_store
    from worker.leases import Lease
    from worker.runner import JobCallbacks, checkpoint_key

    with session_scope(settings) as session:
        assert db_jobs.claim_job(session, queued_job, "old", 0.05) == 1
    time.sleep(0.1)  # the old attempt's lease expires (it froze) and a new attempt takes the job
    with session_scope(settings) as session:
        assert db_jobs.claim_job(session, queued_job, "new", settings.lease_seconds) == 2
        n_events = len(db_jobs.list_events(session, queued_job))

    store = build_store(settings)
    callbacks = JobCallbacks(settings, store, Lease(settings, queued_job, "old", 1))
    assert callbacks.should_cancel() is False
    callbacks.on_progress(stage="pretrain", variant="dense", epoch=1, epochs=1, fraction=0.5, metrics={"loss": 1.0})
    assert callbacks.should_cancel() is True  # the refused write stopped the run
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"stale")
    callbacks.on_checkpoint(ckpt)
    callbacks.on_event(
        "epoch_finished", {"stage": "pretrain", "variant": "dense", "epoch": 1, "epochs": 1, "metrics": {}}
    )
    assert not store.exists(checkpoint_key(queued_job))
    row = _row(settings, queued_job)
    assert (row.lease_owner, row.attempt, row.fraction) == ("new", 2, 0.0)
    with session_scope(settings) as session:
        assert len(db_jobs.list_events(session, queued_job)) == n_events


def test_reaper_requeues_a_stale_lease_sends_it_and_gives_up_after_max_attempts(settings: Any, queued_job: str) -> None:
    from worker.reaper import sweep

    app = RecordingCelery()
    for attempt in range(1, settings.max_attempts + 1):
        with session_scope(settings) as session:
            assert db_jobs.claim_job(session, queued_job, f"w{attempt}", 0.05) == attempt
        time.sleep(0.1)  # the worker died: its lease lapses
        result = sweep(settings, app)  # type: ignore[arg-type]
        if attempt < settings.max_attempts:
            assert queued_job in result["requeued"] and queued_job in result["sent"]
            assert app.sent[-1][:2] == ("hydra.run_job", [queued_job])
            assert app.sent[-1][2]["queue"] == settings.queue_name
            assert _row(settings, queued_job).status == "queued"
    row = _row(settings, queued_job)
    assert row.status == "failed"
    assert row.error_reason == f"gave up after {settings.max_attempts} attempts (worker lost each time)"


def test_reaper_sends_a_queued_job_whose_message_was_never_sent(settings: Any, queued_job: str) -> None:
    from worker.reaper import sweep

    app = RecordingCelery()
    assert queued_job not in sweep(settings, app, unsent_after_s=3600)["sent"]  # too young: the API may send it
    time.sleep(0.2)
    assert queued_job in sweep(settings, app, unsent_after_s=0.1)["sent"]
    assert _row(settings, queued_job).enqueued_at is not None
    assert queued_job not in sweep(settings, app, unsent_after_s=0.1)["sent"]  # sent: left alone


def test_a_shutting_down_worker_hands_the_job_back_without_spending_an_attempt(settings: Any, queued_job: str) -> None:
    from worker.dispatch import release_job

    with session_scope(settings) as session:
        assert db_jobs.claim_job(session, queued_job, "leaving", settings.lease_seconds) == 1
        assert release_job(session, queued_job, "leaving", 1, "worker shutting down") is True
        assert release_job(session, queued_job, "leaving", 1, "again") is False  # not the owner any more
    row = _row(settings, queued_job)
    assert (row.status, row.lease_owner, row.max_attempts) == ("queued", None, settings.max_attempts + 1)
    with session_scope(settings) as session:
        assert db_jobs.claim_job(session, queued_job, "next", settings.lease_seconds) == 2


def test_reaper_resends_every_queued_job_when_the_broker_restarted(settings: Any, queued_job: str, monkeypatch) -> None:
    """Redis restarted without persistence forgets the messages of jobs that *were* sent: a new run id
    makes the next sweep send every queued job again (the fault test does it with a real Redis)."""
    from worker import reaper

    app = RecordingCelery()
    app.conf = type("Conf", (), {"broker_url": "redis://restarting:6379/0"})()  # type: ignore[attr-defined]
    monkeypatch.setattr(reaper, "_BROKER_RUN_IDS", {})
    run_id = {"value": "first"}
    monkeypatch.setattr(reaper, "broker_run_id", lambda _app: run_id["value"])
    with session_scope(settings) as session:
        db_jobs.mark_enqueued(session, queued_job)  # sent: only its expiry would bring it back
    assert queued_job not in reaper.sweep(settings, app, unsent_after_s=3600)["sent"]
    assert queued_job not in reaper.sweep(settings, app, unsent_after_s=3600)["sent"]  # same broker: nothing
    run_id["value"] = "second"
    assert queued_job in reaper.sweep(settings, app, unsent_after_s=3600)["sent"]
    assert queued_job not in reaper.sweep(settings, app, unsent_after_s=3600)["sent"]  # once per restart


class FlakySessions:
    """``session_scope`` as seen through a database that refuses the first ``failures`` connections."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def __call__(self, settings: Any) -> Any:
        from sqlalchemy.exc import OperationalError

        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused (test outage)"))
        return session_scope(settings)


@pytest.mark.parametrize("outcome", ["failed", "canceled"])
def test_an_outcome_survives_a_short_database_outage(
    settings: Any, queued_job: str, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    import worker.runner as runner_mod
    from service.storage import build_store
    from worker.leases import Lease

    with session_scope(settings) as session:
        assert db_jobs.claim_job(session, queued_job, "w", settings.lease_seconds) == 1
    flaky = FlakySessions(failures=3)
    monkeypatch.setattr(runner_mod, "session_scope", flaky)
    sleeps: list[float] = []
    monkeypatch.setattr(runner_mod.time, "sleep", sleeps.append)
    attempt = runner_mod.JobAttempt(settings, Lease(settings, queued_job, "w", 1), build_store(settings), None)
    if outcome == "failed":
        assert attempt._fail("boom", {}) == "failed"
    else:
        assert attempt._stopped("canceled during prune") == "canceled"  # no shutdown: a user's cancel
    assert sleeps == list(runner_mod.DB_RETRY_DELAYS_S[:3])  # backed off through the outage, then wrote
    row = _row(settings, queued_job)
    assert (row.status, row.attempt) == (outcome, 1)


def test_a_longer_outage_is_raised_and_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    import worker.runner as runner_mod

    monkeypatch.setattr(runner_mod.time, "sleep", lambda s: None)
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("down"))

    with pytest.raises(OperationalError):
        runner_mod.with_db_retry("test", down)
    assert len(calls) == len(runner_mod.DB_RETRY_DELAYS_S) + 1
    calls.clear()

    def refused() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, ValueError("duplicate key"))

    with pytest.raises(IntegrityError):
        runner_mod.with_db_retry("test", refused)
    assert len(calls) == 1  # a constraint is not an outage


def test_each_retry_is_logged_with_the_try_that_failed(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Operators (and the object-store fault test) read 'failed (try N); retrying' in the worker log."""
    import logging

    import worker.runner as runner_mod

    monkeypatch.setattr(runner_mod.time, "sleep", lambda s: None)
    tries: list[int] = []

    def flaky_put() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("store unreachable")
        return "stored"

    with caplog.at_level(logging.WARNING, logger="worker.runner"):
        assert runner_mod.retrying("upload of k", flaky_put, (Exception,), (2.0, 4.0)) == "stored"
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["upload of k failed (try 1); retrying in 2 s", "upload of k failed (try 2); retrying in 4 s"]


def test_a_dead_rank_is_a_lost_worker_requeued_to_its_gpu_queue(settings: Any, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A data-parallel rank that dies (RankLost) ends the attempt's lease at once; the reaper requeues
    the job with the attempt spent and sends it to the queue of its GPU count (service/routing.py)."""
    import core.pipeline.runner as core_runner
    from core.errors import RankLost
    from worker.reaper import sweep
    from worker.runner import run_attempt

    routed = settings.model_copy(update={"gpu_queues": "4:gpu4"})
    spec = {"name": "rank-lost", "device": "auto", "resources": {"gpus": 4}}
    with session_scope(routed) as session:
        tenant = get_or_create_tenant(session, "delivery-tests")
        job, _ = db_jobs.create_job(session, tenant.id, spec, max_attempts=routed.max_attempts)

    def rank_dies(*args: Any, **kwargs: Any) -> None:
        raise RankLost("a rank of the job died (4 ranks, nccl): process 2 terminated with signal SIGKILL")

    monkeypatch.setattr(core_runner, "run_job", rank_dies)
    try:
        assert run_attempt(routed, job.id) == "rank_lost"
        row = _row(routed, job.id)
        assert (row.status, row.attempt) == ("running", 1)  # no outcome of its own: a lost worker
        with session_scope(routed) as session:
            kinds = [e.kind for e in db_jobs.list_events(session, job.id)]
        assert "rank_lost" in kinds and "error" not in kinds
        app = RecordingCelery()
        result = sweep(routed, app)  # type: ignore[arg-type]
        assert job.id in result["requeued"]
        assert app.sent[-1][:2] == ("hydra.run_job", [job.id]) and app.sent[-1][2]["queue"] == "gpu4"
        assert _row(routed, job.id).status == "queued"
    finally:
        with session_scope(routed) as session:
            db_jobs.request_cancel(session, None, job.id)
