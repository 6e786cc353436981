"""Finding, comparing, labelling, estimating and deleting jobs; deleting uploads.

Mounted before ``jobs.router`` so that ``/v1/jobs/compare`` is not read as a job id.

Deleting answers 204 once, then 404: a deleted job, artifact or upload is as absent as one that never
existed or belongs to another tenant, and the API does not tell these apart (a retried DELETE that
gets 404 therefore knows the thing is gone). The row is deleted first, the stored objects after: see
``service/db/manage.py`` for why.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response

from api.deps import CurrentPrincipal, ReadSessionDep, SessionDep, StoreDep
from api.errors import ApiError, ErrorCode
from api.estimate import epoch_sample_passes, estimate
from api.job_refs import resolve_job_id
from api.routes.jobs import _check_references as check_references
from api.routes.jobs import _raw_json as raw_json
from api.schemas import ERROR_RESPONSES as ERRORS
from api.schemas import TAG_PATTERN, ComparePublic, EstimatePublic, JobLabels, JobPublic, JobsPublic, flat_comparison
from api.validation import (
    ARTIFACT_NAME_PATTERN,
    ID_PATTERN,
    MAX_OFFSET,
    NO_NUL_PATTERN,
    check_device,
    check_json_types,
    check_model_kwargs,
    check_storable,
)
from core.spec import JobSpec, nested_spec
from service.db import jobs, manage, uploads
from service.db.base import Job, JobStatus
from service.db.manage import Deletion
from service.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])
uploads_router = APIRouter()

JobRef = Annotated[str, Path(pattern=ID_PATTERN, description="A job id, or a unique prefix of 8 characters or more.")]
UploadId = Annotated[str, Path(pattern=ID_PATTERN)]
MAX_COMPARE = 20
_ID = ID_PATTERN.strip("^$")
COMPARE_IDS_PATTERN = f"^{_ID}(,{_ID}){{0,{MAX_COMPARE - 1}}}$"
CHECKPOINT_KEY = "jobs/{job_id}/checkpoints/checkpoint.pt"  # worker/runner.py checkpoint_key, not importable here


def _remove_objects(store: ObjectStore, keys: tuple[str, ...]) -> None:
    """Delete stored objects after their rows are gone; a failure leaves garbage only, so it is logged."""
    for key in keys:
        try:
            store.delete(key)
        except (StorageError, OSError) as exc:  # S3 errors surface as botocore's, subclasses of Exception
            log.warning("could not delete stored object %s: %s", key, exc)
        except Exception as exc:  # noqa: BLE001 - any backend error: the row is gone, the object is garbage
            log.warning("could not delete stored object %s: %s", key, exc)


def _refuse(what: str, deletion: Deletion) -> ApiError:
    if deletion.blockers and deletion.blockers[0] in {s.value for s in JobStatus}:
        return ApiError(
            ErrorCode.CONFLICT,
            f"{what} is {deletion.blockers[0]}; cancel it first (POST .../cancel), then delete it once it stopped",
            "job_id",
        )
    return ApiError(
        ErrorCode.CONFLICT,
        f"{what} is used by job{'s' if len(deletion.blockers) > 1 else ''} not yet finished: "
        f"{', '.join(deletion.blockers)}; cancel or wait for {'them' if len(deletion.blockers) > 1 else 'it'} first",
    )


def _carry_out(deletion: Deletion, store: ObjectStore, what: str, missing: ApiError) -> Response:
    """Answer a deletion: ``missing`` (404) when there was nothing, 409 while ``what`` is in use, else
    remove its stored objects (the rows are gone) and answer 204."""
    if deletion.outcome == "missing":
        raise missing
    if deletion.outcome == "in_use":
        raise _refuse(what, deletion)
    _remove_objects(store, deletion.keys)
    return Response(status_code=204)


# ----------------------------------------------------------------------------- finding
@router.get("", response_model=JobsPublic, responses=ERRORS)
def list_jobs(
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    status: JobStatus | None = None,
    q: Annotated[
        str | None,
        Query(max_length=200, pattern=NO_NUL_PATTERN, description="Part of the job's name (case-insensitive)."),
    ] = None,
    tag: Annotated[
        str | None, Query(min_length=1, max_length=40, pattern=TAG_PATTERN, description="Only jobs with this tag.")
    ] = None,
    sort: Annotated[Literal["created", "name", "status"], Query(description="Sort key.")] = "created",
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """List your jobs (newest first by default): search by name, filter by status or tag, sort, page
    with limit/offset; ``count`` is the total that match."""
    rows, count = manage.search_jobs(
        session,
        principal.tenant_id,
        status=status.value if status else None,
        q=q,
        tag=tag,
        sort=sort,
        descending=order == "desc",
        limit=limit,
        offset=offset,
    )
    return {"data": rows, "count": count}


@router.get("/compare", response_model=ComparePublic, responses=ERRORS)
def compare_jobs(
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    ids: Annotated[
        str,
        Query(
            pattern=COMPARE_IDS_PATTERN,
            description=f"Comma-separated job ids (or 8+ character prefixes), at most {MAX_COMPARE}.",
        ),
    ],
) -> dict[str, Any]:
    """One table across jobs: every succeeded job's report comparison rows, tagged with the job."""
    refs = [r.strip() for r in ids.split(",") if r.strip()]
    if not refs:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "ids: give at least one job id", "ids")
    if len(refs) > MAX_COMPARE:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"ids: at most {MAX_COMPARE} jobs at once", "ids")
    out_jobs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    metrics: list[str] = []
    for ref in dict.fromkeys(refs):
        job = jobs.get_job(session, principal.tenant_id, resolve_job_id(session, principal.tenant_id, ref))
        assert job is not None
        spec = job.spec or {}
        entry: dict[str, Any] = {
            "id": job.id,
            "name": job.name,
            "status": job.status,
            "arch": (spec.get("model") or {}).get("arch"),
            "dataset": (spec.get("dataset") or {}).get("name"),
            "objective": (spec.get("objective") or {}).get("type"),
        }
        report = job.report or {}
        if job.status != JobStatus.SUCCEEDED.value or not report:
            entry["note"] = f"no report: the job is {job.status}"
        else:
            entry["headline_robust_metric"], flat = flat_comparison(report)
            for row in flat:
                rows.append({"job_id": job.id, "job_name": job.name, **row})
                for key, value in row.items():
                    if key.endswith("_acc") or "_acc" in key:
                        if isinstance(value, (int, float)) and key not in metrics:
                            metrics.append(key)
        out_jobs.append(entry)
    metrics.sort(key=lambda m: (m != "benign_acc", m))
    return {"jobs": out_jobs, "rows": rows, "metrics": metrics}


