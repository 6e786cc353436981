"""The one error type of the core: a stable code, the field at fault, and a readable message.

The API renders it as ``{"error_code", "detail", "field"}``; the CLI prints it. Every check of user
input in ``core`` raises this, never a bare ``ValueError``, so a caller can tell bad input from a bug.
"""

from __future__ import annotations


def names_field(message: str, field: str | None) -> bool:
    """Whether ``message`` already says where the problem is (it starts with ``field:``, or names it
    in backticks: ``unknown field `epohcs` in `stages.pretrain```); ``hydra_client.errors`` has the twin."""
    if not field:
        return True
    parent, _, last = field.rpartition(".")
    return (
        message.startswith(f"{field}:")
        or f"`{field}`" in message
        or (bool(parent) and f"`{last}` in `{parent}`" in message)
    )


def with_field(field: str | None, message: str) -> str:
    """``field: message`` on one line, the field named once even when the message names it already."""
    message = " ".join(message.split())
    return message if names_field(message, field) else f"{field}: {message}"


class CoreError(Exception):
    """Bad input or an impossible request, named by the field that caused it."""

    def __init__(self, code: str, field: str | None, message: str) -> None:
        self.code = code
        self.field = field
        self.message = message
        super().__init__(with_field(field, message))


class ResumeMismatch(CoreError):
    """The run folder's checkpoint was written under a different spec; ``fields`` lists the dotted
    paths that differ (``["seed", "stages.prune.lr"]``) so the user sees what changed."""

    def __init__(self, fields: list[str], message: str | None = None) -> None:
        self.fields = list(fields)
        shown = ", ".join(self.fields[:10]) + (f" and {len(self.fields) - 10} more" if len(self.fields) > 10 else "")
        super().__init__(
            "resume_mismatch",
            "spec",
            message or f"the checkpoint was written by a different spec: {shown or 'unknown fields'} differ",
        )


class RunCanceled(Exception):
    """Raised inside a run when the caller's ``should_cancel`` says stop; the last checkpoint stands."""


class RankFailed(RuntimeError):
    """A rank raised an error that is not a ``CoreError`` (a bug: the traceback tail is in the message)."""


class RankLost(RankFailed):
    """A rank died without an error of its own (killed by a signal, out of memory): like a lost
    worker, the attempt should be retried from the last checkpoint (worker/runner.py)."""
