"""API docs that work without internet: Swagger UI at ``/docs`` and ReDoc at ``/redoc``, their
JavaScript and CSS served by the service itself (FastAPI's self-hosting recipe, "Custom Docs UI Static
Assets", with the files of ``fastapi-offline``, which ships a current Swagger UI 5 and ReDoc 2).

FastAPI's own pages load both from a CDN: on an air-gapped machine ``/docs`` rendered a blank page.
ReDoc's bundle also draws Redocly's logo from ``cdn.redoc.ly`` in its sidebar footer (unconditionally:
no option turns it off), so ``/redoc`` loads a copy of the bundle with that one URL pointed at our own
favicon. Both pages carry a Content-Security-Policy that allows nothing from outside (Swagger UI's
inline start-up script is allowed by its hash; both libraries inject inline styles).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from api.security_headers import inline_script_hashes

DOCS_STATIC = "/static/docs"
DOCS_ASSETS = str(files("fastapi_offline") / "static")
REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_OFFLINE_JS = "/docs-assets/redoc.offline.js"  # outside the static mount, which would shadow it
DOCS_CSP = (
    "default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    body = bytes(page.body).decode()
    page.headers["Content-Security-Policy"] = DOCS_CSP.format(hashes=" ".join(inline_script_hashes(body))).replace(
        "'self' ;", "'self';"
    )
    return page


def _offline_redoc_js() -> bytes:
    """ReDoc's bundle with its one outside URL (the footer logo) pointed at the service's favicon."""
    source = (files("fastapi_offline") / "static" / "redoc.standalone.js").read_bytes()
    return source.replace(REDOC_LOGO_URL.encode(), f"{DOCS_STATIC}/favicon.png".encode())


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the docs pages and their assets; ``app`` must be built with ``docs_url=None, redoc_url=None``."""
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")
    oauth2_redirect = f"{docs_url}/oauth2-redirect"

    def page(url: str, title: str, render: Callable[..., HTMLResponse], **assets: str) -> None:
        """Serve ``render(openapi_url=..., title=..., **assets)`` at ``url`` with the docs CSP; the OpenAPI
        document and every asset (keyword: path) get a proxy's root path before them, so the page's links
        work behind a path prefix."""

        @app.get(url, include_in_schema=False)
        async def docs_page(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            urls = {keyword: f"{root}{path}" for keyword, path in assets.items()}
            return _with_csp(render(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - {title}", **urls))

    page(
        docs_url,
        "API docs",
        # validatorUrl null: no badge fetched from swagger.io either
        partial(get_swagger_ui_html, swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None}),
        oauth2_redirect_url=oauth2_redirect,
        swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
    )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _with_csp(get_swagger_ui_oauth2_redirect_html())

    page(
        redoc_url,
        "ReDoc",
        partial(get_redoc_html, with_google_fonts=False),
        redoc_js_url=REDOC_OFFLINE_JS,
        redoc_favicon_url=f"{DOCS_STATIC}/favicon.png",
    )

    redoc_js = _offline_redoc_js()

    @app.get(REDOC_OFFLINE_JS, include_in_schema=False)
    async def redoc_offline_js() -> Response:
        return Response(redoc_js, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})
