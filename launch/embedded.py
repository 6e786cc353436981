"""The embedded default: the whole service on one machine with one command and nothing to install.

``hydra-service serve`` runs, side by side:
- the API (uvicorn, ``api.main:create_app``) in this process;
- one Celery worker in a subprocess (``celery -A worker.celery_app worker --pool solo -Q gpu``):
  solo because one process trains one job at a time with all the cores, and a job stops cleanly on
  SIGTERM in the same process that runs it. It is supervised (``launch.supervisor``): a worker that
  dies, say SIGKILLed by the OOM killer, is logged with its exit code or signal and restarted after an
  exponential back-off, and a worker that keeps dying at start is given up on with a clear log line;
- the reaper (``worker.reaper``) in a thread, every 15 s.

State lives in the data directory (``HYDRA_DATA_DIR``, by default ``~/.local/share/hydra-compress``;
``service.settings``), wherever the command is started from: a SQLite database migrated on start, a
local object folder, Celery's SQLAlchemy/SQLite broker, the worker's scratch space and log. The worker
subprocess is handed the resolved paths explicitly. The same code runs in production with Postgres,
Redis and S3; only the settings change.

The first start creates the tenant ``local`` with an admin API key. Only the key's hash is stored in
the database; the plaintext is written to ``<data dir>/admin.key`` (mode 0600) so the demo and the owner of
the machine can read it, and reused on later starts while it still authenticates.

Ctrl-C (or SIGTERM) stops the API, then sends SIGTERM to the worker, which checkpoints the running job,
hands it back to the queue and exits; the next ``serve`` resumes it from that checkpoint
(docs/DELIVERY.md).

With ``HYDRA_LOG_JSON`` on, every line this process writes is one JSON object (``service.logs``):
uvicorn's own lines (its ``log_config``), Python warnings, and the launcher's messages, which are then
log records instead of plain ``print``s (the admin key is then not printed, only the file it is in).
The worker writes its log to ``<data dir>/worker.log``.

This module is in ``launch``, the one layer that imports both ``api`` and ``worker``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

from launch.supervisor import WorkerSupervisor
from service.logs import configure_logging, uvicorn_log_config
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

LOCAL_TENANT = "local"
ADMIN_KEY_FILE = "admin.key"
WORKER_STOP_TIMEOUT_S = 120  # SageMaker's contract for a training job to stop on SIGTERM


def var_dir(settings: Settings) -> Path:
    """The folder of the embedded state (admin key, worker log): the settings' data directory."""
    return Path(settings.data_dir)


def state_env(settings: Settings) -> dict[str, str]:
    """The ``HYDRA_*`` variables that make a child process use exactly these settings' state."""
    return {
        "HYDRA_DATA_DIR": settings.data_dir,
        "HYDRA_DATABASE_URL": settings.database_url,
        "HYDRA_BROKER_URL": settings.broker_url,
        "HYDRA_STORAGE_DIR": settings.storage_dir,
        "HYDRA_WORK_DIR": settings.work_dir,
        "HYDRA_QUEUE_NAME": settings.queue_name,
    }


def migrate(settings: Settings) -> None:
    """Bring the database to the latest schema (Alembic, the same revisions as production), quietly:
    Alembic's INFO lines on every start would say nothing a user needs (warnings still show)."""
    from migrations import upgrade

    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(max(level, logging.WARNING))
    try:
        upgrade(settings.database_url, "head")
    finally:
        alembic_log.setLevel(level)


