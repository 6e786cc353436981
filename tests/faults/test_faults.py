"""Faults with real processes: each scenario runs the API (uvicorn), Celery workers (prefork, as in
production), its own Postgres cluster and Redis server (and, for the store outage, an S3 endpoint),
submits tiny jobs over HTTP, breaks one thing in the middle and checks what a user would see:

- worker SIGKILLed mid-epoch: the job finishes, at most one epoch redone, and its report (and its
  compressed network, byte for byte) equals an uninterrupted run of the same seeded spec;
- Redis killed and restarted mid-job, with and without persistence; Postgres restarted mid-job; the
  API killed and restarted mid-job: no job lost, none stuck, none run twice, time to recovery noted;
- the object store unreachable when a job finishes: the upload is retried, the job fails with a
  reason, and no half-written artifact is listed.

This process plays the reaper (``worker.reaper.sweep``), as the beat or the embedded thread does in
production. A summary table (tried / survived / lost, recovery) is printed at the end of the run.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.fault_helpers import RESULTS, Outcome, wait_for
from tests.worker.worker_helpers import tiny_spec

pytestmark = pytest.mark.slow

FINAL = {"succeeded", "failed", "canceled"}
VARIANT = "hydra_k0.1"
ARTIFACT = f"{VARIANT}.compressed.safetensors"
SLOW_BATCH_S = 0.15  # per-batch delay of a worker, so a test can act in the middle of an epoch


def quick_spec(name: str) -> dict[str, Any]:
    """The tiny spec with one pretraining epoch and nothing else to train: a job that only has to run."""
    return tiny_spec(name=name, stages={"pretrain": {"epochs": 1, "lr": 0.05}, "prune": None, "finetune": None})


# ----------------------------------------------------------------------------- helpers
def _row(scenario: Any, job_id: str) -> dict[str, Any]:
    """The job row read from the database (works while the API is down)."""
    from service.db import jobs
    from service.db.session import session_scope

    with session_scope(scenario.settings) as session:
        job = jobs.get_job(session, None, job_id)
        assert job is not None
        return {
            "status": job.status,
            "attempt": job.attempt,
            "stage": job.stage,
            "epoch": job.epoch,
            "fraction": job.fraction,
            "error_reason": job.error_reason,
            "report": job.report,
        }


def _events(scenario: Any, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    from service.db import jobs
    from service.db.session import session_scope

    with session_scope(scenario.settings) as session:
        rows = jobs.list_events(session, job_id, limit=10_000)
        return [
            {"kind": e.kind, "payload": e.payload, "at": e.created_at} for e in rows if kind is None or e.kind == kind
        ]


def _epochs(scenario: Any, job_id: str) -> list[tuple[str, str, int]]:
    return [
        (e["payload"]["stage"], e["payload"]["variant"], e["payload"]["epoch"])
        for e in _events(scenario, job_id, "epoch_finished")
    ]


def _statuses(scenario: Any, job_id: str) -> list[str]:
    return [e["payload"]["status"] for e in _events(scenario, job_id, "status")]


def _submit(client: Any, spec: dict[str, Any], key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    response = client.post("/v1/jobs", json=spec, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def _wait_final(scenario: Any, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Sweep (the reaper) until every job is final; returns the rows (non-final ones too on timeout)."""
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        scenario.sweep()
        try:
            rows = {j: _row(scenario, j) for j in job_ids}
        except Exception:  # noqa: BLE001 - the database may be down in a scenario
            time.sleep(0.5)
            continue
        if all(r["status"] in FINAL for r in rows.values()):
            return rows
        time.sleep(0.5)
    return rows


def _ran_once(scenario: Any, job_id: str) -> bool:
    """One attempt, one 'running', and no epoch trained to the end twice."""
    epochs = _epochs(scenario, job_id)
    return _statuses(scenario, job_id).count("running") == 1 and len(epochs) == len(set(epochs))


