"""JSON request bodies are checked for depth and integer size before anything parses them (422).

``json.loads`` recurses once per nesting level and every walk of the result (pydantic, our own
checks) does too: a body of a few thousand ``[`` reached the interpreter's recursion limit, and a
5,000-digit integer made the JSON decoder raise ``ValueError`` (Python's ``int`` digit limit), which
FastAPI answers with a 400 naming nothing. This middleware reads the body FastAPI would parse as JSON
(no content type, ``application/json`` or ``application/*+json``: FastAPI's own rule), measures it
without recursion (``core.safe_parse.check_json``: strings blanked, a running sum over the brackets,
in C) and answers 422 ``nesting_too_deep`` / ``number_too_long`` naming where in the body the problem
starts (``model.kwargs.a.a...``), before any route runs. The body is then handed on unchanged.

It sits inside ``BodySizeLimitMiddleware``, so it never buffers more than ``max_spec_bytes``: the
upload routes (``max_upload_bytes``; multipart forms whose JSON part, ``kwargs``, their route checks)
pass straight through.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from api.limits import UPLOAD_PATHS
from core.errors import CoreError
from core.safe_parse import check_json

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_json_body(scope: Scope) -> bool:
    """Whether FastAPI would parse this request's body as JSON (fastapi.routing's rule). The upload routes
    take multipart forms only and have a far larger size cap: their bodies are never buffered here."""
    if scope.get("method") not in BODY_METHODS or scope.get("path", "").rstrip("/") in UPLOAD_PATHS:
        return False
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            maintype, _, subtype = media.partition(b"/")
            return maintype == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))
    return True  # no content type: FastAPI tries JSON


class JsonBodyCheckMiddleware:
    """Pure ASGI: buffer a JSON body, refuse it (422) if too deep or holding a huge integer, else replay it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_json_body(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check_json(body)
        except CoreError as err:
            await _refuse(send, err)
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _refuse(send: Send, err: CoreError) -> None:
    body = json.dumps(error_body(err.code, err.message, err.field)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 422,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
