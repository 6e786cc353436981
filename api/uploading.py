"""Receiving an uploaded file: copy it to a private temp file, count and hash it on the way.

Validation (loading it into the declared architecture, reading the arrays) needs a real path, and the
object store wants a file to stream from; hashing while copying gives the sha256 for free. The temp
file is always removed, whatever happens after.
"""
from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import UploadFile

from api.errors import ApiError, ErrorCode
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
