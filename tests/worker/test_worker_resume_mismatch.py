"""A checkpoint written under a spec that validates differently now (a service upgrade changed a
default mid-job) is discarded with an event naming the fields, and the job starts over; any other
core error still fails the attempt. No broker, no database: ``JobAttempt._run`` alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.errors import CoreError, ResumeMismatch
from core.pipeline import runner as run_mod
from core.vocab import CHECKPOINT_NAME as CHECKPOINT_FILE
from worker.runner import JobAttempt

SPEC = {"device": "cpu", "model": {"arch": "cnn_small_mnist"}}


def attempt(tmp_path: Path) -> tuple[JobAttempt, list[tuple[str, dict[str, Any]]]]:
    job = JobAttempt.__new__(JobAttempt)  # the parts _run uses; the lease and store stay out
    job.run_dir = tmp_path
    job.callbacks = None  # type: ignore[assignment]
    events: list[tuple[str, dict[str, Any]]] = []
    job._event = lambda kind, payload: events.append((kind, payload))  # type: ignore[method-assign]
    return job, events


def test_a_mismatched_checkpoint_is_discarded_naming_the_fields(tmp_path, monkeypatch) -> None:
    from core.spec import load_spec

    calls: list[bool] = []

    def run_job(spec, out, callbacks, resume=False, inputs=None):  # type: ignore[no-untyped-def]
        calls.append(resume)
        if resume:
            assert (out / CHECKPOINT_FILE).exists()
            raise ResumeMismatch(["objective.eps", "objective.step_size"])
        assert not (out / CHECKPOINT_FILE).exists()
        return {"ok": True}

    monkeypatch.setattr(run_mod, "run_job", run_job)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"old")
    job, events = attempt(tmp_path)
    assert job._run(load_spec(SPEC), None) == {"ok": True}
    assert calls == [True, False]
    assert events == [
        (
            "checkpoint_discarded",
            {
                "reason": "the checkpoint was written by a different spec: objective.eps, objective.step_size differ",
                "fields": ["objective.eps", "objective.step_size"],
            },
        )
    ]


def test_other_core_errors_are_not_taken_for_a_mismatch(tmp_path, monkeypatch) -> None:
    from core.spec import load_spec

    def run_job(spec, out, callbacks, resume=False, inputs=None):  # type: ignore[no-untyped-def]
        raise CoreError("diverged", "stages.pretrain.lr", "the loss became nan")

    monkeypatch.setattr(run_mod, "run_job", run_job)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"kept")
    job, events = attempt(tmp_path)
    with pytest.raises(CoreError) as info:
        job._run(load_spec(SPEC), None)
    assert info.value.code == "diverged" and events == []
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == b"kept"
