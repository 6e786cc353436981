"""Bounding concurrent uploads: per API key (429) and per API process (503), before the body is read.

An upload costs the API a spooled copy on disk, a worker thread and the CPU of its check for as long
as it runs; without a bound, one key (or many) sending uploads in parallel takes all of them. The
check happens at the door (pure ASGI middleware, like ``api.limits``): FastAPI parses a multipart
body before any dependency runs, so a route-level check would come after the bytes were received.
Here the key is authenticated first (auth cache, else the database), a missing or wrong key is
answered 401 without reading the body, and a request over either limit is answered at once with its
error code, a ``Retry-After`` and the name of the setting it hit. The counters live in the API
process (like ``rate_limit_backend=memory``): with W processes a key may hold W times its slots;
memory and threads, which the limit protects, are per process too.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import get_app_settings, lookup_principal, unauthorized
from api.errors import ApiError, ErrorCode, error_body
from api.limits import UPLOAD_PATHS
from service.settings import Settings

RETRY_AFTER_S = 10  # an upload's check takes seconds; no exact time can be promised


class UploadSlots:
    """Counters of uploads in progress, per key and in all (thread-safe)."""

    def __init__(self, per_key: int, overall: int) -> None:
        self.per_key = per_key
        self.overall = overall
        self._lock = threading.Lock()
        self._by_key: defaultdict[int, int] = defaultdict(int)
        self._total = 0

    def acquire(self, key_id: int) -> ErrorCode | None:
        """Take a slot for ``key_id``; None if taken, else the error the request is refused with."""
        with self._lock:
            if self._by_key[key_id] >= self.per_key:
                return ErrorCode.TOO_MANY_UPLOADS
            if self._total >= self.overall:
                return ErrorCode.UPLOADS_BUSY
            self._by_key[key_id] += 1
            self._total += 1
            return None

    def release(self, key_id: int) -> None:
        with self._lock:
            self._total -= 1
            self._by_key[key_id] -= 1
            if self._by_key[key_id] <= 0:
                del self._by_key[key_id]

    @property
    def in_progress(self) -> int:
        return self._total


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return (token.strip() or None) if scheme.lower() == "bearer" else None
    return None


class UploadConcurrencyMiddleware:
    """Holds a slot of :class:`UploadSlots` for the whole of each ``POST`` to an upload path."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.slots = UploadSlots(settings.max_concurrent_uploads_per_key, settings.max_concurrent_uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path", "").rstrip("/") not in UPLOAD_PATHS
        ):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        request = Request(scope)
        principal = None
        if token:
            try:
                principal = await lookup_principal(request, await get_app_settings(request), token)
            except Exception:  # noqa: BLE001 - the database is down: the route answers that, as it always has
                await self.app(scope, receive, send)
                return
        if principal is None:
            await _answer(send, unauthorized())
            return
        refused = self.slots.acquire(principal.api_key_id)
        if refused is not None:
            await _answer(send, self._refusal(refused))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release(principal.api_key_id)

    def _refusal(self, error: ErrorCode) -> ApiError:
        if error is ErrorCode.TOO_MANY_UPLOADS:
            detail = (
                f"this API key already has {self.slots.per_key} uploads in progress, the limit "
                f"(max_concurrent_uploads_per_key = {self.slots.per_key}); retry when one has finished"
            )
        else:
            detail = (
                f"the service is checking {self.slots.overall} uploads, its limit (max_concurrent_uploads = "
                f"{self.slots.overall}); retry in {RETRY_AFTER_S} s"
            )
        return ApiError(error, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _answer(send: Send, err: ApiError) -> None:
    """The standard error body, sent before the request body was read (so the connection closes)."""
    body = json.dumps(error_body(err.error.code, err.detail, err.field)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (err.headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": err.error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
