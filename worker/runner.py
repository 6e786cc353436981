"""One attempt at one job (``run_attempt``, without a broker; ``worker.tasks`` is a thin shell): claim
the row under a lease, fetch the uploads and the last checkpoint, ``run_job(resume=True)``, then record
exactly one outcome, nothing once the lease is lost. Delivery semantics: docs/DELIVERY.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.callbacks import RunCallbacks
from core.errors import CoreError, RankLost, ResumeMismatch, RunCanceled
from core.vocab import CHECKPOINT_NAME, EPOCH_FINISHED, STAGE_STARTED
from service.db import jobs as db_jobs
from service.db import uploads as db_uploads
from service.db.session import session_scope
from service.logs import job_context as job_log_context
from service.settings import Settings
from service.storage import ObjectStore, build_store
from worker.dispatch import release_job, send_job
from worker.leases import Lease
from worker.signals import shutdown_requested

log = logging.getLogger(__name__)

CANCEL_POLL_INTERVAL_S = 1.0
UPLOAD_RETRY_DELAYS_S = (2.0, 4.0)  # an object-store put: 3 tries
# A database write the job's outcome depends on (the final status, an artifact's row, a hand-back)
# survives a Postgres restart or fail-over: retried on connection errors, 1 + 2 + 4 + 8 + 16 = 31 s in all.
DB_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
TRACEBACK_LINES = 15
CONTENT_TYPES = {
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".safetensors": "application/octet-stream",
}


T = TypeVar("T")


def retrying(
    what: str, action: Callable[[], T], errors: tuple[type[BaseException], ...], delays: tuple[float, ...]
) -> T:
    """``action()``, tried again after each of ``delays`` when it raises one of ``errors``."""
    # Kept rather than tenacity (issue 17 item 7): one 12-line loop serving two call sites with fixed,
    # tested delay tuples (tests patch them to zero); tenacity would add a dependency for no new policy.
    for attempt, delay in enumerate((*delays, None), start=1):
        try:
            return action()
        except errors:
            if delay is None:
                raise
            log.warning("%s failed (try %d); retrying in %.0f s", what, attempt, delay, exc_info=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


def with_db_retry(what: str, write: Callable[[], T]) -> T:
    """Run ``write`` (which opens its own session) again after a connection error, with backoff.

    Only ``OperationalError`` (the server went away, a connection was refused or reset) is retried:
    any other error is a bug or a refused constraint and is raised at once. Every write retried here
    is conditional on the lease or idempotent (an artifact row is an upsert), so a retry of a write
    whose commit landed but whose reply was lost changes nothing that matters: a finish_job that
    already ran reports the lease as no longer held, an event may be listed twice.
    """
    return retrying(f"database write {what}", write, (OperationalError,), DB_RETRY_DELAYS_S)


def db_write(settings: Settings, what: str, op: Callable[[Session], T]) -> T:
    """``op(session)`` in a session of its own, retried across a short outage (:func:`with_db_retry`)."""

    def write() -> T:
        with session_scope(settings) as session:
            return op(session)

    return with_db_retry(what, write)


def checkpoint_key(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoints/{CHECKPOINT_NAME}"


def artifact_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/artifacts/{name}"


def make_owner() -> str:
    """A lease owner unique to this attempt: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobCallbacks(RunCallbacks):
    """Core's hooks, wired to the job row and the object store, all gated on the lease."""

    def __init__(self, settings: Settings, store: ObjectStore, lease: Lease) -> None:
        self.settings = settings
        self.store = store
        self.lease = lease
        self.job_id = lease.job_id
        self._last_progress = 0.0
        self._progress_key: tuple[Any, ...] | None = None
        self._last_cancel_poll = 0.0
        self.cancel_requested = False

    # -- writes, conditional on the lease ----------------------------------------------------
    def _record_progress(self, **fields: Any) -> None:
        # Progress is a view, not a result: a database blip must not kill hours of training.
        try:
            with session_scope(self.settings) as session:
                held = db_jobs.record_progress(
                    session,
                    self.job_id,
                    self.lease.owner,
                    self.lease.attempt,
                    lease_seconds=self.settings.lease_seconds,
                    **fields,
                )
        except Exception:
            log.warning("progress of job %s not recorded", self.job_id, exc_info=True)
            return
        if not held:
            self.lease.mark_lost()

    def _upload(self, key: str, path: Path) -> None:
        """Put a file in the store, retrying a transient failure a few times."""
        retrying(f"upload of {key}", lambda: self.store.put_file(key, path), (Exception,), UPLOAD_RETRY_DELAYS_S)

    def on_progress(
        self, *, stage: str, variant: str | None, epoch: int, epochs: int, fraction: float, metrics: dict[str, float]
    ) -> None:
        if self.lease.lost.is_set():
            return
        now = time.monotonic()
        key = (stage, variant, epoch)
        # Throttled, except that a new stage/variant/epoch is shown at once.
        if key == self._progress_key and now - self._last_progress < self.settings.progress_min_interval_s:
            return
        self._progress_key, self._last_progress = key, now
        self._record_progress(
            stage=stage, variant=variant, epoch=epoch, epochs=epochs, fraction=fraction, metrics=metrics
        )

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if self.lease.lost.is_set():
            return
        if kind == EPOCH_FINISHED:
            # the row's "latest metrics" become the epoch's (validation included)
            self._record_progress(
                stage=payload.get("stage"),
                variant=payload.get("variant"),
                epoch=payload.get("epoch"),
                epochs=payload.get("epochs"),
                metrics=payload.get("metrics"),
            )
        elif kind == STAGE_STARTED:
            self._record_progress(
                stage=payload.get("stage"), variant=payload.get("variant"), epoch=0, epochs=payload.get("epochs")
            )
        if self.lease.lost.is_set():
            return
        try:
            with session_scope(self.settings) as session:
                db_jobs.append_event(session, self.job_id, kind, payload)
        except Exception:
            log.warning("event %s of job %s not recorded", kind, self.job_id, exc_info=True)

    def should_cancel(self) -> bool:
        if self.lease.lost.is_set() or shutdown_requested.is_set() or self.cancel_requested:
            return True
        now = time.monotonic()
        if now - self._last_cancel_poll >= CANCEL_POLL_INTERVAL_S:
            self._last_cancel_poll = now
            try:
                with session_scope(self.settings) as session:
                    self.cancel_requested = db_jobs.is_cancel_requested(session, self.job_id)
            except Exception:
                log.warning("cancel poll of job %s failed", self.job_id, exc_info=True)
        return self.cancel_requested

    def on_checkpoint(self, path: Path) -> None:
        # Renew synchronously first: an attempt presumed dead (a frozen VM that wakes up) must not
        # overwrite its successor's checkpoint.
        if not self.lease.renew():
            return
        try:
            self._upload(checkpoint_key(self.job_id), path)
        except Exception:
            log.error(
                "checkpoint of job %s not uploaded; a crash now resumes from an older one", self.job_id, exc_info=True
            )

    def on_artifact(self, name: str, path: Path, size: int, sha256: str) -> None:
        if self.lease.lost.is_set():
            return
        key = artifact_key(self.job_id, name)
        self._upload(key, path)  # an artifact that cannot be stored fails the job (a retry resumes)
        content_type = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
        db_write(
            self.settings,
            f"artifact {name} of job {self.job_id}",
            lambda session: db_jobs.add_artifact(session, self.job_id, name, key, size, sha256, content_type),
        )