# ----------------------------------------------------------------------------- estimate
def _dataset_info(session: Any, tenant_id: int, spec: JobSpec) -> dict[str, Any]:
    path = spec.dataset.path
    if path and path.startswith("dataset:"):
        row = uploads.get_dataset(session, tenant_id, path[len("dataset:") :])
        return {"n_total": row.n_samples} if row is not None and row.n_samples else {}
    from core.data.datasets import dataset_catalogue  # lazy: the catalogue imports torchvision

    return dict(dataset_catalogue().get(spec.dataset.name) or {})


@router.post("/estimate", response_model=EstimatePublic, responses=ERRORS)
def estimate_job(
    spec: JobSpec,
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    raw_body: Annotated[Any, Depends(raw_json)],
) -> dict[str, Any]:
    """What a spec will cost: forward+backward passes x samples per stage, and the time at the training
    throughput measured on earlier jobs of this architecture (when there are any). Nothing is queued.
    The spec is checked as on submission (uploads named by id), except the dry forward of the network."""
    from core.data.datasets import dataset_catalogue

    spec.model.kwargs = check_model_kwargs(spec.model.kwargs)
    spec_dict = spec.model_dump(mode="json")
    check_json_types(nested_spec(raw_body), spec_dict)  # the same refusals as POST /v1/jobs (no lax conversions)
    check_storable(spec_dict, "")
    check_device(spec.device)
    check_references(session, principal.tenant_id, spec)  # uploads by id only, as on submission
    catalogue = dataset_catalogue()
    rates = []
    measured = manage.measured_epochs(session, spec.model.arch)
    for epoch in measured:
        info = epoch["dataset"] or catalogue.get(str((epoch["spec"].get("dataset") or {}).get("name"))) or {}
        passes = epoch_sample_passes(epoch["spec"], info, epoch["stage"]) if epoch["stage"] else None
        if passes:
            rates.append(passes / epoch["seconds"])
    throughput = manage.median(rates)
    result = estimate(spec_dict, _dataset_info(session, principal.tenant_id, spec), throughput)
    if throughput:
        result["throughput"] = throughput
        result["throughput_source"] = (
            f"median of {len(rates)} training epochs measured on earlier {spec.model.arch} jobs "
            "(from their events' timestamps; another device or load changes it)"
        )
    else:
        result["throughput_source"] = f"no throughput measured yet for {spec.model.arch}: only the counts are given"
    return result


