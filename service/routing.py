"""Which queue a job goes to: routing by GPU count, decided from the spec at submission and again at
every (re-)send, so a job needing N GPUs only reaches a worker that has them (docs/ARCHITECTURE.md,
"Growing a deployment")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.settings import Settings


def job_gpus(spec: Mapping[str, Any]) -> int:
    """``resources.gpus`` of a stored spec (0 when absent: a spec from before the section existed)."""
    resources = spec.get("resources") or {}
    return int(resources.get("gpus") or 0)


def gpu_queue_map(settings: Settings) -> dict[int, str]:
    """``gpu_queues`` (``"2:gpu2,4:gpu4"``) as ``{2: "gpu2", 4: "gpu4"}``."""
    pairs = (item.split(":", 1) for item in settings.gpu_queues.split(",") if item)
    return {int(count): name for count, name in pairs}


def queue_for(settings: Settings, spec: Mapping[str, Any]) -> str | None:
    """The queue of a job with this spec: ``queue_name`` for CPU and one-GPU jobs, else the queue of
    the smallest configured GPU count that holds the job (``gpu_queues``); None when none does."""
    gpus = job_gpus(spec)
    if gpus <= 1:
        return settings.queue_name
    queues = gpu_queue_map(settings)
    fitting = sorted(count for count in queues if count >= gpus)
    return queues[fitting[0]] if fitting else None


__all__ = ["gpu_queue_map", "job_gpus", "queue_for"]
