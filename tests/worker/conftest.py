"""Fixtures for the worker tests: a fresh Postgres database, the real Redis broker on a queue of our
own, a local object store in a temp folder, the API in process, and real Celery worker processes.

Everything a worker process needs reaches it through ``HYDRA_*`` environment variables, exactly as in
production. Jobs are tiny (a few hundred MNIST digits, PGD with 2 steps) and slowed down per batch by
``HYDRA_TEST_BATCH_DELAY_S`` where a test must act in the middle of one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PG_ADMIN_URL = os.environ.get("HYDRA_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HYDRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
LEASE_SECONDS = 5  # the smallest the settings allow: stale leases are noticed within seconds


def _migrate(database_url: str) -> None:
    """Bring a fresh database to the latest schema through the project's Alembic revisions."""
    from alembic import command

    from migrations import alembic_config

    cfg = alembic_config(database_url)
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"hydra_worker_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        _migrate(url)
        yield url
    finally:
        from service.db.session import _engine_for

        _engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def service_env(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The ``HYDRA_*`` variables shared by this process and the worker processes."""
    base = tmp_path_factory.mktemp("service")
    env = {
        "HYDRA_DATABASE_URL": database_url,
        "HYDRA_BROKER_URL": REDIS_URL,
        "HYDRA_QUEUE_NAME": f"gpu-test-{uuid.uuid4().hex[:8]}",  # our own queue: no cross-talk
        "HYDRA_STORAGE_BACKEND": "local",
        "HYDRA_STORAGE_DIR": str(base / "objects"),
        "HYDRA_WORK_DIR": str(base / "work"),
        "HYDRA_LEASE_SECONDS": str(LEASE_SECONDS),
        "HYDRA_MAX_ATTEMPTS": "3",
        "HYDRA_PROGRESS_MIN_INTERVAL_S": "0.2",
        "HYDRA_RATE_LIMIT_PER_MINUTE": "0",
        "HYDRA_DB_POOL_SIZE": "4",
        "HYDRA_DB_MAX_OVERFLOW": "4",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        from service.settings import get_settings

        get_settings.cache_clear()
        yield env
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings(service_env: dict[str, str]) -> Any:
    from service.settings import Settings

    return Settings()


@pytest.fixture(scope="session")
def celery_client(settings: Any) -> Iterator[Any]:
    """A Celery app of this process, for sending messages and for the reaper's sweeps."""
    from worker.celery_app import create_celery

    app = create_celery(settings)
    yield app
    app.close()


@pytest.fixture(scope="session")
def api(settings: Any) -> Iterator[Any]:
    """The API in process, authenticated as a tenant of its own."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from service.db.keys import create_api_key
    from service.db.session import session_scope

    app = create_app(settings)
    with session_scope(settings) as session:
        _, token = create_api_key(session, f"worker-tests-{uuid.uuid4().hex[:6]}", "tests")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


class WorkerProcess:
    """One ``celery worker`` process (prefork, one child) with its log file."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, name: str) -> None:
        self.proc, self.log_path, self.name = proc, log_path, name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log()}")
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready:\n{self.log()}")

    def pool_children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): a machine lost."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as a container runtime does, and wait for the worker to exit."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def start_worker(service_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes; every one still running is killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(batch_delay_s: float = 0.0, pool: str = "prefork") -> WorkerProcess:
        name = f"w{len(started) + 1}-{uuid.uuid4().hex[:4]}"
        log_path = tmp_path / f"{name}.log"
        env = {
            **os.environ,
            **service_env,
            "HYDRA_TEST_BATCH_DELAY_S": str(batch_delay_s),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }
        cmd = [
            sys.executable,
            str(HERE / "_worker_main.py"),
            "-Q",
            service_env["HYDRA_QUEUE_NAME"],
            "-n",
            f"{name}@%h",
            "--pool",
            pool,
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = WorkerProcess(proc, log_path, name)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.kill()
