"""A service command run as a real subprocess for a test: started, waited for, stopped by a signal,
its stdout/stderr kept in files; and those files read back as JSON log records."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def json_env(data: Path) -> dict[str, str]:
    """This environment without HYDRA_* settings, plus a data directory, JSON logs and this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env.update(
        {
            "HYDRA_DATA_DIR": str(data),
            "HYDRA_LOG_JSON": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        }
    )
    return env


class Output:
    def __init__(self, folder: Path) -> None:
        self.stdout, self.stderr = folder / "stdout", folder / "stderr"

    def __str__(self) -> str:
        return f"stdout:\n{self.stdout.read_text()}\nstderr:\n{self.stderr.read_text()}"

    def json_records(self) -> list[dict]:
        """Every non-blank line as a log record; fails on the first line that is not a JSON object with
        ``ts``, ``level``, ``logger`` and ``message``."""
        records = []
        for path in (self.stdout, self.stderr):
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    pytest.fail(f"a plain line in {path.name}: {line!r}\n{self}")
                assert isinstance(record, dict) and {"ts", "level", "logger", "message"} <= set(record), line
                records.append(record)
        return records


@contextmanager
def serving(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    url: str,
    ready: Callable[[], bool] = lambda: True,
    stop: signal.Signals = signal.SIGTERM,
    stop_timeout_s: float = 60,
) -> Iterator[Output]:
    """Run ``command`` until the block ends; yields once ``url``/healthz answers 200 and ``ready()``."""
    output = Output(cwd)
    with open(output.stdout, "wb") as out, open(output.stderr, "wb") as err:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 150
        while True:
            assert proc.poll() is None, str(output)
            assert time.monotonic() < deadline, f"{command} did not come up\n{output}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200 and ready():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield output
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