class JobAttempt:
    """Everything one attempt does between a successful claim and its single recorded outcome."""

    def __init__(self, settings: Settings, lease: Lease, store: ObjectStore, app: Celery | None) -> None:
        self.settings = settings
        self.lease = lease
        self.store = store
        self.app = app
        self.job_id = lease.job_id
        self.run_dir = Path(settings.work_dir) / self.job_id
        self.callbacks = JobCallbacks(settings, store, lease)

    # -- inputs ------------------------------------------------------------------------------
    def _resolve_inputs(self, spec_dict: dict[str, Any], tenant_id: int) -> tuple[Any, Any]:
        """Validate the stored spec and download the uploads it names (``model:<id>``,
        ``dataset:<id>``); returns the spec unchanged and the ``RunInputs`` holding the local copies.

        The spec stays the user's (spec.json, the report and the resume check see ``model:<id>``);
        only the inputs point at this worker's files."""
        from core.pipeline.preflight import check_host
        from core.pipeline.runner import RunInputs
        from core.spec import load_spec

        spec = load_spec(spec_dict)
        check_host(spec)  # a device or cores this worker lacks: a clear failure reason, not a CUDA error
        model_path = self._local_upload(spec.model.checkpoint, "model", "model.checkpoint", tenant_id)
        dataset_path = self._local_upload(spec.dataset.path, "dataset", "dataset.path", tenant_id)
        onnx_path: str | None = spec.model.onnx
        if onnx_path and onnx_path.startswith("model:"):
            folder = Path(self.settings.work_dir) / self.job_id / "inputs"
            with session_scope(self.settings) as session:
                onnx_row = db_uploads.get_model(session, tenant_id, onnx_path.removeprefix("model:"))
            if onnx_row is None or onnx_row.format != "onnx":
                raise CoreError("model_not_found", "model.onnx", f"no uploaded ONNX network {onnx_path!r}")
            local = folder / "network.onnx"
            self._download(onnx_row.storage_key, local)
            onnx_path = str(local)
        return spec, RunInputs(model_checkpoint=model_path, dataset_path=dataset_path, model_onnx=onnx_path)

    def _local_upload(self, reference: str | None, kind: str, field: str, tenant_id: int) -> str | None:
        """``reference`` as a local path: a ``<kind>:<id>`` upload of the tenant downloaded into the job's
        ``inputs`` folder (a checkpoint keeps its format's suffix), anything else unchanged."""
        if not reference or not reference.startswith(f"{kind}:"):
            return reference
        get = db_uploads.get_model if kind == "model" else db_uploads.get_dataset
        with session_scope(self.settings) as session:
            row = get(session, tenant_id, reference.removeprefix(f"{kind}:"))
        if row is None:
            raise CoreError(f"{kind}_not_found", field, f"no uploaded {kind} {reference!r}")
        suffix = "npz" if kind == "dataset" else "safetensors" if row.format == "safetensors" else "pt"  # type: ignore[union-attr]
        local = Path(self.settings.work_dir) / self.job_id / "inputs" / f"{kind}.{suffix}"
        self._download(row.storage_key, local)
        return str(local)

    def _download(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.store.get_to_path(key, local)

    def _fetch_checkpoint(self) -> bool:
        """Make the run folder's checkpoint the store's: the store holds the last one uploaded under a
        lease, a local file may be a leftover of an attempt that lost it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        local = self.run_dir / CHECKPOINT_NAME
        key = checkpoint_key(self.job_id)
        if self.store.exists(key):
            self.store.get_to_path(key, local)
            return True
        local.unlink(missing_ok=True)
        return False

    # -- the run -----------------------------------------------------------------------------
    def _run(self, spec: Any, inputs: Any) -> dict[str, Any]:
        from core.pipeline.runner import run_job

        try:
            return run_job(spec, self.run_dir, self.callbacks, resume=True, inputs=inputs)
        except ResumeMismatch as err:
            # The stored checkpoint was written under a spec that validates differently now (the
            # service was upgraded mid-job and a default changed): not resumable, so start over
            # rather than fail. The spec core checks is the user's, so local input paths never differ.
            self._event("checkpoint_discarded", {"reason": err.message, "fields": err.fields})
            (self.run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
            return run_job(spec, self.run_dir, self.callbacks, resume=False, inputs=inputs)

    def run(self, spec_dict: dict[str, Any], tenant_id: int) -> str:
        try:
            spec, inputs = self._resolve_inputs(spec_dict, tenant_id)
            resumed = self._fetch_checkpoint()
            self._event("attempt_started", {"attempt": self.lease.attempt, "resumed_from_checkpoint": resumed})
            report = self._run(spec, inputs)
        except RunCanceled as exc:
            return self._stopped(str(exc))
        except RankLost as exc:
            return self._rank_lost(str(exc))
        except CoreError as err:
            return self._fail(str(err), {"error_code": err.code, "field": err.field})
        except Exception as exc:  # noqa: BLE001 - any bug must still end the job with a reason
            tail = traceback.format_exc().strip().splitlines()[-TRACEBACK_LINES:]
            return self._fail(f"{type(exc).__name__}: {exc}", {"traceback": "\n".join(tail)})
        if self.lease.lost.is_set():
            return "lease_lost"
        done = self._finish("succeeded", report=report)
        self._cleanup(done)
        return "succeeded" if done else "lease_lost"

    # -- outcomes ----------------------------------------------------------------------------
    def _finish(self, status: str, **fields: Any) -> bool:
        """The attempt's one outcome, written conditionally on the lease (retried across a database
        outage: after hours of training, a Postgres restart must not cost the job another attempt)."""
        return db_write(
            self.settings,
            f"{status} of job {self.job_id}",
            lambda session: db_jobs.finish_job(
                session, self.job_id, self.lease.owner, self.lease.attempt, status, **fields
            ),
        )

    def _event(self, kind: str, payload: dict[str, Any]) -> None:
        if self.lease.lost.is_set():
            return
        db_write(
            self.settings,
            f"event {kind} of job {self.job_id}",
            lambda session: db_jobs.append_event(session, self.job_id, kind, payload),
        )

    def _stopped(self, detail: str) -> str:
        if self.lease.lost.is_set():
            return "lease_lost"
        canceled = db_write(
            self.settings,
            f"cancel check of job {self.job_id}",
            lambda session: db_jobs.is_cancel_requested(session, self.job_id),
        )
        if canceled or not shutdown_requested.is_set():
            done = self._finish("canceled", error_reason="canceled by user")
            self._cleanup(done)
            return "canceled" if done else "lease_lost"
        # The worker is shutting down: the last epoch's checkpoint is in the store; hand the job back.
        released = db_write(
            self.settings,
            f"hand-back of job {self.job_id}",
            lambda session: release_job(
                session,
                self.job_id,
                self.lease.owner,
                self.lease.attempt,
                "worker shutting down; resumes from the last checkpoint",
            ),
        )
        if not released:
            return "lease_lost"
        if self.app is not None:
            try:
                send_job(self.app, self.settings, self.job_id)
            except Exception:
                log.warning("could not re-send job %s; the reaper will", self.job_id, exc_info=True)
        log.info("job %s handed back to the queue (%s)", self.job_id, detail)
        return "requeued"

    def _rank_lost(self, detail: str) -> str:
        """A data-parallel rank died (every other rank already stopped): treated as a lost worker. The
        lease ends now and the reaper's next sweep requeues the job with this attempt spent (or fails
        it after ``max_attempts``); the next attempt resumes from the last checkpoint in the store."""
        log.error("job %s: %s", self.job_id, detail)
        if self.lease.lost.is_set():
            return "lease_lost"
        self._event("rank_lost", {"reason": detail, "attempt": self.lease.attempt})
        db_write(
            self.settings,
            f"lease expiry of job {self.job_id}",
            lambda session: db_jobs.expire_lease(session, self.job_id, self.lease.owner, self.lease.attempt),
        )
        self.lease.mark_lost()  # the heartbeat must not renew the lease it just gave up
        return "rank_lost"

    def _fail(self, reason: str, details: dict[str, Any]) -> str:
        log.error("job %s failed: %s", self.job_id, reason)
        if self.lease.lost.is_set():
            return "lease_lost"
        self._event("error", {"reason": reason, **details})
        done = self._finish("failed", error_reason=reason)
        self._cleanup(done)
        return "failed" if done else "lease_lost"

    def _cleanup(self, final: bool) -> None:
        """A finished job's files are all in the store; free the worker's disk."""
        if final:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def run_attempt(settings: Settings, job_id: str, app: Celery | None = None, store: ObjectStore | None = None) -> str:
    """Claim ``job_id`` and run one attempt of it; returns what happened (for logs and tests):
    ``not_claimed``, ``succeeded``, ``failed``, ``canceled``, ``requeued`` or ``lease_lost``."""
    owner = make_owner()
    with session_scope(settings) as session:
        attempt = db_jobs.claim_job(session, job_id, owner, settings.lease_seconds)
        job = db_jobs.get_job(session, None, job_id)
    if attempt is None or job is None:
        status = job.status if job is not None else "missing"
        log.info(
            "job %s not claimed (status %s, attempt %s): duplicate or stale message",
            job_id,
            status,
            job.attempt if job is not None else "-",
        )
        return "not_claimed"
    with job_log_context(job_id=job_id, attempt=attempt, tenant=_tenant_name(settings, job.tenant_id)):
        log.info("job %s: attempt %s claimed by %s", job_id, attempt, owner)
        lease = Lease(settings, job_id, owner, attempt)
        with lease:
            return JobAttempt(settings, lease, store or build_store(settings), app).run(dict(job.spec), job.tenant_id)


def _tenant_name(settings: Settings, tenant_id: int) -> str:
    """For the log lines of the attempt (service/logs.py): the tenant's name, else its id."""
    from service.db.base import Tenant

    try:
        with session_scope(settings) as session:
            tenant = session.get(Tenant, tenant_id)
            return tenant.name if tenant is not None else str(tenant_id)
    except Exception:  # noqa: BLE001 - a log field must never stop a job
        return str(tenant_id)
