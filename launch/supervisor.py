"""The embedded launcher's watch over its worker subprocess: a worker that dies (the OOM killer's
SIGKILL, a crash) is logged with how it ended and started again, after an exponential back-off.

Why a thread of our own rather than a process manager: the embedded default must run with nothing
installed (no systemd unit, no supervisord), and the launcher already owns the worker's life (its
start with the resolved data directory, its SIGTERM stop in order). The rules:

- a death is logged at ERROR with the exit code or the signal, the pid and how long it ran;
- the next start waits ``restart_backoff_s``, doubled after every run shorter than ``stable_after_s``
  (a crash loop must not spin the CPU), capped at ``restart_backoff_max_s``; a run that lasted longer
  resets it;
- after ``max_quick_crashes`` runs in a row that each died within ``stable_after_s`` of their start,
  the supervisor gives up with one ERROR line naming the worker log: the API stays up (the jobs and
  their artifacts stay readable) and ``/readyz`` says no worker is alive.

A job the dead worker was running is the reaper's: its lease expires and it is requeued (DELIVERY.md).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Handle(Protocol):
    """What the supervisor needs of a started worker (``launch.embedded.WorkerHandle``)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def release(self) -> None:
        """Free what the run held (its log file) once it has exited."""
        ...


def describe_exit(code: int) -> str:
    """``exit 1`` or ``killed by SIGKILL (signal 9)``: how a subprocess ended, from its return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (signal {-code})"
    return f"exit {code}"


class WorkerSupervisor:
    """Start a worker with ``start()`` and keep one running until ``stop()``."""

    def __init__(
        self,
        start: Callable[[], Handle],
        stop: Callable[[Handle], int | None],
        *,
        restart_backoff_s: float = 1.0,
        restart_backoff_max_s: float = 60.0,
        stable_after_s: float = 30.0,
        max_quick_crashes: int = 5,
        poll_s: float = 0.2,
    ) -> None:
        self._start, self._stop_worker = start, stop
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = max(restart_backoff_max_s, restart_backoff_s)
        self.stable_after_s = stable_after_s
        self.max_quick_crashes = max_quick_crashes
        self.poll_s = poll_s
        self.restarts = 0
        self.gave_up = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._handle: Handle | None = None
        self._started_at = 0.0
        self._thread: threading.Thread | None = None

    @property
    def handle(self) -> Handle | None:
        with self._lock:
            return self._handle

    def start(self) -> Handle:
        handle = self._launch()
        self._thread = threading.Thread(target=self._watch, name="hydra-worker-supervisor", daemon=True)
        self._thread.start()
        return handle

    def _launch(self) -> Handle:
        handle = self._start()
        with self._lock:
            self._handle, self._started_at = handle, time.monotonic()
        return handle

    def delay_after(self, quick_crashes: int) -> float:
        """The wait before the next start after ``quick_crashes`` short runs in a row (0: a long run)."""
        return min(self.restart_backoff_max_s, self.restart_backoff_s * 2 ** min(30, max(0, quick_crashes - 1)))

    def _watch(self) -> None:
        quick_crashes = 0
        while not self._stopping.wait(self.poll_s):
            with self._lock:
                handle, started_at = self._handle, self._started_at
            if handle is None:
                return
            code = handle.poll()
            if code is None:
                continue
            ran_s = time.monotonic() - started_at
            handle.release()
            quick_crashes = quick_crashes + 1 if ran_s < self.stable_after_s else 0
            how = describe_exit(code)
            if quick_crashes >= self.max_quick_crashes:
                self.gave_up = True
                log.error(
                    "worker (pid %s) died: %s after %.1fs; it died %s times in a row within %.0fs of starting, "
                    "so it is not restarted again: the API stays up but accepts jobs no worker will run "
                    "(/readyz answers 503). See the worker log, fix the cause and restart the service.",
                    handle.pid,
                    how,
                    ran_s,
                    quick_crashes,
                    self.stable_after_s,
                )
                return
            delay = self.delay_after(quick_crashes)
            log.error(
                "worker (pid %s) died: %s after %.1fs; restarting it in %.1fs (its running job, if any, is "
                "requeued when its lease expires)",
                handle.pid,
                how,
                ran_s,
                delay,
            )
            if self._stopping.wait(delay):
                return
            try:
                new = self._launch()
            except Exception:  # could not even spawn: counted as a quick crash
                log.exception("worker could not be started; retrying")
                with self._lock:
                    self._started_at = time.monotonic()
                continue
            self.restarts += 1
            log.warning("worker restarted (pid %s, restart %s)", new.pid, self.restarts)

    def stop(self) -> int | None:
        """Stop watching, then stop the current worker in order (SIGTERM: checkpoint, hand back, exit)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is None:
            return None
        return self._stop_worker(handle)
