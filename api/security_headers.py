"""A Content-Security-Policy on every response (pages, JSON, files): nothing is loaded from outside.

The dashboard's pages (api/ui.py) and the docs pages (api/docs.py) set their own policy, which the
middleware leaves in place; every other response gets ``DEFAULT_CSP``, the strictest one (a JSON
body or a download is never a document that should run or load anything). Inline scripts are
refused everywhere except where a page lists their sha256 (``inline_script_hashes``): Swagger UI's
start-up snippet.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def inline_script_hashes(html: str) -> list[str]:
    """The CSP source expressions (``'sha256-...'``) of a page's inline ``<script>`` elements."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


class ContentSecurityPolicyMiddleware:
    """Adds ``DEFAULT_CSP`` (and ``X-Content-Type-Options: nosniff``) to responses that set none."""

    def __init__(self, app: ASGIApp, policy: str = DEFAULT_CSP) -> None:
        self.app = app
        self.policy = policy.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", self.policy))
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
