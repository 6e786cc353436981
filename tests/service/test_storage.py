"""Both object stores behave the same; S3 is exercised over real HTTP against moto's server."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.db import jobs, workers
from service.db.session import session_scope
from service.settings import Settings
from service.storage import InvalidKey, LocalStore, ObjectNotFound, ObjectStore, S3Store, build_store
from tests.service.svc_helpers import build_app

BUCKET = "hydra-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def s3_settings(base: Settings, endpoint: str) -> Settings:
    return base.model_copy(
        update={
            "storage_backend": "s3",
            "s3_endpoint_url": endpoint,
            "s3_bucket": BUCKET,
            "s3_access_key": "test",
            "s3_secret_key": "test",
        }
    )


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> ObjectStore:  # type: ignore[no-untyped-def]
    if request.param == "local":
        return build_store(Settings(storage_dir=str(tmp_path / "objects")))
    endpoint = request.getfixturevalue("s3_endpoint")
    return build_store(s3_settings(Settings(), endpoint))


def test_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    assert isinstance(store, ObjectStore)
    store.ping()
    payload = b"\x00\x01" * 700_000  # > 1 MiB: streamed in several chunks
    source = tmp_path / "src.bin"
    source.write_bytes(payload)
    store.put_file("jobs/a/model.bin", source)
    store.put_bytes("jobs/a/report.json", b"{}")
    assert store.exists("jobs/a/model.bin") and not store.exists("jobs/a/nothing")
    assert store.size("jobs/a/model.bin") == len(payload)
    chunks = list(store.open_stream("jobs/a/model.bin"))
    assert len(chunks) > 1 and b"".join(chunks) == payload
    dest = tmp_path / "out" / "copy.bin"
    store.get_to_path("jobs/a/model.bin", dest)
    assert dest.read_bytes() == payload
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".tmp")]
    store.put_bytes("jobs/a/report.json", b'{"v": 2}')  # overwrite
    assert b"".join(store.open_stream("jobs/a/report.json")) == b'{"v": 2}'
    store.delete("jobs/a/report.json")
    store.delete("jobs/a/report.json")  # deleting twice is fine
    assert not store.exists("jobs/a/report.json")
    with pytest.raises(ObjectNotFound):
        store.open_stream("jobs/a/report.json")
    with pytest.raises(ObjectNotFound):
        store.size("jobs/a/report.json")
    with pytest.raises(ObjectNotFound):
        store.get_to_path("jobs/a/report.json", tmp_path / "x")


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../b", "/abs/path", "a//b", "a/./b", "", "a\\b", "a/b\x00", "trailing/"]
)
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        store.exists(key)


def test_local_store_writes_atomically(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = LocalStore(tmp_path)
    store.put_bytes("k/obj", b"old")

    class Boom(Exception):
        pass

    import service.storage as storage

    def failing_copy(src, dst, length=0):  # type: ignore[no-untyped-def]
        dst.write(b"half")
        raise Boom

    monkeypatch.setattr(storage.shutil, "copyfileobj", failing_copy)
    with pytest.raises(Boom):
        store.put_bytes("k/obj", b"new content")
    assert (tmp_path / "k" / "obj").read_bytes() == b"old"  # never half a file
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["obj"]  # and no temp file left


def test_local_store_refuses_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidKey):
        LocalStore(root).open_stream("link/secret")


def test_presigned_urls(store: ObjectStore) -> None:
    store.put_bytes("p/q.txt", b"hello")
    url = store.presigned_url("p/q.txt", 60)
    if isinstance(store, LocalStore):
        assert url is None
    else:
        assert isinstance(store, S3Store) and url
        assert httpx.get(url).content == b"hello"


def test_s3_ping_fails_on_a_missing_bucket(s3_endpoint: str) -> None:
    from service.storage import StorageError

    bad = s3_settings(Settings(), s3_endpoint).model_copy(update={"s3_bucket": "no-such-bucket"})
    with pytest.raises(StorageError):
        build_store(bad).ping()


def test_artifact_download_streams_from_s3(settings: Settings, queue, key, s3_endpoint: str) -> None:  # type: ignore[no-untyped-def]
    s3 = s3_settings(settings, s3_endpoint)
    with session_scope(s3) as s:
        workers.beat(s, "storage-test:1", "storage-test", 1)  # /readyz also wants a live worker
    with TestClient(build_app(s3, queue)) as client:
        assert client.get("/readyz").json()["checks"]["store"] == "ok"
        job_id = client.post("/v1/jobs", json={}, headers=key.headers).json()["id"]
        payload = bytes(range(256)) * 9000
        digest = hashlib.sha256(payload).hexdigest()
        storage_key = f"jobs/{job_id}/artifacts/model.pt"
        build_store(s3).put_bytes(storage_key, payload)
        with session_scope(s3) as s:
            jobs.add_artifact(s, job_id, "model.pt", storage_key, len(payload), digest)
        with client.stream("GET", f"/v1/jobs/{job_id}/artifacts/model.pt", headers=key.headers) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(len(payload))
            assert response.headers["x-checksum-sha256"] == digest
            assert b"".join(response.iter_bytes()) == payload
        redirect = client.get(
            f"/v1/jobs/{job_id}/artifacts/model.pt?redirect=true", headers=key.headers, follow_redirects=False
        )
        assert redirect.status_code == 307
        assert httpx.get(redirect.headers["location"]).content == payload
