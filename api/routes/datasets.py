"""Uploaded datasets: one ``.npz`` of plain arrays, or an archive of class folders, checked on arrival.

An ``.npz`` (loaded with ``allow_pickle=False``) is validated by the core's loader rules, streamed. A
``.zip`` / ``.tar`` of class folders is converted by ``core.data.archive`` into the same kind of
``.npz`` (uint8 images, labels, class names), reading every member as a stream: nothing is extracted,
since ``tarfile``'s safety filter has known bypasses on our Python (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import CurrentPrincipal, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError, ErrorCode
from api.schemas import ERROR_RESPONSES as ERRORS
from api.schemas import DatasetPublic, DatasetsPublic
from api.uploading import CHUNK, add_read_routes, inspect_npz, receive_upload
from api.validation import MAX_CLASSES, NO_NUL_PATTERN
from core.errors import CoreError
from service.db import uploads
from service.db.base import Dataset, new_id

router = APIRouter(prefix="/datasets", tags=["datasets"])

_FORM_FIELD = {"dataset.path": "file", "dataset.num_classes": "num_classes"}


def is_npz(path: FilePath) -> bool:
    """Whether to check the upload as an ``.npz``: anything but a tar or a zip without ``.npy`` members (an
    image archive). Garbage goes the ``.npz`` way, whose check says what it is not."""
    import tarfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return True
        return not names or any(n.endswith(".npy") for n in names)  # an npz; its check names the odd member
    return not tarfile.is_tarfile(path)


def convert_archive(
    path: FilePath, settings: Any, image_size: int | None, channels: int, num_classes: int | None
) -> tuple[FilePath, dict[str, Any]]:
    """The archive converted to an ``.npz`` beside it (``core.data.archive``), then checked like an upload."""
    from core.data.archive import ArchiveLimits, archive_to_npz  # lazy: only this route reads archives
    from core.data.npz_check import check_npz

    limits = ArchiveLimits(
        max_files=settings.max_archive_files,
        max_total_bytes=settings.max_dataset_bytes,
        max_image_pixels=settings.max_image_pixels,
    )
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as out:
        converted = FilePath(out.name)
    try:
        found = archive_to_npz(path, converted, image_size=image_size, channels=channels, limits=limits)
        if num_classes is not None and num_classes != len(found["classes"]):
            raise ApiError(
                ErrorCode.INVALID_UPLOAD,
                f"declared {num_classes} classes, the archive has {len(found['classes'])}: {found['classes'][:20]}",
                "num_classes",
            )
        return converted, check_npz(converted, num_classes)
    except BaseException:
        converted.unlink(missing_ok=True)
        raise


def _file_digest(path: FilePath) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


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
    file: Annotated[
        UploadFile,
        File(
            description="A .npz with 'images' and 'labels' (see the catalogue), or a .zip / .tar (.tar.gz) of "
            "class folders (class_name/image, optionally under train/ and val/ or test/)."
        ),
    ],
    name: Annotated[str | None, Form(max_length=200, pattern=NO_NUL_PATTERN)] = None,
    num_classes: Annotated[int | None, Form(ge=2, le=MAX_CLASSES)] = None,
    image_size: Annotated[
        int | None,
        Form(ge=8, le=4096, description="Archives: resize (shorter side) and centre-crop every image to this size."),
    ] = None,
    channels: Annotated[int, Form(ge=1, le=3, description="Archives: 1 (grey) or 3 (RGB) channels.")] = 3,
) -> Dataset:
    """Upload a dataset: an .npz, or an archive of class folders converted to one; checked before it is accepted."""
    with receive_upload(file, settings, suffix=".upload") as received:
        stored, size, sha256 = received.path, received.size, received.sha256
        try:
            if is_npz(received.path):
                if image_size is not None and zipfile.is_zipfile(received.path):
                    raise ApiError(
                        ErrorCode.INVALID_UPLOAD, "image_size applies to image archives, not .npz", "image_size"
                    )
                if image_size is not None:
                    raise ApiError(ErrorCode.INVALID_UPLOAD, "not a .zip or .tar archive of class folders", "file")
                inspect_npz(received.path, settings.max_dataset_bytes)  # before numpy allocates anything
                info = validate_npz(str(received.path), num_classes)
            else:
                stored, info = convert_archive(received.path, settings, image_size, channels, num_classes)
                size, sha256 = _file_digest(stored)
        except CoreError as err:
            field = _FORM_FIELD.get(err.field or "", err.field if err.field in ("image_size", "channels") else "file")
            raise ApiError(ErrorCode.INVALID_UPLOAD, err.message, field) from err
        try:
            dataset_id = new_id()
            key = f"tenants/{principal.tenant_id}/datasets/{dataset_id}/data.npz"
            store.put_file(key, stored)
            return uploads.create_dataset(
                session,
                dataset_id=dataset_id,
                tenant_id=principal.tenant_id,
                name=name or file.filename or dataset_id,
                storage_key=key,
                num_classes=int(info["num_classes"]),
                n_samples=int(info["n_samples"]),
                input_shape=[int(s) for s in info["input_shape"]],
                size=size,
                sha256=sha256,
            )
        finally:
            if stored != received.path:
                stored.unlink(missing_ok=True)


add_read_routes(
    router,
    "dataset",
    public=DatasetPublic,
    listed=DatasetsPublic,
    list_rows=uploads.list_datasets,
    get_row=uploads.get_dataset,
)
