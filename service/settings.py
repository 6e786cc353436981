"""The one place the service reads its configuration from the environment (prefix ``HYDRA_``).

Defaults describe the *embedded* deployment (SQLite, a local object folder, an SQL-backed Celery
broker) so that one command on one machine works with nothing installed. ``env=prod`` turns those
conveniences into errors: a production deployment that silently fell back to SQLite or to a local
folder would lose jobs and artifacts the moment a second machine joined, so we refuse to start.

Everything else gets its settings injected: ``get_settings()`` is cached and used through
``Depends(get_settings)`` in the API, so tests swap it with ``dependency_overrides`` instead of
patching globals. The model is frozen (hashable), which lets builders of engines and stores cache
one instance per distinct settings object.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1024 * 1024


class Settings(BaseSettings):
    """Service configuration; every field can be set as ``HYDRA_<FIELD_NAME>``."""

    model_config = SettingsConfigDict(env_prefix="HYDRA_", extra="ignore", frozen=True)

    env: Literal["dev", "prod"] = "dev"

    # --- database
    database_url: str = "sqlite:///var/hydra.db"
    db_pool_size: int = Field(10, ge=1, description="Connections kept open per process (not SQLite).")
    db_max_overflow: int = Field(20, ge=0)
    db_pool_pre_ping: bool = Field(
        False,
        description="Test each pooled connection before use (one extra round trip per checkout). Off: "
        "connections are recycled every 30 min and a dead pool is dropped on the first error instead.",
    )

    # --- queue
    broker_url: str = "sqla+sqlite:///var/broker.db"
    result_backend: str | None = None
    queue_name: str = "gpu"
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
    storage_dir: str = "var/objects"
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"

    # --- worker
    work_dir: str = "var/work"
    lease_seconds: int = Field(120, ge=5)
    max_attempts: int = Field(3, ge=1)
    progress_min_interval_s: float = Field(1.0, ge=0)

    # --- API limits
    max_upload_bytes: int = Field(200 * MB, ge=1)
    max_spec_bytes: int = Field(1 * MB, ge=1)
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

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> "Settings":
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