def _never_twice_at_once(scenario: Any, job_id: str) -> bool:
    """Attempts strictly one after the other (each 'running' followed by a hand-back or the end), every
    later attempt resumed from the checkpoint, and at most one epoch trained to the end twice."""
    statuses = _statuses(scenario, job_id)
    alternating = all(a != b for a, b in zip(statuses, statuses[1:]))
    starts = [e["payload"] for e in _events(scenario, job_id, "attempt_started")]
    resumed = all(s.get("resumed_from_checkpoint") for s in starts[1:])
    epochs = _epochs(scenario, job_id)
    return alternating and resumed and len(epochs) - len(set(epochs)) <= 1


def _record(outcome: Outcome) -> None:
    """Listed in the summary at once; counted lost until the scenario shows otherwise."""
    outcome.lost = outcome.tried
    RESULTS.append(outcome)


def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    return {name: v["metrics"] for name, v in report["variants"].items()}


# ----------------------------------------------------------------------------- scenarios
def test_worker_sigkill_mid_epoch_resumes_and_matches_an_uninterrupted_run(make_stack: Any) -> None:
    scenario = make_stack()
    stack = scenario.stack
    stack.start_api()
    client = scenario.client()
    spec = tiny_spec(name="faults-sigkill", stages={"pretrain": {"epochs": 3, "lr": 0.05}})
    outcome = Outcome("worker SIGKILL mid-epoch", tried=1)
    _record(outcome)

    # the reference: the same seeded spec, never interrupted (the batch delay changes timing only)
    slow = stack.start_worker(batch_delay_s=SLOW_BATCH_S)
    reference = _submit(client, spec)
    ref_row = _wait_final(scenario, [reference], 300)[reference]
    assert ref_row["status"] == "succeeded", ref_row

    job_id = _submit(client, spec)
    wait_for(
        lambda: len(_epochs(scenario, job_id)) >= 1 and _row(scenario, job_id)["epoch"] == 2,
        240,
        "the second pretraining epoch to be under way",
    )
    time.sleep(2 * SLOW_BATCH_S)  # a batch or two into it: mid-epoch
    slow.kill()  # SIGKILL, main process and pool child
    killed_at = time.monotonic()
    stack.start_worker()

    def resumed() -> bool:
        scenario.sweep()
        return _statuses(scenario, job_id).count("running") >= 2

    wait_for(resumed, 120, "a second attempt to start", every=0.5)
    outcome.recovery_s = time.monotonic() - killed_at
    row = _wait_final(scenario, [job_id], 300)[job_id]
    epochs = _epochs(scenario, job_id)
    redone = sum(n - 1 for n in Counter(epochs).values())
    listing = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    ref_listing = {a["name"]: a for a in client.get(f"/v1/jobs/{reference}/artifacts").json()["data"]}
    same = (
        row["status"] == "succeeded"
        and _metrics(row["report"]) == _metrics(ref_row["report"])
        and listing.get(ARTIFACT, {}).get("sha256") == ref_listing[ARTIFACT]["sha256"]
    )
    outcome.survived, outcome.lost = (1, 0) if same and redone <= 1 else (0, 1)
    outcome.note = f"attempts {row['attempt']}, epochs finished twice: {redone}, report equal: {same}"

    assert row["status"] == "succeeded" and row["attempt"] == 2, row
    assert _statuses(scenario, job_id) == ["queued", "running", "queued", "running", "succeeded"]
    assert redone <= 1, epochs
    assert [e for s, _, e in epochs if s == "pretrain"][-1] == 3
    assert _metrics(row["report"]) == _metrics(ref_row["report"])
    assert listing[ARTIFACT]["sha256"] == ref_listing[ARTIFACT]["sha256"]  # the same network, byte for byte


