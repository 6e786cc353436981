"""Naming a job by its id or by a prefix of it (8 characters or more, as the dashboard and the CLI
print them): unique within the tenant, else 404 (none) or 409 (ambiguous, listing the matches)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import ApiError, ErrorCode
from service.db import manage

FULL_ID_LENGTH = 36


def resolve_job_id(session: Session, tenant_id: int, ref: str) -> str:
    """The full id of the tenant's job ``ref`` names (itself when it is a full id of theirs)."""
    ids = manage.match_job_ids(session, tenant_id, ref)
    if not ids:
        hint = "" if len(ref) >= manage.MIN_PREFIX else f" (a prefix needs at least {manage.MIN_PREFIX} characters)"
        raise ApiError(ErrorCode.NOT_FOUND, f"no job {ref}{hint}", "job_id")
    if len(ids) > 1:
        raise ApiError(
            ErrorCode.CONFLICT,
            f"job id prefix {ref!r} is ambiguous: it matches {', '.join(ids)} and maybe more; give more characters",
            "job_id",
        )
    return ids[0]
