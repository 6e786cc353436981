"""Jobs: submit a spec, watch it (status, events, live stream), cancel it, fetch its report and artifacts.

The API never trains. Submission validates the spec completely (schema, references to the tenant's
uploads, bound-method support of the architecture), writes the row, then publishes the job id; the
row is committed first so that nothing a user submitted depends on the broker being up
(docs/DELIVERY.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CurrentPrincipal,
    QueueDep,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    async_reader_for,
    get_app_settings,
)
from api.errors import ApiError, ErrorCode
from api.job_refs import FULL_ID_LENGTH, resolve_job_id
from api.schemas import (
    ERROR_RESPONSES as ERRORS,
)
from api.schemas import (
    ArtifactsPublic,
    JobDetail,
    JobEventPublic,
    JobEventsPublic,
)
from api.streams import SlotStreamingResponse, build_stream_slots, key_check_interval
from api.validation import (
    ARTIFACT_NAME_PATTERN,
    ID_PATTERN,
    MAX_EVENT_ID,
    check_device,
    check_json_types,
    check_model_kwargs,
    check_storable,
    check_worker_limits,
)
from core.errors import CoreError
from core.pipeline.report_build import load_report
from core.pipeline.report_model import Report
from core.spec import JobSpec, nested_spec, same_spec
from service.db import jobs, keys, uploads
from service.db.base import FINAL_STATUSES, Job, JobStatus
from service.db.session import get_read_sessionmaker
from service.routing import gpu_queue_map, job_gpus, queue_for
from service.settings import Settings
from service.storage import ObjectNotFound

router = APIRouter(prefix="/jobs", tags=["jobs"])

MODEL_REF = "model:"
ONNX_FORMAT = "onnx"  # UploadedModel.format of an ONNX network (api/routes/models.py)
DATASET_REF = "dataset:"
SSE_POLL_S = 0.5
SSE_KEEPALIVE_S = 15.0
DEFAULT_DATA_DIR = "data"

JobId = Annotated[
    str,
    Path(
        pattern=ID_PATTERN, description="A job id (as returned by POST /v1/jobs), or a unique prefix of 8+ characters."
    ),
]


# ----------------------------------------------------------------------------- submission checks
def _check_references(session: Session, tenant_id: int, spec: JobSpec) -> None:
    """Uploads are named ``model:<id>`` / ``dataset:<id>`` and must be the tenant's own.

    Plain file paths are refused: in the service they would be paths on the *worker's* disk, i.e. a
    way to read files the user does not own."""
    checkpoint = spec.model.checkpoint
    if checkpoint is not None:
        if not checkpoint.startswith(MODEL_REF):
            raise ApiError(
                ErrorCode.INVALID_REFERENCE,
                f"must name an uploaded model as '{MODEL_REF}<id>' (POST /v1/models), got {checkpoint!r}",
                "model.checkpoint",
            )
        model = uploads.get_model(session, tenant_id, checkpoint[len(MODEL_REF) :])
        if model is None:
            raise ApiError(ErrorCode.INVALID_REFERENCE, f"no uploaded model {checkpoint!r}", "model.checkpoint")
        if model.format == ONNX_FORMAT:
            raise ApiError(
                ErrorCode.INVALID_REFERENCE,
                f"{checkpoint!r} is an ONNX network: name it as model.onnx, not model.checkpoint",
                "model.checkpoint",
            )
        if model.arch != spec.model.arch:
            raise ApiError(
                ErrorCode.INVALID_REFERENCE,
                f"{checkpoint!r} was uploaded for architecture {model.arch!r}, not {spec.model.arch!r}",
                "model.checkpoint",
            )
        if model.arch_kwargs != spec.model.kwargs:
            # The worker must build the very network the upload was checked against.
            raise ApiError(
                ErrorCode.INVALID_REFERENCE,
                f"{checkpoint!r} was uploaded with architecture arguments {model.arch_kwargs}, "
                f"the spec gives {spec.model.kwargs}",
                "model.kwargs",
            )
    _onnx_upload(session, tenant_id, spec)
    dataset = spec.dataset
    if dataset.name == "imagefolder":
        raise ApiError(
            ErrorCode.INVALID_REFERENCE,
            "image folders are not accepted by the service; upload an .npz (POST /v1/datasets) and use name 'npz'",
            "dataset.name",
        )
    if dataset.path is not None:
        if dataset.name != "npz" or not dataset.path.startswith(DATASET_REF):
            raise ApiError(
                ErrorCode.INVALID_REFERENCE,
                f"must name an uploaded dataset as '{DATASET_REF}<id>' with name 'npz', got {dataset.path!r}",
                "dataset.path",
            )
        if uploads.get_dataset(session, tenant_id, dataset.path[len(DATASET_REF) :]) is None:
            raise ApiError(ErrorCode.INVALID_REFERENCE, f"no uploaded dataset {dataset.path!r}", "dataset.path")
    if dataset.data_dir != DEFAULT_DATA_DIR:
        raise ApiError(
            ErrorCode.INVALID_SPEC, "the data folder is chosen by the service, not by a job", "dataset.data_dir"
        )


def _onnx_upload(session: Session, tenant_id: int, spec: JobSpec) -> Any:
    """The tenant's ONNX upload a spec names as ``model.onnx`` (``model:<id>``), or None without one."""
    ref = spec.model.onnx
    if ref is None:
        return None
    if not ref.startswith(MODEL_REF):
        raise ApiError(
            ErrorCode.INVALID_REFERENCE,
            f"must name an uploaded ONNX network as '{MODEL_REF}<id>' (POST /v1/models), got {ref!r}",
            "model.onnx",
        )
    row = uploads.get_model(session, tenant_id, ref[len(MODEL_REF) :])
    if row is None or row.format != ONNX_FORMAT:
        what = "no uploaded model" if row is None else "not an ONNX upload:"
        raise ApiError(ErrorCode.INVALID_REFERENCE, f"{what} {ref!r}", "model.onnx")
    return row


