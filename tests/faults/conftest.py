"""Fixtures of the fault tests: ``make_stack(...)`` builds one scenario's private Postgres cluster,
Redis server (and optionally an S3 endpoint behind a cuttable proxy), the ``HYDRA_*`` environment
its processes share, settings for this process (which plays the reaper), a Celery client and an
API key. Everything is stopped and removed afterwards. The summary table is printed at the end of
the run (and written to ``$HYDRA_FAULT_SUMMARY`` when set)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

from tests.faults.fault_helpers import (  # noqa: E402
    RESULTS,
    MotoS3,
    PgCluster,
    RedisServer,
    Stack,
    pg_template,
    scratch_dir,
    summary_table,
)


def _tools_missing() -> str | None:
    from tests.faults.fault_helpers import pg_bin

    try:
        pg_bin("initdb")
        pg_bin("pg_ctl")
    except FileNotFoundError as err:
        return str(err)
    if shutil.which("redis-server") is None:
        return "no redis-server"
    return None


@pytest.fixture(scope="session")
def pg_template_dir() -> Iterator[Path]:
    missing = _tools_missing()
    if missing:
        pytest.skip(f"fault tests need Postgres and Redis binaries: {missing}")
    base = scratch_dir("hydra-faults-template-")
    try:
        yield pg_template(base / "pg")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Scenario:
    stack: Stack
    pg: PgCluster
    redis: RedisServer
    s3: MotoS3 | None
    settings: Any
    celery: Any
    token: str

    def client(self, timeout: float = 60) -> Any:
        """An HTTP client of the API (generous timeout: a cold API imports torch on its first submission)."""
        import httpx

        return httpx.Client(
            base_url=self.stack.api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=timeout
        )

    def sweep(self) -> None:
        """One pass of the reaper, from this process (a database or broker outage is retried later)."""
        from worker.reaper import sweep

        try:
            sweep(self.settings, self.celery, unsent_after_s=1.0)
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def make_stack(pg_template_dir: Path) -> Iterator[Callable[..., Scenario]]:
    made: list[tuple[Scenario, Path]] = []

    def make(persistent_redis: bool = False, s3: bool = False, lease_seconds: int = 5) -> Scenario:
        base = scratch_dir("hydra-fault-")
        pg = PgCluster(pg_template_dir, base)
        pg.start()
        pg.create_database()
        redis = RedisServer(base, persistent_redis)
        redis.start()
        moto = MotoS3(base) if s3 else None
        env = {
            "HYDRA_DATA_DIR": str(base / "data"),
            "HYDRA_DATABASE_URL": pg.url,
            "HYDRA_BROKER_URL": redis.url,
            "HYDRA_QUEUE_NAME": f"gpu-fault-{uuid.uuid4().hex[:6]}",
            "HYDRA_STORAGE_BACKEND": "s3" if moto else "local",
            "HYDRA_STORAGE_DIR": str(base / "objects"),
            "HYDRA_WORK_DIR": str(base / "work"),
            "HYDRA_LEASE_SECONDS": str(lease_seconds),
            "HYDRA_MAX_ATTEMPTS": "3",
            "HYDRA_PROGRESS_MIN_INTERVAL_S": "0.2",
            "HYDRA_RATE_LIMIT_PER_MINUTE": "0",
            "HYDRA_AUTH_CACHE_SECONDS": "30",
            "HYDRA_DB_POOL_SIZE": "4",
            "HYDRA_DB_MAX_OVERFLOW": "4",
        }
        if moto:
            env.update(
                {
                    "HYDRA_S3_ENDPOINT_URL": moto.endpoint,
                    "HYDRA_S3_BUCKET": moto.bucket,
                    "HYDRA_S3_ACCESS_KEY": "test",
                    "HYDRA_S3_SECRET_KEY": "test",
                }
            )
        from alembic import command

        from migrations import alembic_config
        from service.db.keys import create_api_key
        from service.db.session import session_scope
        from service.settings import Settings
        from worker.celery_app import create_celery

        cfg = alembic_config(pg.url)
        cfg.attributes["configure_logging"] = False
        command.upgrade(cfg, "head")
        settings = Settings(**{k.removeprefix("HYDRA_").lower(): v for k, v in env.items()})
        with session_scope(settings) as session:
            _, token = create_api_key(session, "faults", "faults")
        scenario = Scenario(Stack(base, env), pg, redis, moto, settings, create_celery(settings), token)
        made.append((scenario, base))
        return scenario

    yield make
    from service.db.session import _engine_for

    for scenario, base in made:
        scenario.stack.stop_all()
        scenario.celery.close()
        if scenario.s3 is not None:
            scenario.s3.stop()
        scenario.redis.stop()
        scenario.pg.stop("immediate")
        if not os.environ.get("HYDRA_FAULT_KEEP"):  # set it to read the logs of a failed scenario
            shutil.rmtree(base, ignore_errors=True)
    _engine_for.cache_clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    table = summary_table(RESULTS)
    terminalreporter.write_line("")
    for line in table.splitlines():
        terminalreporter.write_line(line)
    target = os.environ.get("HYDRA_FAULT_SUMMARY")
    if target:
        Path(target).write_text(table + "\n")
