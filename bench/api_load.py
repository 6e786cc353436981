"""API load benchmark: how much does our stack cost per request, and is submission exactly-once?

Run on Postgres + Redis (production) and on the embedded default (SQLite + the SQL-backed broker),
``--database both`` (default) or one of them. For each (all numbers from the same server process):
1. Creates a fresh database (Postgres, or a SQLite file in a temp folder), migrates it, creates a
   tenant key and one job.
2. Starts ``uvicorn`` in a subprocess with the real app (``create_app()`` from HYDRA_* settings) plus a
   bare JSON endpoint ``/bench/bare`` mounted in the same app, i.e. behind the same server, event
   loop and middleware, but with no auth, no database and no validation.
3. From this (separate) process, measures requests/s of ``GET /v1/jobs/{id}`` (auth + rate limit +
   a job read, the endpoint clients poll) and of ``/bench/bare``, alternating rounds so that drift
   hits both alike. The client is a minimal keep-alive HTTP/1.1 client on asyncio streams: a heavier
   client (httpx) saturates before the server does and would flatter the ratio.
4. Fires 500 concurrent ``POST /v1/jobs``: half without an Idempotency-Key, half spread over a few
   repeated keys, and checks that the database holds exactly one job per distinct submission and
   that every retry got the same id (``statuses`` counts the answers: no 5xx). Jobs are really
   enqueued (Redis, a private queue deleted afterwards; the SQLite broker file on the embedded
   default) unless ``--no-enqueue``.
5. Stops the server, drops the database, and prints one JSON line last: with one database
   ``{"status_rps", "bare_rps", "ratio", "errors", "jobs_created", "jobs_expected", ...}``, with
   both ``{"postgres": {...}, "sqlite": {...}}``.

Usage: ``python bench/api_load.py --json`` (targets: ratio >= 0.5, errors == 0, created == expected).
The exactly-once part also runs in the suite, in process: tests/service/test_load.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BARE_PATH = "/bench/bare"


# ----------------------------------------------------------------------------- the server side
def bench_app():  # type: ignore[no-untyped-def]
    """The real API plus a bare endpoint, for ``uvicorn --factory bench.api_load:bench_app``."""
    from api.main import create_app

    app = create_app()
    body = {"id": "00000000-0000-0000-0000-000000000000", "status": "running", "fraction": 0.5, "epoch": 3}

    @app.get(BARE_PATH, include_in_schema=False)
    async def bare() -> dict[str, Any]:
        """A bare JSON endpoint: the floor cost of the server and framework."""
        return body

    return app


# ----------------------------------------------------------------------------- setup
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(host=args.pg_host, port=args.pg_port, user=args.pg_user, dbname="postgres", autocommit=True)


def setup_database(args: argparse.Namespace) -> tuple[str, str]:
    name = f"hydra_bench_{uuid.uuid4().hex[:10]}"
    with _admin(args) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://{args.pg_user}@{args.pg_host}:{args.pg_port}/{name}"
    from alembic import command

    from migrations import alembic_config

    cfg = alembic_config(url)
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")
    return name, url


def seed(url: str) -> tuple[str, str, int]:
    """A tenant key and one job to poll; returns (token, job_id, tenant_id)."""
    from sqlalchemy.orm import sessionmaker

    from service.db import jobs, keys
    from service.db.session import build_engine

    engine = build_engine(url, one_shot=True)
    with sessionmaker(bind=engine, expire_on_commit=False)() as session:
        key, token = keys.create_api_key(session, "bench", "bench")
        job, _ = jobs.create_job(session, key.tenant_id, {"name": "polled"}, None, 3)
    engine.dispose()
    return token, job.id, key.tenant_id


def count_jobs(url: str, tenant_id: int) -> int:
    from sqlalchemy.orm import sessionmaker

    from service.db import jobs
    from service.db.session import build_engine

    engine = build_engine(url, one_shot=True)
    with sessionmaker(bind=engine)() as session:
        _, count = jobs.list_jobs(session, tenant_id, limit=1)
    engine.dispose()
    return count


def setup_sqlite(tmp: str) -> str:
    url = f"sqlite:///{tmp}/hydra.db"
    from alembic import command

    from migrations import alembic_config

    cfg = alembic_config(url)
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")
    return url


def start_server(
    args: argparse.Namespace, url: str, port: int, queue: str, tmp: str, broker_url: str | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HYDRA_ENV": "dev",
        "HYDRA_DATA_DIR": tmp,
        "HYDRA_DATABASE_URL": url,
        "HYDRA_BROKER_URL": broker_url or args.redis_url,
        "HYDRA_QUEUE_NAME": queue,
        "HYDRA_ENQUEUE_ENABLED": "false" if args.no_enqueue else "true",
        "HYDRA_RATE_LIMIT_PER_MINUTE": str(10**9),  # counted on every request, never reached
        "HYDRA_STORAGE_DIR": f"{tmp}/objects",
        "HYDRA_WORK_DIR": f"{tmp}/work",
        "HYDRA_DB_POOL_SIZE": "20",
        "HYDRA_DB_MAX_OVERFLOW": "20",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench.api_load:bench_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--no-access-log",
        "--log-level",
        "warning",
        "--backlog",
        "4096",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("uvicorn did not become healthy")


# ----------------------------------------------------------------------------- the load side
async def _keepalive_worker(port: int, request: bytes, deadline: float, stats: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            stats["ok" if status == 200 else "errors"] += 1
    except (OSError, asyncio.IncompleteReadError):
        stats["errors"] += 1
    finally:
        writer.close()


async def measure_rps(port: int, path: str, token: str | None, seconds: float, connections: int) -> tuple[float, int]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}Accept: application/json\r\n\r\n".encode()
    stats: dict[str, int] = defaultdict(int)
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*[_keepalive_worker(port, request, deadline, stats) for _ in range(connections)])
    elapsed = time.perf_counter() - start
    return stats["ok"] / elapsed, stats["errors"]


async def burst_posts(port: int, token: str, total: int, repeated_keys: int) -> dict[str, Any]:
    """``total`` concurrent submissions: half keyless, half over ``repeated_keys`` shared keys."""
    import httpx

    unique = total // 2
    keyed = total - unique
    plans: list[str | None] = [None] * unique + [f"retry-{i % repeated_keys}" for i in range(keyed)]
    limits = httpx.Limits(max_connections=total, max_keepalive_connections=total)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=120) as client:

        async def post(i: int, key: str | None) -> tuple[str | None, int, str | None]:
            h = dict(headers)
            if key:
                h["Idempotency-Key"] = key
            try:
                r = await client.post("/v1/jobs", json={"name": f"burst-{key or i}", "seed": 1}, headers=h)
            except httpx.HTTPError as exc:
                return key, 0, repr(exc)
            return key, r.status_code, r.json().get("id") if r.status_code in (200, 201) else r.text[:200]

        start = time.perf_counter()
        results = await asyncio.gather(*[post(i, k) for i, k in enumerate(plans)])
        elapsed = time.perf_counter() - start
    errors = [r for r in results if r[1] not in (200, 201)]
    statuses: dict[int, int] = defaultdict(int)
    for _, status, _ in results:
        statuses[status] += 1
    ids_by_key: dict[str, set[str]] = defaultdict(set)
    for key, status, job_id in results:
        if key and status in (200, 201) and job_id:
            ids_by_key[key].add(job_id)
    split_keys = sum(1 for ids in ids_by_key.values() if len(ids) != 1)
    return {
        "errors": len(errors) + split_keys,
        "error_samples": [e[2] for e in errors[:3]],
        "expected": unique + min(repeated_keys, keyed),
        "seconds": elapsed,
        "created_201": sum(1 for r in results if r[1] == 201),
        "statuses": dict(sorted(statuses.items())),
    }


def cleanup_redis(redis_url: str, queue: str) -> None:
    try:
        import redis

        client = redis.Redis.from_url(redis_url)
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()
    except Exception:  # noqa: BLE001 - best effort
        pass


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    parser.add_argument(
        "--database",
        choices=("postgres", "sqlite", "both"),
        default="both",
        help="Postgres + Redis, the embedded SQLite default, or both (default)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--repeated-keys", type=int, default=25)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--no-enqueue", action="store_true", help="store jobs without publishing them")
    parser.add_argument("--pg-host", default=os.environ.get("HYDRA_TEST_PG_HOST", "127.0.0.1"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("HYDRA_TEST_PG_PORT", "5432")))
    parser.add_argument("--pg-user", default=os.environ.get("HYDRA_TEST_PG_USER", "postgres"))
    parser.add_argument("--redis-url", default=os.environ.get("HYDRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return parser.parse_args()


def run_backend(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """Steps 1-5 of the module docstring on ``backend`` ("postgres" or "sqlite")."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    server = None
    db_name = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if backend == "postgres":
                db_name, url = setup_database(args)
                broker = args.redis_url
            else:
                url = setup_sqlite(tmp)
                broker = f"sqla+sqlite:///{tmp}/broker.db"  # the embedded default's broker
            token, job_id, tenant_id = seed(url)
            server = start_server(args, url, port, queue, tmp, broker)
            status_path = f"/v1/jobs/{job_id}"

            async def run() -> dict[str, Any]:
                # warm both paths (connection pools, caches, JIT-free but lazy imports)
                await measure_rps(port, BARE_PATH, None, 1.0, args.connections)
                await measure_rps(port, status_path, token, 1.0, args.connections)
                bare, status, errors = [], [], 0
                for _ in range(args.rounds):
                    rps, err = await measure_rps(port, BARE_PATH, None, args.seconds, args.connections)
                    bare.append(rps)
                    errors += err
                    rps, err = await measure_rps(port, status_path, token, args.seconds, args.connections)
                    status.append(rps)
                    errors += err
                burst = await burst_posts(port, token, args.posts, args.repeated_keys)
                return {"bare": bare, "status": status, "errors": errors, "burst": burst}

            measured = asyncio.run(run())
            jobs_created = count_jobs(url, tenant_id) - 1  # minus the polled job
        finally:
            if server is not None:
                server.terminate()
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
            if backend == "postgres":
                cleanup_redis(args.redis_url, queue)
                if db_name is not None:
                    with _admin(args) as conn:
                        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    bare_rps = sum(measured["bare"]) / len(measured["bare"])
    status_rps = sum(measured["status"]) / len(measured["status"])
    burst = measured["burst"]
    result = {
        "database": backend,
        "status_rps": round(status_rps, 1),
        "bare_rps": round(bare_rps, 1),
        "ratio": round(status_rps / bare_rps, 3) if bare_rps else 0.0,
        "errors": measured["errors"] + burst["errors"],
        "jobs_created": jobs_created,
        "jobs_expected": burst["expected"],
        "post_statuses": burst["statuses"],
        "posts": args.posts,
        "posts_seconds": round(burst["seconds"], 2),
        "connections": args.connections,
        "uvicorn_workers": args.workers,
        "enqueue": "disabled" if args.no_enqueue else ("redis" if backend == "postgres" else "sqlite broker"),
    }
    if not args.json or burst["error_samples"]:
        print(
            f"{backend}: bare {bare_rps:.0f} req/s, status {status_rps:.0f} req/s, ratio {result['ratio']}, "
            f"{jobs_created}/{burst['expected']} jobs, POST statuses {burst['statuses']}",
            file=sys.stderr,
        )
        if burst["error_samples"]:
            print(f"sample POST errors: {burst['error_samples']}", file=sys.stderr)
    return result


def main() -> None:
    args = _parse()
    backends = ("postgres", "sqlite") if args.database == "both" else (args.database,)
    results = {backend: run_backend(args, backend) for backend in backends}
    print(json.dumps(results[backends[0]] if len(backends) == 1 else results))


if __name__ == "__main__":
    main()
