"""The one error type of the core: a stable code, the field at fault, and a readable message.

The API renders it as ``{"error_code", "detail", "field"}``; the CLI prints it. Every check of user
input in ``core`` raises this, never a bare ``ValueError``, so a caller can tell bad input from a bug.
"""
from __future__ import annotations


class CoreError(Exception):
    """Bad input or an impossible request, named by the field that caused it."""

    def __init__(self, code: str, field: str | None, message: str) -> None:
        self.code = code
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def to_dict(self) -> dict[str, str | None]:
        return {"error_code": self.code, "field": self.field, "detail": self.message}


class RunCanceled(Exception):
    """Raised inside a run when the caller's ``should_cancel`` says stop; the last checkpoint stands."""
