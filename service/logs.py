"""Log lines an operator can search: optional JSON output, with the job, attempt and tenant of the
line, and API keys scrubbed from everything that is written.

``HYDRA_LOG_JSON=true`` turns every log line of the API (uvicorn's own lines included) and of the
worker (Celery's included) into one JSON object::

    {"ts": "2026-11-25T10:00:00.123Z", "level": "info", "logger": "worker.runner", "process": "worker",
     "job_id": "4f0c...", "attempt": 1, "tenant": "acme", "message": "job 4f0c...: attempt 1 claimed by ..."}

``job_id``, ``attempt`` and ``tenant`` are on every line (``null`` when the line is about no job).
Where they come from:

- API: an ASGI middleware (``RequestContextMiddleware``) gives each request a context holding the job
  id of its path (``/v1/jobs/{id}...``); authentication adds the tenant (``bind(tenant=...)``). The
  context is a mutable mapping in a ``ContextVar``, so what authentication adds is seen by the
  thread-pool parts of the request and by uvicorn's access line, written after the response.
- Worker: one job at a time per process, so the job of the running task is process state, set when
  the task starts (Celery's ``task_prerun``), completed when the attempt is claimed
  (``worker.runner``) and cleared when it ends. Threads the job starts (the lease heartbeat) see it too.

Keys never reach a log: ``RedactingFilter`` replaces ``Bearer <token>``, ``Authorization`` values,
``key=``-style query parameters and any bare 43-character url-safe token (the shape of our keys,
``secrets.token_urlsafe(32)``) with ``[redacted]``, in plain and JSON output alike.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("job_id", "attempt", "tenant")
REDACTED = "[redacted]"

_request_ctx: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("hydra_log_ctx", default=None)
_process_ctx: dict[str, Any] = {}
_process_name = "api"

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?!bearer\s)[^\s\"',;]+"),
    re.compile(r"(?i)((?:api[_-]?key|key|token|access_token)=)[^&\s\"']+"),
    re.compile(r"(?<![A-Za-z0-9_\-])()[A-Za-z0-9_\-]{43}(?![A-Za-z0-9_\-])"),
]
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_JOB_PATH = re.compile(r"/v1/jobs/([0-9a-fA-F-]{36})(?:/|$)")


def redact(text: str) -> str:
    """``text`` with anything that looks like an API key replaced by ``[redacted]``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


# ----------------------------------------------------------------------------- the context
def current_context() -> dict[str, Any]:
    """The job, attempt and tenant of the code running now (each ``None`` when unknown)."""
    ctx = _request_ctx.get()
    out = {name: None for name in CONTEXT_FIELDS}
    out.update({k: v for k, v in _process_ctx.items() if v is not None})
    if ctx:
        out.update({k: v for k, v in ctx.items() if v is not None})
    return out


def bind(**fields: Any) -> None:
    """Add fields to the current request's context, or to the process's when there is no request."""
    ctx = _request_ctx.get()
    target = ctx if ctx is not None else _process_ctx
    target.update({k: v for k, v in fields.items() if k in CONTEXT_FIELDS})


@contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """The job (``job_id``, ``attempt``, ``tenant``) of everything this process logs inside the block,
    from any thread (a worker runs one job at a time per process)."""
    saved = dict(_process_ctx)
    _process_ctx.update({k: v for k, v in fields.items() if k in CONTEXT_FIELDS})
    try:
        yield
    finally:
        # Inside the Celery task of this same job, keep attempt and tenant for the task's last lines
        # (its outcome, Celery's "succeeded in"): the task's end clears them (task_postrun).
        if saved.get("job_id") is None or saved.get("job_id") != fields.get("job_id"):
            _process_ctx.clear()
            _process_ctx.update(saved)


def bind_request(**fields: Any) -> None:
    """Add fields to the current request's context; nothing outside a request."""
    ctx = _request_ctx.get()
    if ctx is not None:
        ctx.update({k: v for k, v in fields.items() if k in CONTEXT_FIELDS})


def clear_process_context() -> None:
    _process_ctx.clear()


@contextmanager
def request_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """A fresh context for one request (or any unit of work) for the code inside the block."""
    ctx = {name: fields.get(name) for name in CONTEXT_FIELDS}
    token = _request_ctx.set(ctx)
    try:
        yield ctx
    finally:
        _request_ctx.reset(token)


