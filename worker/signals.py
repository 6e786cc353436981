"""SIGTERM means "checkpoint and hand the job back", not "lose the epoch": it sets ``shutdown_requested``,
which the run sees at its next batch. The flag is set in the main process on ``worker_shutting_down``
(solo/threads pools; it also forwards SIGTERM to prefork children), and in a prefork child by the
handler ``sigterm_stops_the_run`` installs for the length of a task. Delivery semantics: docs/DELIVERY.md.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import signals

log = logging.getLogger(__name__)

shutdown_requested = threading.Event()


def _on_sigterm(signum: int, _frame: object) -> None:
    shutdown_requested.set()


@signals.worker_shutting_down.connect
def _main_process_shutting_down(sig: str | None = None, how: str | None = None, **_: object) -> None:
    shutdown_requested.set()
    try:
        import billiard

        children = billiard.active_children()
    except Exception:  # noqa: BLE001 - a signal handler must not raise
        children = []
    for child in children:
        try:
            os.kill(child.pid, signal.SIGTERM)
        except OSError:
            pass


def _in_pool_child() -> bool:
    try:
        from billiard.process import current_process

        return current_process()._name != "MainProcess"
    except Exception:  # noqa: BLE001
        return False


@contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """While a task runs in a prefork pool child, SIGTERM sets ``shutdown_requested`` instead of
    exiting. Elsewhere (solo pool, threads, tests) this does nothing: Celery's main-process handler
    and ``worker_shutting_down`` already cover it, and only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread() or not _in_pool_child():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@signals.worker_process_init.connect
def _pool_child_started(**_: object) -> None:
    # Connections inherited across fork must not be shared with the parent: start a fresh pool.
    try:
        from service.db.session import get_engine
        from service.settings import get_settings

        get_engine(get_settings()).dispose(close=False)
    except Exception:
        log.debug("no engine to dispose in the pool child", exc_info=True)