@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "aof-persistence"])
def test_redis_restarted_mid_job_loses_no_job_and_runs_none_twice(make_stack: Any, persistent: bool) -> None:
    scenario = make_stack(persistent_redis=persistent)
    stack = scenario.stack
    stack.start_api()
    client = scenario.client()
    worker = stack.start_worker(batch_delay_s=SLOW_BATCH_S)
    outcome = Outcome(f"Redis restarted mid-job ({'AOF' if persistent else 'no persistence'})")
    _record(outcome)

    running = _submit(client, tiny_spec(name="redis-running", stages={"pretrain": {"epochs": 2, "lr": 0.05}}))
    waiting = _submit(client, quick_spec("redis-waiting"))  # its message waits in Redis behind the first
    wait_for(lambda: len(_epochs(scenario, running)) >= 1, 240, "the first job to train an epoch")
    scenario.sweep()  # the reaper has seen this Redis
    scenario.redis.kill()
    during = _submit(client, quick_spec("redis-during-outage"))  # stored; the broker cannot take it
    time.sleep(2)
    scenario.redis.start()
    back_at = time.monotonic()
    jobs = [running, waiting, during]
    outcome.tried = outcome.lost = len(jobs)
    connected = worker.log().count("Connected to redis://")
    wait_for(lambda: worker.log().count("Connected to redis://") > connected, 120, "the worker to reconnect")
    outcome.recovery_s = time.monotonic() - back_at  # the worker consumes again

    def all_started() -> bool:
        scenario.sweep()
        return all("running" in _statuses(scenario, j) for j in jobs)

    wait_for(all_started, 240, "every job to start after the restart", every=0.5)
    rows = _wait_final(scenario, jobs, 300)
    ok = [j for j in jobs if rows[j]["status"] == "succeeded" and _ran_once(scenario, j)]
    outcome.survived, outcome.lost = len(ok), len(jobs) - len(ok)
    outcome.note = "recovery = worker reconnected; statuses " + ", ".join(rows[j]["status"] for j in jobs)

    for job_id in jobs:
        assert rows[job_id]["status"] == "succeeded", (job_id, rows[job_id], _statuses(scenario, job_id))
        assert rows[job_id]["attempt"] == 1 and _ran_once(scenario, job_id), [
            e["payload"] for e in _events(scenario, job_id, "status")
        ]


def test_postgres_restarted_mid_job_loses_no_job_and_runs_none_twice(make_stack: Any) -> None:
    # a lease longer than the restart: heartbeats missed during the outage do not lose the job
    scenario = make_stack(lease_seconds=15)
    stack = scenario.stack
    stack.start_api()
    client = scenario.client()
    stack.start_worker(batch_delay_s=SLOW_BATCH_S)
    outcome = Outcome("Postgres restarted mid-job")
    _record(outcome)

    running = _submit(client, tiny_spec(name="pg-running", stages={"pretrain": {"epochs": 3, "lr": 0.05}}))
    wait_for(lambda: len(_epochs(scenario, running)) >= 1, 240, "the job to train an epoch")
    scenario.pg.stop("fast")
    down = client.get(f"/v1/jobs/{running}")
    assert down.status_code == 503, down.text  # not a 500: the client is told to retry
    assert set(down.json()) == {"error_code", "detail", "field"}
    refused = client.post("/v1/jobs", json=quick_spec("pg-during-outage"), headers={"Idempotency-Key": "pg-1"})
    assert refused.status_code == 503, refused.text
    time.sleep(2)
    scenario.pg.start()
    back_at = time.monotonic()
    wait_for(lambda: client.get(f"/v1/jobs/{running}").status_code == 200, 60, "the API to read again")
    outcome.recovery_s = time.monotonic() - back_at
    retried = _submit(client, quick_spec("pg-during-outage"), key="pg-1")  # the client's retry
    again = _submit(client, quick_spec("pg-during-outage"), key="pg-1")
    assert retried == again
    jobs = [running, retried]
    outcome.tried = outcome.lost = len(jobs)
    rows = _wait_final(scenario, jobs, 300)
    # A write the running attempt cannot retry (an artifact row, its outcome) fails it during the
    # outage; its lease then lapses and a second attempt resumes from the last checkpoint. That is
    # the designed recovery, not a second run: attempts never overlap and no epoch is trained over.
    ok = [j for j in jobs if rows[j]["status"] == "succeeded" and _never_twice_at_once(scenario, j)]
    outcome.survived, outcome.lost = len(ok), len(jobs) - len(ok)
    outcome.note = "recovery = API reads again (503 while down); attempts " + ", ".join(
        str(rows[j]["attempt"]) for j in jobs
    )
    listed = client.get("/v1/jobs", params={"limit": 200}).json()
    assert listed["count"] == 2  # the refused submission and its retry made one job

    for job_id in jobs:
        assert rows[job_id]["status"] == "succeeded", (job_id, rows[job_id], _statuses(scenario, job_id))
        assert _never_twice_at_once(scenario, job_id), [e["payload"] for e in _events(scenario, job_id, "status")]
    assert rows[retried]["attempt"] == 1  # submitted after the outage: untouched by it