def _check_bounds_supported(session: Session, tenant_id: int, spec: JobSpec) -> None:
    """MixTrain and CROWN-IBP bound every layer: for an uploaded ONNX network, its upload recorded whether
    the bound code takes every layer, so the job is refused now without converting the graph again
    (a catalogue network is checked by ``preflight`` on its one build)."""
    from core.pipeline.preflight import needs_bounds  # lazy, like preflight itself

    if spec.model.onnx is None or not needs_bounds(spec):
        return
    row = _onnx_upload(session, tenant_id, spec)
    refusal = (row.arch_kwargs or {}).get("bounds_unsupported") if row is not None else None
    if refusal:
        raise CoreError("unsupported_layer", "model.onnx", f"{refusal} (needed by the bound-based objective)")


def _preflight(session: Session, tenant_id: int, spec: JobSpec) -> None:
    """One dry forward of the network on a zero input of the dataset's shape (core/pipeline/preflight.py):
    refuse now (422, ``incompatible_architecture`` on ``model.arch``) an architecture whose channels,
    input size or classes do not fit the data, or (``unsupported_layer``) whose layers a bound objective
    cannot handle; the network is built once for both. An uploaded dataset's shape and classes are the ones
    recorded when it was checked on upload."""
    from core.pipeline.preflight import preflight  # lazy: only the routes that need it build networks

    known = None
    path = spec.dataset.path
    if path is not None and path.startswith(DATASET_REF):
        row = uploads.get_dataset(session, tenant_id, path[len(DATASET_REF) :])
        known = {"input_shape": row.input_shape, "num_classes": row.num_classes} if row is not None else {}
    graph = None
    row = _onnx_upload(session, tenant_id, spec)
    if row is not None:  # what the graph said at upload: its input shape and classes
        recorded = row.arch_kwargs or {}
        graph = {"input_shape": recorded["input"]["shape"], "num_classes": recorded["output"]["num_classes"]}
        if "channel_unsupported" in recorded:  # the verdict of channel pruning, recorded at upload
            graph["channel_unsupported"] = recorded["channel_unsupported"]
    preflight(spec, known, graph)  # CoreError -> 422; with ``known`` given no file on the API's disk is opened


async def _raw_json(request: Request) -> Any:
    """The request body as JSON (FastAPI has read and cached the bytes already)."""
    try:
        return await request.json()
    except ValueError:
        return None


# ----------------------------------------------------------------------------- routes