def _write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` readable by its owner only (created 0600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.replace(tmp, path)
    os.chmod(path, 0o600)


def ensure_admin_key(settings: Settings, key_path: Path) -> str:
    """The admin key of the local tenant: the one in ``key_path`` if it still works, else a new one."""
    from service.db import keys
    from service.db.session import session_scope

    with session_scope(settings) as session:
        if key_path.is_file():
            token = key_path.read_text().strip()
            principal = keys.authenticate(session, token) if token else None
            if principal is not None and principal.tenant_name == LOCAL_TENANT:
                return token
        _, token = keys.create_api_key(session, LOCAL_TENANT, "admin (embedded)")
    _write_secret(key_path, token)
    return token


@dataclass
class WorkerHandle:
    proc: subprocess.Popen[bytes]
    log_file: TextIO
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def release(self) -> None:
        self.log_file.close()


def celery_worker_argv(pool: str, queue: str, loglevel: str, *options: str) -> list[str]:
    """The command line of a Celery worker of this app (``worker.celery_app``) with ``pool`` on ``queue``,
    then ``options``: the embedded launcher's and ``hydra-service worker``'s."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--pool",
        pool,
        "-Q",
        queue,
        "--loglevel",
        loglevel,
        *options,
    ]


def start_worker(settings: Settings, log_path: Path, name: str = "embedded") -> WorkerHandle:
    """Start ``celery worker --pool solo`` on the settings' queue, logging to ``log_path``.

    It runs in its own session so a Ctrl-C in the terminal reaches only this launcher, which then
    stops the worker in order (SIGTERM: checkpoint, hand the job back, exit)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "ab")
    cmd = celery_worker_argv(
        "solo",
        settings.queue_name,
        "INFO",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    )
    env = {**os.environ, **state_env(settings), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_term_with_parent
    )
    return WorkerHandle(proc, log_file, log_path)  # type: ignore[arg-type]


def _term_with_parent() -> None:
    """In the worker child (Linux): get SIGTERM if the launcher dies without stopping it (SIGKILL),
    so an orphaned worker checkpoints its job, hands it back and exits instead of running on."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_worker(handle: WorkerHandle, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int | None:
    """SIGTERM the worker and wait; SIGKILL it if it has not stopped within ``timeout_s``."""
    proc = handle.proc
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker did not stop within %ss; killing it (its job resumes from the last epoch)", timeout_s
                )
                proc.kill()
                proc.wait(timeout=30)
        return proc.returncode
    finally:
        handle.log_file.close()


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    with_worker: bool = True,
    with_reaper: bool = True,
    log_level: str = "info",
    settings: Settings | None = None,
) -> None:
    """Run the embedded service until Ctrl-C / SIGTERM (see the module docstring)."""
    import uvicorn

    settings = settings or get_settings()
    json_lines = settings.log_json
    configure_logging(json_lines)  # before anything logs: the migration, the worker's start, the reaper
    if json_lines:
        logging.captureWarnings(True)  # a library's warning is a JSON line too, not plain text on stderr
    say = _say_json if json_lines else _say_plain
    if not _port_free(host, port):
        if json_lines:
            log.error("port %s on %s is in use; pass --port", port, host)
            raise SystemExit(1)
        raise SystemExit(f"port {port} on {host} is in use; pass --port")
    state = var_dir(settings)
    state.mkdir(parents=True, exist_ok=True)
    for folder in (settings.storage_dir, settings.work_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    migrate(settings)
    key_path = state / ADMIN_KEY_FILE
    token = ensure_admin_key(settings, key_path)

    from worker.celery_app import create_celery
    from worker.reaper import start_reaper_thread

    celery = create_celery(settings)
    supervisor = None
    if with_worker:  # a worker that dies is logged and restarted (launch/supervisor.py)
        supervisor = WorkerSupervisor(
            lambda: start_worker(settings, state / "worker.log"),
            lambda handle: stop_worker(cast(WorkerHandle, handle)),
            restart_backoff_s=settings.worker_restart_backoff_s,
            restart_backoff_max_s=settings.worker_restart_backoff_max_s,
        )
        supervisor.start()
    reaper = start_reaper_thread(settings, celery) if with_reaper else None

    url = f"http://{host}:{port}"
    say(f"HYDRA service on {url}  (API docs: {url}/docs)")
    if json_lines:  # a log pipeline is no place for a key: say where it is
        say(f"admin API key (tenant '{LOCAL_TENANT}') in {key_path} (mode 0600); worker log: {state / 'worker.log'}")
    else:
        say(f"admin API key (tenant '{LOCAL_TENANT}'): {token}")
        say(f"  also in {key_path} (mode 0600); worker log: {state / 'worker.log'}")
    say("Ctrl-C to stop (a running job checkpoints and resumes on the next start)")

    from api.main import create_app

    # The app object of *these* settings (``api.main:create_app`` as a factory would re-read the env).
    # A bounded graceful shutdown: an open event stream (a client following a job) must not hold it.
    # uvicorn's own lines (startup, errors, access) through our filters, and as JSON when asked.
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        log_config=uvicorn_log_config(json_lines),
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    # uvicorn restores the previous handlers after shutting down and re-raises the signal it caught:
    # make SIGTERM an exception then (not an instant exit), so the worker is stopped in order below.
    previous = signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        server.run()  # returns on Ctrl-C / SIGTERM (uvicorn handles both)
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping: API down; asking the worker to checkpoint and stop...")
        if reaper is not None:
            reaper[1].set()
        if supervisor is not None:
            started = time.monotonic()
            code = supervisor.stop()
            say(f"worker stopped (exit {code}) in {time.monotonic() - started:.1f}s")
        celery.close()
        signal.signal(signal.SIGTERM, previous)


def _say_plain(message: str) -> None:
    """A message for the person at the terminal (plain-text mode): on stdout, as is."""
    print(message, flush=True)


def _say_json(message: str) -> None:
    """The same message as a log record (JSON mode): one JSON line on stderr, keys redacted."""
    log.info("%s", message)


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
