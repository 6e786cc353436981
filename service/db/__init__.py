"""All SQL of the service lives in this package: tables (``base``), engines and sessions (``session``),
and verb-named functions per concern (``jobs``, ``keys``, ``uploads``). Nothing outside it writes SQL."""

from service.db.base import (
    FINAL_STATUSES,
    ApiKey,
    Artifact,
    Base,
    Dataset,
    Job,
    JobEvent,
    JobStatus,
    Tenant,
    UploadedModel,
)
from service.db.session import get_engine, get_sessionmaker, session_scope

__all__ = [
    "FINAL_STATUSES",
    "ApiKey",
    "Artifact",
    "Base",
    "Dataset",
    "Job",
    "JobEvent",
    "JobStatus",
    "Tenant",
    "UploadedModel",
    "get_engine",
    "get_sessionmaker",
    "session_scope",
]