def _route(settings: Settings, spec_dict: dict[str, Any]) -> str:
    """The job's queue by GPU count (service/routing.py); 422 on ``resources.gpus`` when no worker
    queue serves that many GPUs, rather than a job that waits forever."""
    routed = queue_for(settings, spec_dict)
    if routed is None:
        counts = sorted(gpu_queue_map(settings))
        served = (
            f"multi-GPU queues serve {', '.join(map(str, counts))} GPUs"
            if counts
            else "no multi-GPU queue is configured"
        )
        raise ApiError(
            ErrorCode.INVALID_SPEC,
            f"no worker takes jobs with {job_gpus(spec_dict)} GPUs ({served}; HYDRA_GPU_QUEUES)",
            "resources.gpus",
        )
    return routed


@router.post(
    "",
    status_code=201,
    response_model=JobDetail,
    responses={
        **ERRORS,
        200: {
            "model": JobDetail,
            "description": "Idempotency-Key replay: the job the first "
            "request with this key created (header Idempotent-Replayed: true).",
        },
    },
)
def submit_job(
    spec: JobSpec,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    response: Response,
    raw_body: Annotated[Any, Depends(_raw_json)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)] = None,
) -> Job:
    """Submit a job spec; it is queued and its id returned at once (Idempotency-Key makes retries safe)."""
    spec.model.kwargs = check_model_kwargs(spec.model.kwargs)  # bounded, integral numbers as ints
    spec_dict = spec.model_dump(mode="json")
    # no lax conversions across JSON types (true -> 1.0, "3" -> 3); old flat options compared where they went
    check_json_types(nested_spec(raw_body), spec_dict)
    check_storable(spec_dict, "")  # NUL, NaN, Infinity: refused here, not by the database driver
    check_device(spec.device)
    check_worker_limits(spec.device, spec.dataset.num_workers, spec.dataset.download, settings)
    job_queue = _route(settings, spec_dict)
    _check_references(session, principal.tenant_id, spec)
    _check_bounds_supported(session, principal.tenant_id, spec)
    _preflight(session, principal.tenant_id, spec)
    job, created = jobs.create_job(session, principal.tenant_id, spec_dict, idempotency_key, settings.max_attempts)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        if not same_spec(job.spec, spec_dict):  # a job stored before the options were nested still matches
            raise ApiError(
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                f"Idempotency-Key was already used for job {job.id} with a different spec",
                "Idempotency-Key",
            )
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
        return job
    if queue.enqueue(job.id, job_queue):
        jobs.mark_enqueued(session, job.id)
    return job


# GET "" (the list: search, sort, paging, tags) is in api/routes/manage.py, mounted first.


def _job_or_404(session: Session, tenant_id: int, job_id: str) -> Job:
    if len(job_id) != FULL_ID_LENGTH:  # an 8+ character prefix (api/job_refs.py)
        job_id = resolve_job_id(session, tenant_id, job_id)
    job = jobs.get_job(session, tenant_id, job_id)
    if job is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no job {job_id}", "job_id")
    return job


def _job_view_sync(settings: Settings, tenant_id: int, job_id: str) -> dict[str, Any] | None:
    with get_read_sessionmaker(settings)() as session:
        return jobs.get_job_view(session, tenant_id, job_id)


def _resolve_sync(settings: Settings, tenant_id: int, job_id: str) -> str:
    with get_read_sessionmaker(settings)() as session:
        return resolve_job_id(session, tenant_id, job_id)


@router.get("/{job_id}", response_model=JobDetail, responses=ERRORS)
async def get_job(job_id: JobId, principal: CurrentPrincipal, request: Request) -> Response:
    """A job's status, stage, progress, latest metrics and timestamps."""
    # The endpoint every client polls: async all the way on Postgres (service/db/aio.py), with no
    # dependencies beyond authentication (each would be resolved on every poll).
    settings = await get_app_settings(request)
    if len(job_id) != FULL_ID_LENGTH:  # an 8+ character prefix (api/job_refs.py)
        job_id = await run_in_threadpool(_resolve_sync, settings, principal.tenant_id, job_id)
    reader = async_reader_for(request, settings)
    if reader is not None:
        job = await reader.get_job_view(principal.tenant_id, job_id)
    else:
        job = await run_in_threadpool(_job_view_sync, settings, principal.tenant_id, job_id)
    if job is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no job {job_id}", "job_id")
    # Serialised by pydantic's own JSON encoder in one step (FastAPI would validate, build a dict,
    # then json.dumps it): same body, a fraction of the CPU.
    return Response(JobDetail.model_validate(job).model_dump_json(), media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobDetail, responses=ERRORS)
