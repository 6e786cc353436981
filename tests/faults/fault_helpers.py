"""Real processes for the fault tests, each scenario with its own: a throwaway Postgres cluster
(``initdb`` + ``pg_ctl`` in a temp folder, on a free port), a ``redis-server`` (with or without
persistence), the API under uvicorn, Celery workers, and an S3 endpoint (moto) behind a TCP proxy
the test can cut. The shared Postgres (5432) and Redis (6379) are never touched.

Postgres refuses to run as root; as root, its commands run as the ``postgres`` system user
(``runuser``), in a folder that user can enter.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
WORKER_MAIN = ROOT / "tests" / "worker" / "_worker_main.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - a service still starting
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- Postgres
def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"no {name} (install postgresql)")
    return path


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


class PgCluster:
    """A private Postgres cluster: ``start``, ``stop(mode)``, ``restart``; database ``hydra``."""

    def __init__(self, template: Path, base: Path) -> None:
        self.base = base
        self.data = base / "pgdata"
        self.socket_dir = base / "sock"
        self.log = base / "postgres.log"
        self.port = free_port()
        shutil.copytree(template, self.data, symlinks=True)
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            for path in (self.data, self.socket_dir):
                subprocess.run(["chown", "-R", "postgres:postgres", str(path)], check=True)
            os.chmod(self.data, 0o700)
            subprocess.run(["chown", "postgres:postgres", str(base)], check=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hydra"

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        subprocess.run(
            _as_postgres(
                [pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres([pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"]),
            check=False,
            capture_output=True,
        )

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute('CREATE DATABASE "hydra"')


def pg_template(folder: Path) -> Path:
    """``initdb`` once (trust auth, user postgres); clusters copy it."""
    data = folder / "template"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(folder, 0o755)
        subprocess.run(["chown", "postgres:postgres", str(folder)], check=True)
    subprocess.run(
        _as_postgres(
            [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"]
        ),
        check=True,
        capture_output=True,
    )
    return data


def scratch_dir(prefix: str) -> Path:
    """A folder the ``postgres`` user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    return path


# ----------------------------------------------------------------------------- Redis
class RedisServer:
    """A private ``redis-server``; ``persistent`` = append-only file fsynced on every write."""

    def __init__(self, base: Path, persistent: bool) -> None:
        self.base = base
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.base),
            "--save",
            "",
            *persistence,
            "--daemonize",
            "no",
            "--logfile",
            str(self.log),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _port_open(self.port), 30, "redis-server")

    def kill(self) -> None:
        """SIGKILL: what a crash (or a node loss) does; only the append-only file survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill()


# ----------------------------------------------------------------------------- S3 behind a cuttable proxy
class CuttableProxy:
    """A TCP proxy to ``target_port``; ``cut()`` refuses every new connection and resets open ones
    (an object store that became unreachable), ``restore()`` lets them through again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.cut_event = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", self.port))
        self._server.listen(64)
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.cut_event.is_set():
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                if self.cut_event.is_set():
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                self._open -= {src, dst}

    def cut(self) -> None:
        self.cut_event.set()
        with self._lock:
            for s in list(self._open):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self) -> None:
        self.cut_event.clear()

    def close(self) -> None:
        self._stopped = True
        self.cut()
        self._server.close()


class MotoS3:
    """moto's S3 server (in-memory) with a bucket, reached through a ``CuttableProxy``."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.log = base / "moto.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: _port_open(self.port), 60, "moto server")
        self.proxy = CuttableProxy(self.port)
        self.bucket = "hydra-faults"
        self.client().create_bucket(Bucket=self.bucket)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def stop(self) -> None:
        self.proxy.close()
        self.proc.kill()
        self.proc.wait(timeout=30)


# ----------------------------------------------------------------------------- the service processes
@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log_path: Path
    name: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children): a machine lost."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self, timeout: float = 60) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return self.proc.returncode
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


@dataclass
class Stack:
    """One scenario's service: env shared by every process it starts, and the processes."""

    base: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    api_port: int = field(default_factory=free_port)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log_path = self.base / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
        env.update(self.env)
        env.update(extra_env or {})
        env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        handle = Proc(proc, log_path, name)
        self.procs.append(handle)
        return handle

    def start_api(self) -> Proc:
        n = sum(1 for p in self.procs if p.name.startswith("api"))
        api = self._spawn(
            f"api{n + 1}",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",
                "3",
            ],
        )

        def up() -> bool:
            assert api.alive(), api.log()[-3000:]
            return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200

        wait_for(up, 90, "the API")
        return api

    def start_worker(self, batch_delay_s: float = 0.0) -> Proc:
        n = sum(1 for p in self.procs if p.name.startswith("worker"))
        name = f"worker{n + 1}"
        worker = self._spawn(
            name,
            [
                sys.executable,
                str(WORKER_MAIN),
                "-Q",
                self.env["HYDRA_QUEUE_NAME"],
                "-n",
                f"{name}-{uuid.uuid4().hex[:4]}@%h",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            {"HYDRA_TEST_BATCH_DELAY_S": str(batch_delay_s)},
        )

        def ready() -> bool:
            assert worker.alive(), worker.log()[-3000:]
            return " ready." in worker.log()

        wait_for(ready, 120, f"{name} to be ready")
        return worker

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                proc.kill()


# ----------------------------------------------------------------------------- the summary table
@dataclass
class Outcome:
    scenario: str
    tried: int = 0
    survived: int = 0
    lost: int = 0
    recovery_s: float | None = None
    note: str = ""


RESULTS: list[Outcome] = []


def summary_table(results: list[Outcome]) -> str:
    head = f"{'scenario':48s} {'tried':>5s} {'survived':>8s} {'lost':>4s} {'recovery':>9s}  note"
    lines = ["fault tests: jobs tried / survived / lost, and time to recovery", head, "-" * len(head)]
    for r in results:
        rec = f"{r.recovery_s:.1f}s" if r.recovery_s is not None else "-"
        lines.append(f"{r.scenario:48s} {r.tried:5d} {r.survived:8d} {r.lost:4d} {rec:>9s}  {r.note}")
    total = Outcome(
        "total", sum(r.tried for r in results), sum(r.survived for r in results), sum(r.lost for r in results)
    )
    lines.append("-" * len(head))
    lines.append(f"{total.scenario:48s} {total.tried:5d} {total.survived:8d} {total.lost:4d}")
    return "\n".join(lines)
