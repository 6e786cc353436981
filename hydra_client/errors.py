"""The client's one exception type, carrying the service's error body ``{error_code, detail, field}``."""

from __future__ import annotations

from typing import Any


class HydraError(Exception):
    """Anything that went wrong talking to the service.

    ``error_code`` is the service's stable code (``invalid_spec``, ``not_found``, ``unauthorized``...)
    or one of the client's own: ``connection_error`` (the service could not be reached),
    ``checksum_mismatch`` (a download did not match its listed sha256), ``timeout`` (``wait`` gave up),
    ``invalid_response``. ``field`` names the request field at fault (``pruning.k``), if any;
    ``status_code`` is the HTTP status (``None`` when there was no response)."""

    def __init__(self, error_code: str, detail: str, field: str | None = None, status_code: int | None = None) -> None:
        self.error_code = error_code
        self.detail = detail
        self.field = field
        self.status_code = status_code
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" {self.field}:" if self.field else ""
        status = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"[{self.error_code}]{where} {self.detail}{status}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error_code, self.detail, self.field, self.status_code))
