"""Uploaded datasets: one ``.npz`` of plain arrays, validated by the core's loader rules on arrival (streamed).

Only ``.npz`` is accepted (loaded with ``allow_pickle=False``): archives that must be extracted are
refused outright, since ``tarfile``'s safety filter has known bypasses on our Python (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, UploadFile

from api.deps import CurrentPrincipal, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError, ErrorCode
from api.schemas import ERROR_RESPONSES as ERRORS
from api.schemas import DatasetPublic, DatasetsPublic
from api.uploading import inspect_npz, receive_upload
from api.validation import ID_PATTERN, MAX_CLASSES, MAX_OFFSET, NO_NUL_PATTERN
from core.errors import CoreError
from service.db import uploads
from service.db.base import Dataset, new_id

router = APIRouter(prefix="/datasets", tags=["datasets"])

_FORM_FIELD = {"dataset.path": "file", "dataset.num_classes": "num_classes"}


def validate_npz(path: str, num_classes: int | None) -> dict[str, Any]:
    """Every check the worker's loader (``build_datasets``) makes, streamed from the stored file.

    ``core.data.npz_check`` applies the loader's own rules to per-array summaries read in chunks, so
    "accepted here" still means "loads there", and the API never holds a decompressed array: its
    memory per upload stays a few times ``CHUNK_BYTES`` whatever the file declares."""
    from core.data.npz_check import check_npz  # lazy: only this route reads datasets

    return check_npz(path, num_classes)


@router.post("", status_code=201, response_model=DatasetPublic, responses=ERRORS)
def upload_dataset(
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[UploadFile, File(description="A .npz with 'images' and 'labels' (see the catalogue).")],
    name: Annotated[str | None, Form(max_length=200, pattern=NO_NUL_PATTERN)] = None,
    num_classes: Annotated[int | None, Form(ge=2, le=MAX_CLASSES)] = None,
) -> Dataset:
    """Upload an .npz dataset; it is loaded and checked before it is accepted."""
    with receive_upload(file, settings, suffix=".npz") as received:
        try:
            inspect_npz(received.path, settings.max_dataset_bytes)  # before numpy allocates anything
            info = validate_npz(str(received.path), num_classes)
        except CoreError as err:
            field = _FORM_FIELD.get(err.field or "", "file")
            raise ApiError(ErrorCode.INVALID_UPLOAD, err.message, field) from err
        dataset_id = new_id()
        key = f"tenants/{principal.tenant_id}/datasets/{dataset_id}/data.npz"
        store.put_file(key, received.path)
        return uploads.create_dataset(
            session,
            dataset_id=dataset_id,
            tenant_id=principal.tenant_id,
            name=name or file.filename or dataset_id,
            storage_key=key,
            num_classes=int(info["num_classes"]),
            n_samples=int(info["n_samples"]),
            input_shape=[int(s) for s in info["input_shape"]],
            size=received.size,
            sha256=received.sha256,
        )


@router.get("", response_model=DatasetsPublic, responses=ERRORS)
def list_datasets(
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """List your uploaded datasets."""
    rows, count = uploads.list_datasets(session, principal.tenant_id, limit, offset)
    return {"data": rows, "count": count}


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=ERRORS)
def get_dataset(
    dataset_id: Annotated[str, Path(pattern=ID_PATTERN)], principal: CurrentPrincipal, session: ReadSessionDep
) -> Dataset:
    """One uploaded dataset."""
    row = uploads.get_dataset(session, principal.tenant_id, dataset_id)
    if row is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no dataset {dataset_id}", "dataset_id")
    return row
