"""The client's one exception type, carrying the service's error body ``{error_code, detail, field}``."""

from __future__ import annotations

from typing import Any


def names_field(detail: str, field: str | None) -> bool:
    """Whether ``detail`` already says where the problem is: the service's details start with the
    field (``pruning.k: k must be in (0, 1]``) or name it (``unknown field `epohcs` in `stages.pretrain```),
    so printing ``field: detail`` would name it twice."""
    if not field:
        return True
    parent, _, last = field.rpartition(".")
    return (
        detail.startswith(f"{field}:")
        or f"`{field}`" in detail
        or (bool(parent) and f"`{last}` in `{parent}`" in detail)
    )


class HydraError(Exception):
    """Anything that went wrong: talking to the service, or reading the spec file to send it.

    ``error_code`` is the service's stable code (``invalid_spec``, ``not_found``, ``unauthorized``...)
    or one of the client's own: ``connection_error`` (the service could not be reached),
    ``checksum_mismatch`` (a download did not match its listed sha256), ``timeout`` (``wait`` gave up),
    ``invalid_response``, ``spec_unreadable`` (a spec file that is missing or cannot be read).
    ``field`` names the request field at fault (``pruning.k``), if any; ``status_code`` is the HTTP
    status (``None`` when there was no response)."""

    def __init__(self, error_code: str, detail: str, field: str | None = None, status_code: int | None = None) -> None:
        self.error_code = error_code
        self.detail = detail
        self.field = field
        self.status_code = status_code
        super().__init__(str(self))

    @property
    def message(self) -> str:
        """``field: detail`` on one line, the field named once."""
        text = " ".join(self.detail.split())
        return text if names_field(text, self.field) else f"{self.field}: {text}"

    def __str__(self) -> str:
        status = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"[{self.error_code}] {self.message}{status}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error_code, self.detail, self.field, self.status_code))