def test_api_restarted_mid_job_loses_no_job(make_stack: Any) -> None:
    scenario = make_stack()
    stack = scenario.stack
    api = stack.start_api()
    client = scenario.client()
    stack.start_worker(batch_delay_s=SLOW_BATCH_S)
    outcome = Outcome("API killed and restarted mid-job")
    _record(outcome)

    running = _submit(client, tiny_spec(name="api-running", stages={"pretrain": {"epochs": 2, "lr": 0.05}}))
    keyed = _submit(client, quick_spec("api-keyed"), key="api-1")
    wait_for(lambda: len(_epochs(scenario, running)) >= 1, 240, "the job to train an epoch")
    api.kill()
    killed_at = time.monotonic()
    stack.start_api()
    outcome.recovery_s = time.monotonic() - killed_at
    assert _submit(client, quick_spec("api-keyed"), key="api-1") == keyed  # a client's retry: same job
    after = _submit(client, quick_spec("api-after-restart"))
    jobs = [running, keyed, after]
    outcome.tried = outcome.lost = len(jobs)
    rows = _wait_final(scenario, jobs, 300)
    ok = [j for j in jobs if rows[j]["status"] == "succeeded" and _ran_once(scenario, j)]
    outcome.survived, outcome.lost = len(ok), len(jobs) - len(ok)
    outcome.note = "recovery = API back up; statuses " + ", ".join(rows[j]["status"] for j in jobs)
    assert client.get("/v1/jobs").json()["count"] == 3

    for job_id in jobs:
        assert rows[job_id]["status"] == "succeeded", (job_id, rows[job_id], _statuses(scenario, job_id))
        assert rows[job_id]["attempt"] == 1 and _ran_once(scenario, job_id), [
            e["payload"] for e in _events(scenario, job_id, "status")
        ]


def test_object_store_unreachable_at_the_end_fails_the_job_with_a_reason(make_stack: Any) -> None:
    scenario = make_stack(s3=True)
    stack = scenario.stack
    stack.start_api()
    client = scenario.client()
    worker = stack.start_worker(batch_delay_s=0.1)
    outcome = Outcome("object store unreachable when the job finishes", tried=1)
    _record(outcome)

    job_id = _submit(client, tiny_spec(name="store-outage"))

    def training_done() -> bool:  # what is left: the final evaluation, its exports and the report
        return any(e["payload"].get("stage") == "finetune" for e in _events(scenario, job_id, "stage_finished"))

    wait_for(training_done, 240, "the last training stage to finish", every=0.05)
    scenario.s3.proxy.cut()
    cut_at = time.monotonic()
    row = _wait_final(scenario, [job_id], 240)[job_id]
    outcome.recovery_s = time.monotonic() - cut_at
    scenario.s3.proxy.restore()
    retried = "failed (try 1); retrying" in worker.log()
    listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
    intact = True
    for artifact in listing:  # whatever is listed is whole: it downloads and matches its sha256
        body = client.get(f"/v1/jobs/{job_id}/artifacts/{artifact['name']}")
        intact &= body.status_code == 200 and hashlib.sha256(body.content).hexdigest() == artifact["sha256"]
    reason = row["error_reason"] or ""
    handled = row["status"] == "failed" and bool(reason) and retried and intact
    outcome.survived, outcome.lost = (1, 0) if handled else (0, 1)
    outcome.note = (
        f"{row['status']} after {'retries' if retried else 'no retry'} ({reason[:40]}...); "
        f"{len(listing)} listed, all whole"
    )

    assert row["status"] == "failed", row
    assert "connect" in reason.lower() or "endpoint" in reason.lower(), reason
    assert retried, worker.log()[-3000:]
    assert ARTIFACT not in {a["name"] for a in listing} or intact
    assert intact, listing
    assert _statuses(scenario, job_id).count("running") == 1
