"""The names of the Celery tasks, shared by the API (which sends them by name, never importing the
worker) and the worker (which registers them). Defined once, here, in the layer both import."""

from __future__ import annotations

RUN_JOB_TASK = "hydra.run_job"  # args: [job_id]; the job row, not the message, is the truth
REAP_TASK = "hydra.reap"  # periodic: requeue jobs whose lease expired
