"""``hydra-service serve`` as a user starts it, for the client and browser tests: the embedded default
(SQLite, local object folder, SQL-backed Celery broker, a solo worker and the reaper) in an empty
folder, with JSON log lines on, stopped with Ctrl-C at the end. Importable by name from the test
folders that use it (imported as ``tests.client.embedded_service``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# The tiny job of the worker tests, both methods (a comparison with rows to show), no AutoAttack: ~30 s.
TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "seed": 1,
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 256, "max_test_samples": 64, "batch_size": 64},
    "objective": {"type": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
    "pruning": {"methods": ["hydra", "lwm"], "k": [0.1]},
    "stages": {
        "pretrain": {"epochs": 1, "lr": 0.05},
        "prune": {"epochs": 1, "lr": 0.1},
        "finetune": {"epochs": 1, "lr": 0.01},
    },
    "evaluation": {
        "pgd_steps": 2,
        "val_pgd_steps": 1,
        "val_max_samples": 32,
        "autoattack": False,
        "measure_latency": False,
    },
    "export": {"formats": ["compressed"]},
}

# A job that would run for a long time: only ever submitted to be canceled.
LONG_SPEC: dict[str, Any] = {
    **TINY_SPEC,
    "name": "long",
    "stages": {
        "pretrain": {"epochs": 500, "lr": 0.05},
        "prune": {"epochs": 1, "lr": 0.1},
        "finetune": {"epochs": 1, "lr": 0.01},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedService:
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    key: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)  # HYDRA_* settings of one test

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def serve_log(self) -> Path:
        return self.root / "serve.log"

    @property
    def worker_log(self) -> Path:
        return self.root / "var" / "worker.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}  # the embedded defaults
        env.update(
            {
                "HYDRA_DATA_DIR": str(self.root / "var"),
                "HYDRA_LOG_JSON": "true",
                "HYDRA_PROGRESS_MIN_INTERVAL_S": "0.2",
                "HYDRA_RATE_LIMIT_PER_MINUTE": "0",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout_s: float = 120) -> EmbeddedService:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.serve_log, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "launch.service_cli", "serve", "--port", str(self.port)],
                cwd=self.root,
                env=self.env(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        key_path = self.root / "var" / "admin.key"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited ({self.proc.returncode}):\n{self.serve_log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200 and key_path.is_file():
                    self.key = key_path.read_text().strip()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the service did not come up:\n{self.serve_log.read_text()}")

    def create_key(self, tenant: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "launch.service_cli", "create-key", "--tenant", tenant],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)

    def logs(self) -> str:
        parts = [self.serve_log.read_text(errors="replace")]
        if self.worker_log.is_file():
            parts.append(self.worker_log.read_text(errors="replace"))
        return "\n".join(parts)
