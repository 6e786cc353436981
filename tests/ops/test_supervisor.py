"""The embedded launcher's worker supervision (launch/supervisor.py) on real subprocesses standing in
for the worker: a SIGKILLed one is logged by signal and restarted after the back-off, a crash loop is
given up on with one clear line, and the back-off doubles up to its cap."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from launch.supervisor import WorkerSupervisor, describe_exit


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def release(self) -> None:
        pass


def _stop(handle: Proc) -> int | None:
    if handle.proc.poll() is None:
        handle.proc.terminate()
    return handle.proc.wait(timeout=10)


def _wait(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_killed_worker_is_logged_by_signal_and_restarted_after_the_backoff(caplog) -> None:  # type: ignore[no-untyped-def]
    started: list[Proc] = []

    def start() -> Proc:
        started.append(Proc(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])))
        return started[-1]

    supervisor = WorkerSupervisor(start, _stop, restart_backoff_s=0.5, poll_s=0.05)
    caplog.set_level(logging.INFO, logger="launch.supervisor")
    supervisor.start()
    try:
        first = started[0]
        time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)  # what the OOM killer sends
        killed_at = time.monotonic()
        _wait(lambda: len(started) == 2, 10)
        restart_s = time.monotonic() - killed_at
        assert 0.5 <= restart_s < 3, restart_s  # the back-off, then at once
        assert supervisor.restarts == 1 and started[1].poll() is None
        died = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert died and f"worker (pid {first.pid}) died: killed by SIGKILL (signal 9)" in died[0], died
        assert "restarting it in 0.5s" in died[0]
        assert any(f"worker restarted (pid {started[1].pid}, restart 1)" in r.getMessage() for r in caplog.records)
    finally:
        code = supervisor.stop()
    assert code == -signal.SIGTERM and started[1].poll() is not None  # stopped in order, not left behind
    assert len(started) == 2  # stop() does not restart it


def test_a_worker_that_keeps_dying_at_start_is_given_up_on_with_one_clear_line(caplog) -> None:  # type: ignore[no-untyped-def]
    started: list[Proc] = []

    def start() -> Proc:
        started.append(Proc(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])))
        return started[-1]

    supervisor = WorkerSupervisor(start, _stop, restart_backoff_s=0.05, max_quick_crashes=3, poll_s=0.02)
    caplog.set_level(logging.INFO, logger="launch.supervisor")
    supervisor.start()
    try:
        _wait(lambda: supervisor.gave_up, 30)
        time.sleep(0.3)
        assert len(started) == 3  # the first start and two restarts, then no more
    finally:
        supervisor.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all("exit 3" in e for e in errors)
    assert "died 3 times in a row" in errors[-1] and "not restarted again" in errors[-1]
    assert "/readyz answers 503" in errors[-1]


@pytest.mark.parametrize(
    ("crashes", "delay"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (50, 60.0)]
)
def test_backoff_doubles_while_it_keeps_crashing_and_is_capped(crashes: int, delay: float) -> None:
    supervisor = WorkerSupervisor(lambda: None, lambda h: None, restart_backoff_s=1.0, restart_backoff_max_s=60.0)  # type: ignore[arg-type, return-value]
    assert supervisor.delay_after(crashes) == delay


def test_exit_descriptions() -> None:
    assert describe_exit(0) == "exit 0"
    assert describe_exit(-9) == "killed by SIGKILL (signal 9)"
    assert describe_exit(-15) == "killed by SIGTERM (signal 15)"