def cancel_job(job_id: JobId, principal: CurrentPrincipal, session: SessionDep) -> Job:
    """Cancel a job: a queued one at once, a running one at its next batch (its checkpoint stays)."""
    job_id = _job_or_404(session, principal.tenant_id, job_id).id
    job = jobs.request_cancel(session, principal.tenant_id, job_id)
    if job is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no job {job_id}", "job_id")
    return job


def _sse(event_id: int | None, kind: str, data: dict[str, Any]) -> bytes:
    # Kept rather than sse-starlette (issue 17 item 7): one frame format of three fields; the stream's
    # lifetime (slots, key re-checks, heartbeats) is ours (api/streams.py) and the library would not own it.
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _key_still_valid(settings: Settings, token: str, api_key_id: int) -> bool:
    """The stream's key, read from the database (not the auth cache): live and still the same key."""
    with get_read_sessionmaker(settings)() as session:
        principal = keys.authenticate(session, token)
    return principal is not None and principal.api_key_id == api_key_id


async def _event_stream(
    settings: Settings, job_id: str, after: int, token: str, api_key_id: int
) -> AsyncIterator[bytes]:
    """Poll the events table; end once the job is final and every event up to then was sent, or as
    soon as the key is found revoked (checked every ``key_check_interval``: api/streams.py)."""
    make_session = get_read_sessionmaker(settings)

    def poll(cursor: int) -> tuple[str | None, list[dict[str, Any]]]:
        with make_session() as session:
            job = jobs.get_job(session, None, job_id)
            status = job.status if job else None  # read the status *before* the events: see below
            events = jobs.list_events(session, job_id, after_id=cursor, limit=500)
            return status, [JobEventPublic.model_validate(e).model_dump(mode="json") for e in events]

    cursor = after
    last_sent = last_key_check = time.monotonic()
    check_every = key_check_interval(settings, SSE_POLL_S)
    yield b"retry: 2000\n\n"
    while True:
        if time.monotonic() - last_key_check >= check_every:
            if not await run_in_threadpool(_key_still_valid, settings, token, api_key_id):
                # A comment line, then the connection closes: a client that reconnects gets the 401.
                yield b": the API key was revoked; closing the stream\n\n"
                return
            last_key_check = time.monotonic()
        status, events = await run_in_threadpool(poll, cursor)
        for event in events:
            cursor = event["id"]
            yield _sse(event["id"], event["kind"], event)
            last_sent = time.monotonic()
        # The final status event is committed with the final status, so a final status read before
        # an event batch that came back short means nothing is left to send.
        if status is None or (status in FINAL_STATUSES and len(events) < 500):
            yield _sse(None, "end", {"status": status})
            return
        if len(events) >= 500:
            continue
        if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(SSE_POLL_S)