# ----------------------------------------------------------------------------- labels
@router.patch("/{job_id}", response_model=JobPublic, responses=ERRORS)
def label_job(job_id: JobRef, body: JobLabels, principal: CurrentPrincipal, session: SessionDep) -> Job:
    """Set a job's tags and note (the fields given replace the old ones)."""
    full = resolve_job_id(session, principal.tenant_id, job_id)
    note = body.note if body.note else None
    job = manage.set_labels(session, principal.tenant_id, full, tags=body.tags, note=note, clear_note=body.note == "")
    if job is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no job {job_id}", "job_id")
    return job


# ----------------------------------------------------------------------------- deleting
@router.delete("/{job_id}", status_code=204, responses=ERRORS)
def delete_job(job_id: JobRef, principal: CurrentPrincipal, session: SessionDep, store: StoreDep) -> Response:
    """Delete a finished, failed or canceled job: its row, events, artifacts and checkpoint (409 while it
    is queued or running: cancel it first). A second delete answers 404."""
    full = resolve_job_id(session, principal.tenant_id, job_id)
    deletion = manage.delete_job(session, principal.tenant_id, full, CHECKPOINT_KEY.format(job_id=full))
    return _carry_out(deletion, store, f"job {full}", ApiError(ErrorCode.NOT_FOUND, f"no job {job_id}", "job_id"))


@router.delete("/{job_id}/artifacts/{name}", status_code=204, responses=ERRORS)
def delete_artifact(
    job_id: JobRef,
    name: Annotated[str, Path(pattern=ARTIFACT_NAME_PATTERN)],
    principal: CurrentPrincipal,
    session: SessionDep,
    store: StoreDep,
) -> Response:
    """Delete one artifact of a job that has stopped (409 while it runs); a second delete answers 404."""
    full = resolve_job_id(session, principal.tenant_id, job_id)
    deletion = manage.delete_artifact(session, principal.tenant_id, full, name)
    missing = ApiError(ErrorCode.NOT_FOUND, f"job {job_id} has no artifact {name!r}", "name")
    return _carry_out(deletion, store, f"job {full}", missing)


def _delete_upload(
    kind: Literal["model", "dataset"], upload_id: str, tenant_id: int, session: Any, store: ObjectStore
) -> Response:
    deletion = manage.delete_upload(session, tenant_id, kind, upload_id)
    missing = ApiError(ErrorCode.NOT_FOUND, f"no {kind} {upload_id}", f"{kind}_id")
    return _carry_out(deletion, store, f"{kind}:{upload_id}", missing)


@uploads_router.delete("/models/{model_id}", status_code=204, responses=ERRORS, tags=["models"])
def delete_model(model_id: UploadId, principal: CurrentPrincipal, session: SessionDep, store: StoreDep) -> Response:
    """Delete an uploaded model (409 naming the jobs not yet finished that use it); then 404."""
    return _delete_upload("model", model_id, principal.tenant_id, session, store)


@uploads_router.delete("/datasets/{dataset_id}", status_code=204, responses=ERRORS, tags=["datasets"])
def delete_dataset(dataset_id: UploadId, principal: CurrentPrincipal, session: SessionDep, store: StoreDep) -> Response:
    """Delete an uploaded dataset (409 naming the jobs not yet finished that use it); then 404."""
    return _delete_upload("dataset", dataset_id, principal.tenant_id, session, store)
