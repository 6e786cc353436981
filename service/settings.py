"""The one place the service reads its configuration from the environment (prefix ``HYDRA_``).

Defaults describe the *embedded* deployment (SQLite, a local object folder, an SQL-backed Celery
broker) so that one command on one machine works with nothing installed. ``env=prod`` turns those
conveniences into errors: a production deployment that silently fell back to SQLite or to a local
folder would lose jobs and artifacts the moment a second machine joined, so we refuse to start.

The embedded default keeps all its state, database, broker, object store and worker scratch space,
under one **data directory** that does not depend on the current directory: ``HYDRA_DATA_DIR``,
by default ``$XDG_DATA_HOME/hydra-compress`` (``~/.local/share/hydra-compress``). ``serve``,
``create-key``, ``demo`` and the worker all find it the same way; each of ``HYDRA_DATABASE_URL``,
``HYDRA_BROKER_URL``, ``HYDRA_STORAGE_DIR`` and ``HYDRA_WORK_DIR`` still overrides its own part.

Everything else gets its settings injected: ``get_settings()`` is cached and used through
``Depends(get_settings)`` in the API, so tests swap it with ``dependency_overrides`` instead of
patching globals. The model is frozen (hashable), which lets builders of engines and stores cache
one instance per distinct settings object.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1024 * 1024
APP_NAME = "hydra-compress"


def default_data_dir() -> Path:
    """The per-user data directory of the embedded default (XDG base directories)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / APP_NAME


# Settings whose embedded default lives under the data directory, and where.
_UNDER_DATA_DIR = {
    "database_url": lambda root: f"sqlite:///{root / 'hydra.db'}",
    "broker_url": lambda root: f"sqla+sqlite:///{root / 'broker.db'}",
    "storage_dir": lambda root: str(root / "objects"),
    "work_dir": lambda root: str(root / "work"),
}