@router.get(
    "/{job_id}/events",
    response_model=JobEventsPublic,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
def job_events(
    job_id: JobId,
    request: Request,
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="Only events with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    stream: bool = False,
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, le=MAX_EVENT_ID, description="SSE reconnect: the last event id received."),
    ] = None,
) -> Any:
    """A job's event history (JSON), or a live Server-Sent-Events stream (Accept: text/event-stream)."""
    job_id = _job_or_404(session, principal.tenant_id, job_id).id
    if stream or "text/event-stream" in request.headers.get("accept", ""):
        start = max(after, last_event_id or 0)
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        slots = build_stream_slots(settings)
        slots.acquire(principal.api_key_id)  # 429 beyond max_streams_per_key, 503 beyond max_streams_total
        return SlotStreamingResponse(
            _event_stream(settings, job_id, start, token, principal.api_key_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            slots=slots,
            key_id=principal.api_key_id,
        )
    events = jobs.list_events(session, job_id, after_id=after, limit=limit)
    return {"data": events, "count": len(events), "next_after": events[-1].id if events else after}


@router.get("/{job_id}/report", response_model=Report, responses=ERRORS)
def job_report(job_id: JobId, principal: CurrentPrincipal, session: ReadSessionDep) -> Report:
    """The machine-readable report of a succeeded job (409 until then), in the current format: a report
    stored in an older one is migrated as it is read (``core.pipeline.report_build.load_report``)."""
    job = _job_or_404(session, principal.tenant_id, job_id)
    if job.status != JobStatus.SUCCEEDED.value:
        raise ApiError(ErrorCode.JOB_NOT_SUCCEEDED, f"the job is {job.status}; a report exists once it succeeded")
    return load_report(job.report or {})


@router.get("/{job_id}/artifacts", response_model=ArtifactsPublic, responses=ERRORS)
def list_artifacts(job_id: JobId, principal: CurrentPrincipal, session: ReadSessionDep) -> dict[str, Any]:
    """The files a job produced, with size and sha256."""
    job_id = _job_or_404(session, principal.tenant_id, job_id).id
    rows = jobs.list_artifacts(session, job_id)
    return {"data": rows, "count": len(rows)}


@router.get(
    "/{job_id}/bundle",
    response_class=StreamingResponse,
    responses={**ERRORS, 200: {"content": {"application/zip": {}}}},
)
def download_bundle(
    job_id: JobId,
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    store: StoreDep,
    variant: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Za-z0-9_.-]{1,200}$",
            description="Only this network's files (`<variant>.*`, e.g. `hydra_k0.01`); default: every artifact.",
        ),
    ] = None,
) -> Response:
    """One zip of a job's artifacts (or one network's), with a SHA256SUMS file: stored, not deflated
    (networks are already compact), built on disk past 8 MiB so the API's memory stays small."""
    import tempfile
    import zipfile

    job = _job_or_404(session, principal.tenant_id, job_id)
    rows = jobs.list_artifacts(session, job.id)
    if variant is not None:
        rows = [a for a in rows if a.name.startswith(f"{variant}.")]
        if not rows:
            raise ApiError(ErrorCode.NOT_FOUND, f"job {job.id} has no artifact of network {variant!r}", "variant")
    if not rows:
        raise ApiError(ErrorCode.NOT_FOUND, f"job {job.id} has no artifacts yet", "job_id")
    spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # closed by the response (or on error)
    try:
        with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as bundle:
            for artifact in rows:
                with bundle.open(artifact.name, "w", force_zip64=artifact.size > (1 << 31)) as member:
                    for chunk in store.open_stream(artifact.storage_key):
                        member.write(chunk)
            bundle.writestr("SHA256SUMS", "".join(f"{a.sha256}  {a.name}\n" for a in rows))
    except ObjectNotFound as exc:
        spool.close()
        raise ApiError(ErrorCode.NOT_FOUND, f"an artifact of job {job.id} is missing from storage", "job_id") from exc
    size = spool.tell()
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        try:
            while block := spool.read(1 << 20):
                yield block
        finally:
            spool.close()

    filename = f"{job.id[:8]}-{variant or 'all'}.zip"
    headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(chunks(), media_type="application/zip", headers=headers)


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=StreamingResponse,
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}}, 307: {"description": "Presigned URL"}},
)
def download_artifact(
    job_id: JobId,
    name: Annotated[str, Path(pattern=ARTIFACT_NAME_PATTERN)],
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    store: StoreDep,
    redirect: Annotated[bool, Query(description="Redirect to a presigned object-store URL when there is one.")] = False,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """Download one artifact (streamed; ETag and X-Checksum-SHA256 carry its sha256)."""
    job_id = _job_or_404(session, principal.tenant_id, job_id).id
    artifact = jobs.get_artifact(session, job_id, name)
    if artifact is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"job {job_id} has no artifact {name!r}", "name")
    etag = f'"{artifact.sha256}"'
    headers = {"ETag": etag, "X-Checksum-SHA256": artifact.sha256}
    if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    if redirect:
        url = store.presigned_url(artifact.storage_key, 900)
        if url:
            return RedirectResponse(url, status_code=307, headers=headers)
    try:
        chunks = store.open_stream(artifact.storage_key)
    except ObjectNotFound as exc:
        raise ApiError(ErrorCode.NOT_FOUND, f"artifact {name!r} is missing from storage", "name") from exc
    filename = name.replace('"', "")
    headers.update({"Content-Length": str(artifact.size), "Content-Disposition": f'attachment; filename="{filename}"'})
    return StreamingResponse(chunks, media_type=artifact.content_type, headers=headers)
