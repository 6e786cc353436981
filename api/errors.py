"""The API's single error type and the handlers that give every 4xx/5xx one body shape:
``{"error_code": str, "detail": str, "field": str | null}``.

Why one shape: clients (the CLI, the SDK, a browser) branch on ``error_code`` and highlight ``field``;
they should not have to know whether a 422 came from FastAPI's request validation, from the core's
``CoreError`` or from our own checks, or whether a 404 means "no such route" or "not your job".
Routes raise ``ApiError(ErrorCode.X, ...)``; nothing builds ``HTTPException`` inline.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import CoreError, with_field
from core.field_errors import clean_message, first_problem
from core.spec import OBJECTIVE_TYPES

log = logging.getLogger(__name__)


class ErrorCode(enum.Enum):
    """Stable error codes and the HTTP status each one is answered with."""

    BAD_REQUEST = ("bad_request", 400)
    UNAUTHORIZED = ("unauthorized", 401)
    NOT_FOUND = ("not_found", 404)
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405)
    CONFLICT = ("conflict", 409)
    IDEMPOTENCY_KEY_REUSED = ("idempotency_key_reused", 409)
    JOB_NOT_SUCCEEDED = ("job_not_succeeded", 409)
    PAYLOAD_TOO_LARGE = ("payload_too_large", 413)
    UNSUPPORTED_MEDIA_TYPE = ("unsupported_media_type", 415)
    VALIDATION_ERROR = ("validation_error", 422)
    INVALID_SPEC = ("invalid_spec", 422)
    INVALID_REFERENCE = ("invalid_reference", 422)
    INVALID_UPLOAD = ("invalid_upload", 422)
    RATE_LIMITED = ("rate_limited", 429)
    INTERNAL_ERROR = ("internal_error", 500)
    SERVICE_UNAVAILABLE = ("service_unavailable", 503)
    TOO_MANY_UPLOADS = ("too_many_uploads", 429)  # this key's concurrent uploads (api/upload_slots.py)
    UPLOADS_BUSY = ("uploads_busy", 503)  # the process's concurrent uploads, all keys together

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]


_BY_STATUS: dict[Any, Any] = {}
for _member in ErrorCode:
    _BY_STATUS.setdefault(_member.status, _member)


class ApiError(Exception):
    """An error the API answers with; ``field`` names the request field at fault, if any."""

    def __init__(
        self,
        error: ErrorCode,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.field = field
        self.headers = headers


def error_body(code: str, detail: str, field: str | None = None) -> dict[str, Any]:
    return {"error_code": code, "detail": detail, "field": field}


def error_response(
    status: int, code: str, detail: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, detail, field), status_code=status, headers=headers)


# Tags of the objective's discriminated union appear in pydantic locations; users never write them.
_UNION_TAGS = frozenset(OBJECTIVE_TYPES)
_LOC_SOURCES = {"body", "query", "path", "header", "cookie"}


def field_from_loc(loc: Sequence[Any]) -> str | None:
    """A pydantic error location as the dotted path a user wrote: ('body','pruning','k') -> 'pruning.k'."""
    parts = list(loc)
    if parts and parts[0] in _LOC_SOURCES:
        parts = parts[1:]
    out: list[str] = []
    for i, part in enumerate(parts):
        if isinstance(part, str) and part in _UNION_TAGS and i > 0 and parts[i - 1] == "objective":
            continue
        if isinstance(part, str) and part.startswith(("function-", "json-or-python", "tagged-union")):
            continue
        out.append(str(part))
    return ".".join(out) or None


def _message(err: dict[str, Any]) -> str:
    return clean_message(str(err.get("msg", "invalid value")))


def _body_model(request: Request) -> type[BaseModel] | None:
    """The route's request-body model (``JobSpec`` for ``POST /v1/jobs``), whose fields an unknown
    key is matched against for a suggestion."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    annotation = getattr(getattr(body_field, "field_info", None), "annotation", None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.error.status, exc.error.code, exc.detail, exc.field, exc.headers)


async def _core_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CoreError)
    return error_response(422, exc.code, exc.message, exc.field)


#: core.spec's cross-field rules that the JSON Schema does not state: the resources (fp16 needs CUDA,
#: ranks vs devices, a batch the ranks can split), the pruning budget and sharpness options, and an
#: option given both nested and in its old flat spelling with different values (core.config.nest_flat_options)
SPEC_RULE_CODES = frozenset(
    {
        "unsupported_precision",
        "invalid_resources",
        "invalid_batch_size",
        "invalid_budget",
        "invalid_score_sharpness",
        "conflicting_options",
    }
)

_NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "model_type"}
_YAML_HINT = (
    "; a YAML spec must be converted first (`hydra-compress submit spec.yaml` and the Python client do it, "
    "or: python -c 'import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin)))' < spec.yaml)"
)


def _not_json_body(request: Request, first: dict[str, Any]) -> JSONResponse | None:
    """A body that is not JSON at all (YAML, a form) where a JSON object is expected: name the
    Content-Type (415) instead of pydantic's "Input should be a valid dictionary" with no field."""
    if first.get("type") not in _NOT_AN_OBJECT or tuple(first.get("loc", ())) != ("body",):
        return None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return None
    given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return error_response(
        415,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE.code,
        f"the body must be a JSON object sent as Content-Type: application/json; got {given}{_YAML_HINT}",
        "Content-Type",
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return error_response(422, ErrorCode.VALIDATION_ERROR.code, "invalid request")
    first = errors[0]
    refused = _not_json_body(request, first)
    if refused is not None:
        return refused
    if first.get("type") == "json_invalid":
        detail = f"body is not valid JSON: {(first.get('ctx') or {}).get('error', 'decode error')}"
        if "yaml" in request.headers.get("content-type", "").lower():
            detail += _YAML_HINT
        return error_response(422, "invalid_json", detail, None)
    # an unknown (misspelled) key first, with the known field it most likely meant (core.field_errors)
    skip = 1 if tuple(first.get("loc", ()))[:1] == ("body",) else 0
    field, message, others = first_problem(errors, _body_model(request), field_from_loc, skip=skip)
    detail = with_field(field, message)
    if others:
        detail += f" (and {others} more problem{'s' if others > 1 else ''})"
    # a cross-field rule no JSON Schema can state (the resources a job may combine) keeps its own code,
    # documented as a semantic 422 of the routes that validate a spec (api/openapi.py SEMANTIC_422)
    code = str(first.get("type")) if first.get("type") in SPEC_RULE_CODES else ErrorCode.VALIDATION_ERROR.code
    return error_response(422, code, detail, field)


_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document lists for this path (HEAD with GET). Starlette's 405 names
    only the methods of the first route that matched the path, so ``OPTIONS /v1/models`` said
    ``Allow: POST`` although ``GET /v1/models`` exists too. Empty for paths outside the document."""
    import re

    app = request.app
    patterns = getattr(app.state, "allow_patterns", None)
    if patterns is None:
        patterns = []
        for template, ops in app.openapi().get("paths", {}).items():
            parts = re.split(r"(\{[^/{}]+\})", template)
            regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
            methods = {m.upper() for m in ops if m in _METHODS}
            if "GET" in methods:
                methods.add("HEAD")
            patterns.append((re.compile(f"^{regex}/?$"), methods, "{" not in template))
        app.state.allow_patterns = patterns
    path = request.url.path
    found: set[str] = set()
    literal: set[str] = set()
    for regex, methods, is_literal in patterns:
        if regex.match(path):
            found |= methods
            if is_literal:
                literal |= methods
    # A literal path (/v1/jobs/compare) is its own resource, not a value of /v1/jobs/{job_id}.
    return sorted(literal or found)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    member = _BY_STATUS.get(exc.status_code)
    code = member.code if member else f"http_{exc.status_code}"
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such resource"
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        methods = allowed_methods(request)
        if methods:
            headers["Allow"] = ", ".join(methods)
            detail = f"method {request.method} not allowed here; allowed: {headers['Allow']}"
    return error_response(exc.status_code, code, detail, None, headers or None)


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable: %s", exc)
    return error_response(503, ErrorCode.SERVICE_UNAVAILABLE.code, "the database is unavailable; retry later")


async def _too_deep(_request: Request, exc: Exception) -> JSONResponse:
    """The last line of defence: request bodies, YAML and kwargs are depth-checked before anything
    recurses over them (api/body_checks.py, core/safe_parse.py), so this should never run; if some
    structure still slips through, its depth is the client's doing, a 422, not a 500."""
    log.warning("RecursionError answered as 422: %s", exc)
    return error_response(422, "nesting_too_deep", "the request is nested too deeply to process")


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, ErrorCode.INTERNAL_ERROR.code, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type the API can meet to the one error body."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(CoreError, _core_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(RecursionError, _too_deep)
    try:  # the async read path's equivalents (service/db/aio.py)
        import psycopg
        from psycopg_pool import PoolTimeout

        app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
        app.add_exception_handler(PoolTimeout, _database_unavailable)
    except ImportError:
        pass
    app.add_exception_handler(Exception, _unexpected)
