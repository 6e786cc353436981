"""``/metrics`` in the Prometheus text format: the API's HTTP traffic and the state of the jobs.

- HTTP: request counts, sizes and latency by route template and method
  (``prometheus-fastapi-instrumentator``: ``http_requests_total``, ``http_request_duration_seconds``...).
  Counted per API process; with several uvicorn workers set ``PROMETHEUS_MULTIPROC_DIR`` to a shared
  empty folder and every process answers for all of them.
- Jobs: computed from the database when scraped, so every API process gives the same answer and no
  worker needs an exporter of its own: jobs by status, queue depth and the age of the oldest queued
  job, running jobs, leases already expired (a worker presumed dead, not yet reaped), attempts, lease
  expiries (from the jobs' status events), the age of the stalest busy worker's last job heartbeat,
  the workers alive (their own heartbeat, busy or idle, younger than the lease: what ``/readyz``
  needs) and the age of the newest one, and the duration of every training epoch (from the events: the time since the previous milestone of the
  same job: stage start, epoch end or attempt start).

No label names a host, a pid or a tenant: ``/metrics`` asks for no key, so it carries aggregates only;
per-worker detail is ``hydra-service workers`` on a machine with the database's credentials.

The epoch histogram is accumulated incrementally (events after the last one seen), so a scrape reads
only the new events; it counts from the start of the process, like any counter. Events younger than
a few seconds are left for the next scrape, so that one committed late (ids are handed out before
commit) is not skipped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy import func, not_, select

from service.db import workers
from service.db.base import Job, JobEvent, JobStatus, utcnow
from service.db.session import get_read_sessionmaker
from service.settings import Settings

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
EPOCH_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
MILESTONES = ("stage_started", "epoch_finished", "attempt_started", "status")
SETTLE_S = 5.0
BATCH = 5000


class EpochDurations:
    """The epoch-duration histogram, fed with the events after the last one seen."""

    def __init__(self) -> None:
        self.cursor = 0
        self.last_milestone: dict[str, datetime] = {}  # job id -> time of its last milestone
        self.counts: dict[str, list[int]] = {}  # stage -> per-bucket counts (non-cumulative), +Inf last
        self.sums: dict[str, float] = {}
        self.lock = threading.Lock()

    def observe(self, stage: str, seconds: float) -> None:
        counts = self.counts.setdefault(stage, [0] * (len(EPOCH_BUCKETS) + 1))
        index = next((i for i, bound in enumerate(EPOCH_BUCKETS) if seconds <= bound), len(EPOCH_BUCKETS))
        counts[index] += 1
        self.sums[stage] = self.sums.get(stage, 0.0) + seconds

    def update(self, session: Any, now: datetime) -> None:
        with self.lock:
            settled = now - timedelta(seconds=SETTLE_S)
            while True:
                rows = session.execute(
                    select(
                        JobEvent.id,
                        JobEvent.job_id,
                        JobEvent.kind,
                        JobEvent.created_at,
                        JobEvent.payload["stage"].as_string(),
                        JobEvent.payload["status"].as_string(),
                    )
                    .where(JobEvent.id > self.cursor, JobEvent.kind.in_(MILESTONES), JobEvent.created_at < settled)
                    .order_by(JobEvent.id)
                    .limit(BATCH)
                ).all()
                for event_id, job_id, kind, created_at, stage, status in rows:
                    self.cursor = event_id
                    if kind == "status":
                        if status in {s.value for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)}:
                            self.last_milestone.pop(job_id, None)
                        elif status == JobStatus.QUEUED.value:  # handed back or requeued: the clock stops
                            self.last_milestone.pop(job_id, None)
                        continue
                    previous = self.last_milestone.get(job_id)
                    if kind == "epoch_finished" and previous is not None:
                        self.observe(stage or "unknown", max(0.0, (created_at - previous).total_seconds()))
                    self.last_milestone[job_id] = created_at
                if len(rows) < BATCH:
                    return

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "hydra_epoch_duration_seconds", "Duration of training epochs, from the jobs' events.", labels=["stage"]
        )
        with self.lock:
            for stage, counts in sorted(self.counts.items()):
                cumulative, buckets = 0, []
                for bound, count in zip([*map(str, EPOCH_BUCKETS), "+Inf"], counts):
                    cumulative += count
                    buckets.append((bound, cumulative))
                family.add_metric([stage], buckets, self.sums[stage])
        return family


class JobMetricsCollector(Collector):
    """The job metrics, read from the database at every scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.epochs = EpochDurations()

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("hydra_metrics_database_up", "1 if the job metrics could be read from the database.")
        try:
            families = self._read()
        except Exception as exc:  # noqa: BLE001 - a scrape must answer, saying what it could not read
            log.warning("job metrics not read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Any]:
        now = utcnow()
        with get_read_sessionmaker(self.settings)() as session:
            by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            queued = session.execute(
                select(func.count(), func.min(Job.created_at)).where(
                    Job.status == JobStatus.QUEUED.value, not_(Job.cancel_requested)
                )
            ).one()
            expired = session.execute(
                select(func.count()).where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
            ).scalar_one()
            attempts, retried = session.execute(
                select(func.coalesce(func.sum(Job.attempt), 0), func.count().filter(Job.attempt > 1))
            ).one()
            lease_expiries = session.execute(
                select(func.count()).where(
                    JobEvent.kind == "status", JobEvent.payload["reason"].as_string() == "lease expired"
                )
            ).scalar_one()
            beats = session.execute(
                select(Job.lease_owner, Job.heartbeat_at).where(Job.status == JobStatus.RUNNING.value)
            ).all()
            liveness = workers.liveness(session, self.settings.lease_seconds)
            self.epochs.update(session, now)
        latest: dict[str, datetime] = {}  # worker (host:pid) -> its newest job heartbeat; never exported
        for owner, beat in beats:
            if owner and beat is not None:
                worker = owner.rsplit(":", 1)[0]  # host:pid (the suffix is per attempt)
                latest[worker] = max(beat, latest.get(worker, beat))

        jobs = GaugeMetricFamily("hydra_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        depth = GaugeMetricFamily("hydra_queue_depth", "Queued jobs waiting for a worker.")
        depth.add_metric([], queued[0])
        oldest = GaugeMetricFamily("hydra_queue_oldest_age_seconds", "Age of the oldest queued job (0: none).")
        oldest.add_metric([], (now - queued[1]).total_seconds() if queued[1] is not None else 0.0)
        running = GaugeMetricFamily("hydra_jobs_running", "Jobs a worker is training now.")
        running.add_metric([], by_status.get(JobStatus.RUNNING.value, 0))
        stale = GaugeMetricFamily(
            "hydra_jobs_lease_expired", "Running jobs whose lease expired (worker presumed lost, not yet reaped)."
        )
        stale.add_metric([], expired)
        attempts_total = CounterMetricFamily("hydra_job_attempts", "Attempts started, over all jobs.")
        attempts_total.add_metric([], int(attempts or 0))
        retried_jobs = GaugeMetricFamily("hydra_jobs_retried", "Jobs that needed more than one attempt.")
        retried_jobs.add_metric([], int(retried or 0))
        expiries = CounterMetricFamily("hydra_lease_expiries", "Leases that expired and were reaped (status events).")
        expiries.add_metric([], lease_expiries)
        # Aggregates only (no key is asked for /metrics): no host name or pid in any label. Per-worker
        # detail is for the operator on the machine: ``hydra-service workers``.
        heartbeat = GaugeMetricFamily(
            "hydra_worker_heartbeat_age_seconds",
            "Seconds since the stalest busy worker's last job heartbeat (0: no job running).",
        )
        heartbeat.add_metric([], max((max(0.0, (now - beat).total_seconds()) for beat in latest.values()), default=0.0))
        busy = GaugeMetricFamily("hydra_workers_busy", "Workers holding a job's lease.")
        busy.add_metric([], len(latest))
        alive = GaugeMetricFamily(
            "hydra_workers_alive", "Workers whose own heartbeat is younger than the lease (what /readyz needs: >= 1)."
        )
        alive.add_metric([], liveness.alive)
        newest = GaugeMetricFamily(
            "hydra_workers_newest_heartbeat_age_seconds",
            "Seconds since the newest heartbeat of any worker, busy or idle (absent: no worker ever beat).",
        )
        if liveness.newest_age_s is not None:
            newest.add_metric([], liveness.newest_age_s)
        return [
            jobs,
            depth,
            oldest,
            running,
            stale,
            attempts_total,
            retried_jobs,
            expiries,
            heartbeat,
            busy,
            alive,
            newest,
            self.epochs.family(),
        ]


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """Count the app's requests and serve ``/metrics`` (HTTP metrics, then the job metrics)."""
    http_registry = CollectorRegistry(auto_describe=True)  # one per app: tests build many apps in one process
    Instrumentator(
        registry=http_registry,
        excluded_handlers=[METRICS_PATH],
        should_group_status_codes=False,
    ).instrument(app)
    jobs_registry = CollectorRegistry(auto_describe=False)
    jobs_registry.register(JobMetricsCollector(settings))

    @app.get(METRICS_PATH, include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text format (no API key: aggregates only, no tenant's data)."""
        registry = http_registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry) + generate_latest(jobs_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