class RequestContextMiddleware:
    """ASGI middleware: a log context per HTTP request, with the job id of its path."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        match = _JOB_PATH.search(scope.get("path", ""))
        with request_context(job_id=match.group(1) if match else None):
            await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- filter and formatter
class ContextFilter(logging.Filter):
    """Puts ``job_id``, ``attempt``, ``tenant`` and ``process`` on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_context()
        if ctx["job_id"] is None:
            ctx["job_id"] = _job_id_from_celery_record(record)
        for name, value in ctx.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        if not hasattr(record, "process_name"):
            record.process_name = _process_name
        return True


def _job_id_from_celery_record(record: logging.LogRecord) -> str | None:
    """Celery's "Task hydra.run_job[...] received" line comes before the task runs: its job is the
    task's one argument, which Celery puts in the record's ``data``."""
    data = getattr(record, "data", None)
    if isinstance(data, dict) and str(data.get("name", "")).startswith("hydra.run_job"):
        match = _UUID.search(str(data.get("args", "")))
        return match.group(0) if match else None
    return None


def _clean_arg(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    clean = redact(text)
    return value if clean == text and not isinstance(value, str) else clean


class RedactingFilter(logging.Filter):
    """Scrubs API keys from the message, its arguments and exception text.

    The arguments are cleaned one by one rather than merged into the message: some formatters
    (uvicorn's access lines) read them back."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean_arg(v) for k, v in record.args.items()}
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for the fields)."""

    # Kept rather than python-json-logger/structlog (issue 17 item 7): the format is ~20 lines over the
    # stdlib Formatter, and what matters here — the job/attempt/tenant context and the key redaction —
    # is ours either way; a library would add a dependency to both the API and the worker images.

    def format(self, record: logging.LogRecord) -> str:
        ContextFilter().filter(record)  # for handlers this module did not configure
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": getattr(record, "process_name", _process_name),
        }
        for name in CONTEXT_FIELDS:
            out[name] = getattr(record, name, None)
        out["message"] = redact(record.getMessage())
        exc = record.exc_text
        if record.exc_info and record.exc_info[0] is not None:
            exc = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if exc:
            out["exc"] = redact(exc)
        return json.dumps(out, default=str, ensure_ascii=False)


# ----------------------------------------------------------------------------- installation
def _install_on_handler(handler: logging.Handler, json_lines: bool) -> None:
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())


_API_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.redirected")


def configure_logging(json_lines: bool, process: str = "api", level: int | str | None = None) -> None:
    """Install the context and redaction filters (always) and the JSON formatter (``json_lines``) on
    every handler of the root, uvicorn and Celery loggers; add a stderr handler to the root if it has none.

    Idempotent; call it again after someone else (uvicorn, Celery) replaced handlers."""
    global _process_name
    _process_name = process
    root = logging.getLogger()
    if not root.handlers:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        if level is None and root.level == logging.WARNING:
            root.setLevel(logging.INFO)
    if level is not None:
        root.setLevel(level)
    for name in _API_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            _install_on_handler(handler, json_lines)


def uvicorn_log_config(json_lines: bool) -> dict[str, Any]:
    """uvicorn's default ``log_config`` with our filters (and the JSON formatter), so that even the
    lines uvicorn writes before the app starts are in the chosen format. Pass it as
    ``uvicorn.Config(..., log_config=uvicorn_log_config(settings.log_json))``."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "context": {"()": "service.logs.ContextFilter"},
        "redact": {"()": "service.logs.RedactingFilter"},
    }
    for handler in config["handlers"].values():
        handler["filters"] = ["context", "redact"]
    if json_lines:
        for formatter in config["formatters"].values():
            formatter.clear()
            formatter["()"] = "service.logs.JsonFormatter"
    return config


def connect_celery_signals(json_lines: bool) -> None:
    """In a worker: the job context around each task, and our filters/formatter on Celery's handlers."""
    from celery import signals

    def _after_setup(logger: logging.Logger | None = None, **_: Any) -> None:
        configure_logging(json_lines, process="worker")
        if logger is not None:
            for handler in logger.handlers:
                _install_on_handler(handler, json_lines)

    def _prerun(task: Any = None, args: Any = None, **_: Any) -> None:
        clear_process_context()
        if getattr(task, "name", "").startswith("hydra.run_job") and args:
            _process_ctx["job_id"] = str(args[0])

    def _postrun(**_: Any) -> None:
        clear_process_context()

    signals.after_setup_logger.connect(_after_setup, weak=False)
    signals.after_setup_task_logger.connect(_after_setup, weak=False)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
