"""How a caller (the CLI, the Celery worker, a test) watches and steers a run.

``run_job`` calls these hooks; the default implementation does nothing. The worker's subclass writes
progress to the job row (throttled), appends events, uploads checkpoints and artifacts to object
storage, and answers ``should_cancel`` from the row. Hooks must be cheap or throttle themselves:
``on_progress`` and ``should_cancel`` are called once per batch (``should_cancel`` also between steps and,
in a final evaluation, inside every attack and certificate: per attack step, per forward pass where a
library runs its own loop, so it must be cheap: a flag, a throttled poll).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RunCallbacks:
    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """A milestone: ``stage_started``, ``epoch_finished`` (with metrics), ``stage_finished``,
        ``evaluation_finished``, ``run_finished`` (core.vocab names them). Payloads are JSON-able."""

    def on_progress(
        self, *, stage: str, variant: str | None, epoch: int, epochs: int, fraction: float, metrics: dict[str, float]
    ) -> None:
        """Called every batch. ``fraction`` is of the whole run, in [0, 1]."""

    def should_cancel(self) -> bool:
        """Checked every batch, between steps and inside the attacks of an evaluation; returning True
        stops the run with ``RunCanceled`` (no checkpoint is lost)."""
        return False

    def on_checkpoint(self, path: Path) -> None:
        """A checkpoint was written atomically at ``path`` (inside the run folder)."""

    def on_artifact(self, name: str, path: Path, size: int, sha256: str) -> None:
        """A final artifact was written."""
