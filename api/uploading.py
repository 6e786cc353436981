"""Receiving an uploaded file: copy it to a private temp file, count and hash it on the way.

Validation (loading it into the declared architecture, reading the arrays) needs a real path, and the
object store wants a file to stream from; hashing while copying gives the sha256 for free. The temp
file is always removed, whatever happens after. The models and datasets routers also share their
read routes (:func:`add_read_routes`: a page of the tenant's uploads, and one by id).
"""

# No ``from __future__ import annotations``: the read routes' path parameter is annotated with the
# noun's alias inside add_read_routes, which FastAPI must see as an object, not a deferred string.
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel

from api.deps import CurrentPrincipal, ReadSessionDep
from api.errors import ApiError, ErrorCode
from api.schemas import ERROR_RESPONSES
from api.validation import ID_PATTERN, MAX_OFFSET
from service.settings import Settings

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ReceivedFile:
    path: Path
    size: int
    sha256: str


@contextmanager
def receive_upload(upload: UploadFile, settings: Settings, suffix: str = "") -> Iterator[ReceivedFile]:
    """Yield the upload as a temp file (413 past ``max_upload_bytes``, 422 if empty)."""
    folder = Path(settings.work_dir) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=folder, suffix=suffix, delete=False) as out:
        path = Path(out.name)
        try:
            upload.file.seek(0)
            while chunk := upload.file.read(CHUNK):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise ApiError(
                        ErrorCode.PAYLOAD_TOO_LARGE,
                        f"file exceeds the upload limit of {settings.max_upload_bytes} bytes",
                        "file",
                    )
                digest.update(chunk)
                out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    try:
        if size == 0:
            raise ApiError(ErrorCode.INVALID_UPLOAD, "the file is empty", "file")
        yield ReceivedFile(path=path, size=size, sha256=digest.hexdigest())
    finally:
        path.unlink(missing_ok=True)


def add_read_routes(
    router: APIRouter,
    noun: str,
    *,
    public: type[BaseModel],
    listed: type[BaseModel],
    list_rows: Callable[..., tuple[list[Any], int]],
    get_row: Callable[..., Any],
) -> None:
    """Add ``GET ""`` (``list_<noun>s``: a page of the tenant's uploads, newest first, and their count)
    and ``GET /{<noun>_id}`` (``get_<noun>``: one, or 404) to the router of one kind of upload.
    ``list_rows(session, tenant_id, limit, offset)`` and ``get_row(session, tenant_id, id)`` are its
    ``service.db.uploads`` functions."""
    id_param = f"{noun}_id"

    @router.get(
        "",
        response_model=listed,
        responses=ERROR_RESPONSES,
        name=f"list_{noun}s",
        description=f"List your uploaded {noun}s.",
    )
    def list_uploads(
        principal: CurrentPrincipal,
        session: ReadSessionDep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        rows, count = list_rows(session, principal.tenant_id, limit, offset)
        return {"data": rows, "count": count}

    @router.get(
        f"/{{{id_param}}}",
        response_model=public,
        responses=ERROR_RESPONSES,
        name=f"get_{noun}",
        description=f"One uploaded {noun}.",
    )
    def get_upload(
        upload_id: Annotated[str, PathParam(alias=id_param, pattern=ID_PATTERN)],
        principal: CurrentPrincipal,
        session: ReadSessionDep,
    ) -> Any:
        row = get_row(session, principal.tenant_id, upload_id)
        if row is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no {noun} {upload_id}", id_param)
        return row


# ----------------------------------------------------------------------------- .npz datasets
NPZ_ARRAYS = ("images", "labels", "test_images", "test_labels")
NPZ_OPTIONAL = ("class_names",)  # written by an image archive's conversion (core.data.archive); never read as data


def _npz_refused(detail: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_UPLOAD, detail, "file")


def inspect_npz(path: Path, max_bytes: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Check an uploaded ``.npz`` from its zip directory and array headers, before numpy loads it.

    ``np.load`` trusts what a file declares: an array header claiming terabytes is allocated as such
    (MemoryError, or the OOM killer), and a small file can inflate to gigabytes. So, reading headers
    only: the file must be a zip holding nothing but ``images``/``labels``/``test_images``/
    ``test_labels`` ``.npy`` members, each once; their declared sizes together stay under
    ``max_bytes`` (zip readers stop at the declared size, so this bounds what loading can inflate to);
    no array holds Python objects (those are pickles); every array's shape x dtype is exactly the
    bytes its member holds. Returns ``{array: (shape, dtype)}``; raises 422 ``invalid_upload``."""
    import zipfile

    import numpy as np

    from core.data.npz_check import read_npy_header  # lazy: numpy only for this check
    from core.errors import CoreError

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise _npz_refused(
            "not an .npz file (a zip of .npy arrays)" + (": it is a Python pickle" if magic[:1] == b"\x80" else "")
        )
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise _npz_refused(f"the .npz holds {name!r} twice")
                seen.add(name)
            allowed = (*NPZ_ARRAYS, *NPZ_OPTIONAL)
            unexpected = sorted(n for n in names if n.removesuffix(".npy") not in allowed or not n.endswith(".npy"))
            if unexpected:
                raise _npz_refused(
                    f"unexpected member(s) {unexpected[:5]}; a dataset .npz holds only {', '.join(NPZ_ARRAYS)}"
                )
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise _npz_refused(
                    f"the .npz unpacks to {total} bytes, over the limit of {max_bytes} "
                    f"({sum(i.compress_size for i in infos)} bytes compressed); refused before unpacking"
                )
            out: dict[str, tuple[tuple[int, ...], str]] = {}
            for info in infos:
                key = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    try:  # the loader's own header rules (versions, no Python objects)
                        shape, dtype = read_npy_header(member, key)
                    except CoreError as err:
                        raise _npz_refused(err.message) from err
                    header_bytes = member.tell()
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                held = info.file_size - header_bytes
                if declared != held:
                    raise _npz_refused(
                        f"{key!r} declares shape {tuple(shape)} of {dtype} = {declared} bytes but "
                        f"holds {held} (truncated, or a lying header)"
                    )
                out[key] = (tuple(int(s) for s in shape), str(dtype))
    except ApiError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise _npz_refused(f"not a readable .npz ({type(err).__name__}: {str(err)[:200]})") from err
    for required in ("images", "labels"):
        if required not in out:
            raise _npz_refused(f"missing array {required!r}; found {sorted(out)}")
    return out
