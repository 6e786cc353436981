"""Object storage for checkpoints, uploads and artifacts: a local folder or S3 (MinIO in compose).

One small protocol, two implementations, chosen by settings. Why it looks like this:
- Keys are validated before use on *both* backends, so a key built from user input can never escape
  the local root (``../``) and a key that works locally also works on S3 and back.
- Local writes go to a temporary file in the destination folder and are published with
  ``os.replace``: a reader (or a crashed writer's successor) sees the old object or the new one,
  never half a checkpoint.
- Reads stream in chunks; a 200 MB artifact never sits in memory.
- ``presigned_url`` lets the API redirect downloads to S3; the local store has none (``None``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from service.settings import Settings

CHUNK_SIZE = 1024 * 1024
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-=+:@/]*$")


class StorageError(Exception):
    """The store could not do what was asked (other than a missing object)."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """No object under that key."""


class InvalidKey(StorageError, ValueError):
    """A key that could escape the store or would not round-trip between backends."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object name, else raise ``InvalidKey``."""
    if not isinstance(key, str) or not key or len(key) > 1024 or not _KEY_RE.match(key):
        raise InvalidKey(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid object key {key!r}")
    return key


@runtime_checkable
class ObjectStore(Protocol):
    """What the API and the worker need from object storage."""

    def put_file(self, key: str, path: str | Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_to_path(self, key: str, path: str | Path) -> None: ...

    def open_stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def size(self, key: str) -> int: ...

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None: ...

    def ping(self) -> None: ...


def _atomic_copy(src: Any, dest: Path) -> None:
    """Copy a binary file object to ``dest`` through a temp file in the same folder + ``os.replace``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK_SIZE)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _iter_file(handle: Any, chunk_size: int) -> Iterator[bytes]:
    try:
        while chunk := handle.read(chunk_size):
            yield chunk
    finally:
        handle.close()


class LocalStore:
    """Objects as files under ``root`` (the embedded default, and tests)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root):  # belt and braces: symlinks inside the root
            raise InvalidKey(f"invalid object key {key!r}")
        return path

    def put_file(self, key: str, path: str | Path) -> None:
        with open(path, "rb") as src:
            _atomic_copy(src, self._path(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        _atomic_copy(io.BytesIO(data), self._path(key))

    def get_to_path(self, key: str, path: str | Path) -> None:
        source = self._path(key)
        try:
            src = open(source, "rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        with src:
            _atomic_copy(src, Path(path))

    def open_stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        try:
            handle = open(self._path(key), "rb")  # opened now, so a missing key fails here, not mid-stream
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        return _iter_file(handle, chunk_size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return None

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")


class S3Store:
    """Objects in an S3 bucket; ``endpoint_url`` points it at MinIO (or moto in tests)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        client: Any = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},  # MinIO and test servers have no per-bucket DNS
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    @staticmethod
    def _missing(exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def put_file(self, key: str, path: str | Path) -> None:
        # upload_file switches to multipart for big files, and S3 publishes objects atomically.
        self.client.upload_file(str(path), self.bucket, validate_key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=validate_key(key), Body=data)

    def get_to_path(self, key: str, path: str | Path) -> None:
        dest = Path(path)
        body = self._get_body(key)
        try:
            _atomic_copy(body, dest)
        finally:
            body.close()

    def _get_body(self, key: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=validate_key(key))["Body"]
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise StorageError(str(exc)) from exc

    def open_stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        body = self._get_body(key)

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

        return chunks()

    def _head(self, key: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise StorageError(str(exc)) from exc

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=validate_key(key))

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": validate_key(key)}, ExpiresIn=expires_s
        )

    def ping(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"bucket {self.bucket!r} unreachable: {exc}") from exc


def build_store(settings: Settings) -> ObjectStore:
    """The store the settings describe."""
    if settings.storage_backend == "s3":
        if not settings.s3_bucket:
            raise StorageError("HYDRA_S3_BUCKET is required for the s3 storage backend")
        return S3Store(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            region=settings.s3_region,
        )
    return LocalStore(settings.storage_dir)
