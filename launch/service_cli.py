"""``hydra-service``: run and administer the service (migrate, keys, workers, serve, worker, demo).

This is the ``launch`` layer (see ``launch/__init__.py``): it may use ``api``, ``worker`` and
``service`` together. Each command imports what it needs inside its body, so ``hydra-service --help``
stays fast and a command never pays for another's dependencies. Everything it needs ships in the
wheel: the Alembic migrations (the ``migrations`` package), the embedded launcher
(``launch.embedded``) and the demo with its spec (``launch.demo``).

    python -m launch.service_cli COMMAND ...     # the same as ``hydra-service COMMAND ...``
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="hydra-service",
    help="Administer the HYDRA compression service.",
    no_args_is_help=True,
    add_completion=False,
)


def _settings():  # type: ignore[no-untyped-def]
    from service.settings import get_settings

    return get_settings()


@app.command("migrate")
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: Annotated[str | None, typer.Option("--database-url", help="Instead of HYDRA_DATABASE_URL.")] = None,
) -> None:
    """Bring the database schema up to date (safe to run on every deploy)."""
    import logging

    from migrations import upgrade
    from service.logs import configure_logging

    url = database_url or _settings().database_url
    try:
        json_lines = _settings().log_json
    except ValueError:  # settings that do not validate (say, env=prod without S3) do not block --database-url
        json_lines = False
    configure_logging(json_lines, process="migrate")  # Alembic's "Running upgrade ..." lines, on stderr
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # not its start-up chatter
    upgrade(url, revision)
    typer.echo(f"database at {revision}")


def _ready_db():  # type: ignore[no-untyped-def]
    """The settings, with their database migrated to the latest schema first: a key command in a
    fresh data directory must not fail on ``no such table`` (nor leave an empty database behind).
    Migrating is idempotent, the same revisions ``migrate`` and ``serve`` apply."""
    from launch.embedded import migrate as migrate_db

    settings = _settings()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    migrate_db(settings)
    return settings


@app.command("data-dir")
def data_dir() -> None:
    """Print the data directory (HYDRA_DATA_DIR) and where the database, broker and objects live."""
    s = _settings()
    typer.echo(s.data_dir)
    typer.echo(f"database={s.database_url} broker={s.broker_url} objects={s.storage_dir} work={s.work_dir}", err=True)


@app.command("create-key")
def create_key(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name (created if new).")],
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
) -> None:
    """Create an API key for a tenant and print it once (only its hash is stored)."""
    from service.db import keys
    from service.db.session import session_scope

    with session_scope(_ready_db()) as session:
        key, token = keys.create_api_key(session, tenant, name)
        prefix = key.prefix
    typer.echo(token)
    typer.echo(f"tenant={tenant} prefix={prefix} (store the key now: it cannot be shown again)", err=True)


@app.command("revoke-key")
def revoke_key(prefix: Annotated[str, typer.Argument(help="The key's 8-character prefix.")]) -> None:
    """Revoke the key with this prefix; requests with it get 401 from then on."""
    from service.db import keys
    from service.db.session import session_scope

    with session_scope(_ready_db()) as session:
        count = keys.revoke_keys(session, prefix)
    if count == 0:
        typer.echo(f"no live key with prefix {prefix!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {count} key(s) with prefix {prefix}")


@app.command("list-keys")
def list_keys(tenant: Annotated[str | None, typer.Option("--tenant")] = None) -> None:
    """List keys (prefix, tenant, name, created, revoked); secrets are never shown."""
    from service.db import keys
    from service.db.session import session_scope

    with session_scope(_ready_db()) as session:
        for key, tenant_name in keys.list_api_keys(session, tenant):
            revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
            typer.echo(f"{key.prefix}\t{tenant_name}\t{key.name or '-'}\t{key.created_at.isoformat()}\t{revoked}")


@app.command("workers")
def workers() -> None:
    """List the workers and their last heartbeat (host, pid, age; alive = younger than the lease).

    The per-worker view that /metrics does not give (it asks for no key, so it names no host or pid)."""
    from service.db import workers as db_workers
    from service.db.base import utcnow
    from service.db.session import session_scope

    settings = _ready_db()
    with session_scope(settings) as session:
        rows = db_workers.list_workers(session)
        now = utcnow()
        for row in rows:
            age = (now - row.heartbeat_at).total_seconds()
            state = "alive" if age <= settings.lease_seconds else "silent"
            typer.echo(f"{row.name}\t{state}\theartbeat {age:.1f}s ago\tstarted {row.started_at.isoformat()}")
    if not rows:
        typer.echo("no worker has ever written a heartbeat to this database", err=True)


# ----------------------------------------------------------------------------- serve, worker, demo
# (the embedded launcher, the worker and the demo: launch/embedded.py, worker/, launch/demo.py)
@app.command("serve")
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Start a Celery worker beside the API.")] = True,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the embedded service: API + worker + reaper; SQLite and a local object folder in the data
    directory (HYDRA_DATA_DIR, default ~/.local/share/hydra-compress; see `hydra-service data-dir`)."""
    from launch.embedded import serve as run_embedded

    run_embedded(host, port, with_worker=worker, log_level=log_level)


@app.command("api")
def api(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="uvicorn worker processes.")] = 1,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the API alone, for production (Compose, Kubernetes): the settings come from HYDRA_* only,
    the schema must be migrated first (`hydra-service migrate`), workers and reaper run elsewhere.

    Unlike a bare `uvicorn --factory api.main:create_app`, uvicorn's own lines (start-up, access,
    errors) go through the service's filters, and are JSON objects when HYDRA_LOG_JSON is set."""
    import uvicorn

    from service.logs import configure_logging, uvicorn_log_config

    settings = _settings()
    configure_logging(settings.log_json)
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=uvicorn_log_config(settings.log_json),
        timeout_graceful_shutdown=10,  # an open event stream must not hold a deploy's shutdown
    )


@app.command("worker")
def worker(
    pool: Annotated[str, typer.Option("--pool", help="prefork (production) or solo.")] = "prefork",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Jobs at once (one per GPU).")] = 1,
    queues: Annotated[str | None, typer.Option("--queues", "-Q", help="Default: HYDRA_QUEUE_NAME.")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Run a Celery worker for training jobs (replaces this process, so it receives SIGTERM itself)."""
    import os
    import sys

    from launch.embedded import celery_worker_argv

    argv = celery_worker_argv(pool, queues or _settings().queue_name, loglevel, "--concurrency", str(concurrency))
    os.execv(sys.executable, argv)


@app.command(
    "demo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)
def demo(ctx: typer.Context) -> None:
    """Run the end-to-end demo (launch/demo.py; pass --help after 'demo' for its options)."""
    from launch.demo import main

    raise typer.Exit(main(list(ctx.args)))


if __name__ == "__main__":
    app()
