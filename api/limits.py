"""Request body size caps (413), enforced before any route reads a byte.

Two checks, because either alone is bypassable: the declared ``Content-Length`` is refused at the
door (no body is read at all), and the bytes actually received are counted, which catches chunked
uploads and clients that lie about their length. Uploads get ``max_upload_bytes`` (plus room for the
multipart envelope); everything else, job specs included, gets ``max_spec_bytes``.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorCode, error_body
from service.settings import Settings

UPLOAD_PATHS = ("/v1/models", "/v1/datasets")
MULTIPART_SLACK = 64 * 1024


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Pure ASGI middleware (no buffering, works with streaming bodies)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.upload_limit = settings.max_upload_bytes + MULTIPART_SLACK
        self.default_limit = settings.max_spec_bytes

    def limit_for(self, scope: Scope) -> int:
        path = scope.get("path", "")
        return self.upload_limit if path.rstrip("/") in UPLOAD_PATHS else self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                if declared is not None and declared > limit:
                    await self._reject(send, limit)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Normally the app's error handler has answered already; this covers reads outside it.
            if started:
                raise
            await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        body = json.dumps(
            error_body(ErrorCode.PAYLOAD_TOO_LARGE.code, f"request body exceeds the limit of {limit} bytes")
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
