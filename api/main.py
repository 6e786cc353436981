"""The FastAPI application factory.

``create_app(settings)`` builds an app bound to those settings (tests pass their own; production
passes nothing and gets ``get_settings()``, i.e. the environment). Nothing is built at import time:
``uvicorn --factory api.main:create_app`` calls the factory, and ``api.main:app`` is created lazily on
first access (PEP 562), so importing this module never reads the environment or opens connections.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api.body_checks import JsonBodyCheckMiddleware
from api.docs import install_docs
from api.errors import install_error_handlers
from api.limits import BodySizeLimitMiddleware
from api.metrics import install_metrics
from api.openapi import install_openapi
from api.routes import api_router, health_router
from api.security_headers import ContentSecurityPolicyMiddleware
from api.ui import install_ui
from api.upload_slots import UploadConcurrencyMiddleware
from service.db.aio import build_async_reader
from service.logs import RequestContextMiddleware, configure_logging
from service.settings import Settings, get_settings

API_PREFIX = "/v1"
DESCRIPTION = (
    "Compress neural networks with HYDRA without giving up their robustness. Submit a job spec, watch "
    "its progress, download the compressed network and an honest report of benign, empirical-robust and "
    "certified accuracy. Authenticate with `Authorization: Bearer <API key>`. Every error has the body "
    '`{"error_code", "detail", "field"}`.'
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the async Postgres reader in the server's event loop; close it on shutdown."""
    configure_logging(app.state.settings.log_json)  # again: uvicorn set its handlers after create_app
    reader = build_async_reader(app.state.settings)
    if reader is not None:
        await reader.open()
    app.state.async_reader = reader
    try:
        yield
    finally:
        app.state.async_reader = None
        if reader is not None:
            await reader.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: the process settings from the environment)."""
    effective = settings or get_settings()
    app = FastAPI(
        lifespan=_lifespan,
        title="HYDRA robust compression service",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,  # /docs and /redoc are served offline by api/docs.py
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install_error_handlers(app)
    app.add_middleware(UploadConcurrencyMiddleware, settings=effective)  # inside the size limit
    app.add_middleware(JsonBodyCheckMiddleware)  # inside the size cap: depth and huge integers (422)
    app.add_middleware(BodySizeLimitMiddleware, settings=effective)
    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(health_router)
    install_openapi(app)  # the schema says exactly what the service accepts (api/openapi.py)
    app.state.settings = effective  # injected by api.deps.SettingsDep
    app.state.async_reader = None
    install_docs(app)  # Swagger UI / ReDoc with their assets served by the service (no CDN)
    install_ui(app)  # the web dashboard at /ui
    install_metrics(app, effective)  # /metrics: HTTP and job metrics (Prometheus)
    app.add_middleware(RequestContextMiddleware)  # job id and tenant on every log line of a request
    app.add_middleware(ContentSecurityPolicyMiddleware)  # every response; pages set their own (api/security_headers.py)
    configure_logging(effective.log_json)
    logging.getLogger(__name__).info(
        "API ready: env=%s storage=%s queue=%s", effective.env, effective.storage_backend, effective.queue_name
    )
    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    """``api.main:app`` for tools that want an attribute, built on first use from the environment."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