class Settings(BaseSettings):
    """Service configuration; every field can be set as ``HYDRA_<FIELD_NAME>``."""

    model_config = SettingsConfigDict(env_prefix="HYDRA_", extra="ignore", frozen=True)

    env: Literal["dev", "prod"] = "dev"

    # --- the embedded default's state (absolute once validated)
    data_dir: str = Field(
        "",
        description="Where the embedded default keeps its database, broker, objects and work files "
        "(default: $XDG_DATA_HOME/hydra-compress, i.e. ~/.local/share/hydra-compress).",
    )

    # --- database
    database_url: str = "sqlite:///<data_dir>/hydra.db"
    db_pool_size: int = Field(10, ge=1, description="Connections kept open per process (not SQLite).")
    db_max_overflow: int = Field(20, ge=0)
    db_pool_pre_ping: bool = Field(
        False,
        description="Test each pooled connection before use (one extra round trip per checkout). Off: "
        "connections are recycled every 30 min and a dead pool is dropped on the first error instead.",
    )

    # --- queue
    broker_url: str = "sqla+sqlite:///<data_dir>/broker.db"
    result_backend: str | None = None
    queue_name: str = "gpu"
    gpu_queues: str = Field(
        "",
        pattern=r"^(\d+:[A-Za-z0-9_.-]+(,\d+:[A-Za-z0-9_.-]+)*)?$",
        description="Queues of multi-GPU workers by GPU count, e.g. HYDRA_GPU_QUEUES=2:gpu2,4:gpu4: a job with "
        "resources.gpus: N > 1 goes to the queue of the smallest count >= N (service/routing.py); jobs with "
        "gpus <= 1 go to queue_name. A string, not a mapping: settings objects are hashable (cached clients).",
    )
    task_expires_seconds: int | None = Field(
        24 * 3600,
        ge=1,
        description="A message older than this is dropped by the worker; the enqueue sweep re-sends the job.",
    )
    enqueue_enabled: bool = Field(
        True, description="Off only for benchmarks/tests: jobs are written but never sent to the broker."
    )

    # --- object storage
    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: str = "<data_dir>/objects"
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"

    # --- worker
    work_dir: str = "<data_dir>/work"
    lease_seconds: int = Field(120, ge=5)
    max_attempts: int = Field(3, ge=1)
    progress_min_interval_s: float = Field(1.0, ge=0)
    worker_restart_backoff_s: float = Field(
        1.0, gt=0, description="Embedded: wait before restarting a worker that died; doubled while it keeps dying."
    )
    worker_restart_backoff_max_s: float = Field(60.0, gt=0, description="Embedded: the longest such wait.")
    ready_requires_worker: bool = Field(
        True,
        description="/readyz answers 503 when no worker has written its heartbeat within lease_seconds "
        "(a submitted job would wait for ever). Off: /readyz checks the API's own dependencies only.",
    )

    # --- API limits
    max_upload_bytes: int = Field(200 * MB, ge=1)
    max_spec_bytes: int = Field(1 * MB, ge=1)
    max_dataset_bytes: int = Field(
        1024 * MB, ge=1, description="Largest size an uploaded .npz may unpack to (checked from its headers)."
    )
    max_archive_files: int = Field(
        50_000, ge=1, description="Most members an uploaded image archive (.zip/.tar of class folders) may hold."
    )
    max_image_pixels: int = Field(
        25_000_000,
        ge=1,
        description="Most pixels (width x height, read from its header before decoding) of one image in an archive.",
    )
    max_concurrent_uploads_per_key: int = Field(
        2, ge=1, description="Uploads one API key may have in progress per API process; more get 429."
    )
    max_concurrent_uploads: int = Field(
        8, ge=1, description="Uploads in progress per API process, all keys together; more get 503."
    )
    rate_limit_per_minute: int = Field(600, ge=0, description="Requests per API key per minute; 0 disables.")
    rate_limit_backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: per API process; redis (needs a redis:// broker): shared by all processes."
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long an API process trusts a key it has verified; a revoked key stops working "
        "within this time. 0 checks the database on every request.",
    )

    max_streams_per_key: int = Field(
        16, ge=1, description="Open event streams (SSE) one API key may hold per API process; more get 429."
    )
    max_streams_total: int = Field(
        1000, ge=1, description="Open event streams per API process, all keys together; more get 503."
    )
    # --- what the workers can do (the API refuses at submission a job they could not run)
    worker_devices: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda:[0-9]{1,3})(,(cpu|cuda:[0-9]{1,3}))*$",
        description="Comma-separated devices the worker pool has (cpu, cuda:0, ...). A job's device must be "
        "auto, one of these, or cuda when one of these is a cuda device. Default: cpu only (the embedded default); "
        "Compose's GPU worker sets cpu,cuda:0.",
    )
    max_dataloader_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=0,
        le=1024,
        description="Most data-loading processes a job may ask for (dataset.num_workers): the workers' cores. "
        "Default: this machine's core count (the embedded default runs its worker here).",
    )
    dataset_download: bool = Field(
        False,
        description="Whether workers may download the catalogue's datasets (dataset.download: true). Off: they "
        "have no network or the data folder is provisioned; a job asking to download is refused at submission.",
    )

    # --- logs
    log_json: bool = Field(
        False,
        description="One JSON object per log line (API and worker), with job_id, attempt and tenant "
        "(service/logs.py). Off: plain text lines. API keys are scrubbed from the logs either way.",
    )

    @model_validator(mode="before")
    @classmethod
    def _under_data_dir(cls, values: Any) -> Any:
        """Resolve the data directory (absolute, so no later ``chdir`` moves it) and put every embedded
        default that was not set explicitly under it."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        root = Path(str(values.get("data_dir") or default_data_dir())).expanduser().resolve()
        values["data_dir"] = str(root)
        for name, under in _UNDER_DATA_DIR.items():
            if values.get(name) in (None, ""):
                values[name] = under(root)
        return values

    @property
    def worker_device_list(self) -> tuple[str, ...]:
        """``worker_devices`` as a tuple: ``("cpu", "cuda:0")``."""
        return tuple(d.strip() for d in self.worker_devices.split(",") if d.strip())

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        """In prod, fail at start-up rather than run on defaults that only make sense on one machine."""
        if self.env != "prod":
            return self
        problems: list[str] = []
        if self.database_url.startswith("sqlite"):
            problems.append("HYDRA_DATABASE_URL is SQLite; use Postgres")
        if "sqlite" in self.broker_url:
            problems.append("HYDRA_BROKER_URL is the SQLite broker; use Redis")
        if self.storage_backend != "s3":
            problems.append("HYDRA_STORAGE_BACKEND must be s3")
        for name in ("s3_bucket", "s3_access_key", "s3_secret_key"):
            if not getattr(self, name):
                problems.append(f"HYDRA_{name.upper()} is missing")
        if problems:
            raise ValueError("unsafe settings for env=prod: " + "; ".join(problems))
        return self


@lru_cache
def get_settings() -> Settings:
    """Build the settings once per process (FastAPI's recommended pattern)."""
    return Settings()
