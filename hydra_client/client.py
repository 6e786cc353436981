"""``Client``: the service's HTTP API from Python (httpx; no torch, no project code).

    from hydra_client import Client, HydraError

    client = Client("http://127.0.0.1:8000", api_key)
    job = client.submit("examples/demo_mnist5k.yaml", idempotency_key="demo-1")
    final = client.wait(job["id"], progress=True)          # quiet by default; progress: lines and a bar
    report = client.report(job["id"])
    client.download(job["id"], "hydra_k0.01.compressed.safetensors", "out/")   # sha256 checked

Every method returns the API's JSON (plain dicts) and raises ``HydraError`` for every failure, with
the service's ``error_code``, ``detail`` and ``field``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from hydra_client.display import event_line
from hydra_client.errors import HydraError
from hydra_client.report_view import ReportView
from hydra_client.spec_yaml import parse_spec_text

FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Event:
    """One job event: ``kind`` (``status``, ``stage_started``, ``epoch_finished``, ...) and its payload."""

    id: int
    kind: str
    payload: dict[str, Any]
    created_at: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        return cls(int(data["id"]), str(data["kind"]), data.get("payload") or {}, data.get("created_at"))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "payload": self.payload, "created_at": self.created_at}


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """A job spec from a YAML or JSON file, as a dict (the service validates it). A file that is
    missing, unreadable or not a spec raises ``HydraError`` like every other failure."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HydraError("spec_unreadable", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HydraError("spec_unreadable", f"cannot read {path}: {reason}") from None
    data = parse_spec_text(text, str(path), as_json=str(path).endswith(".json"))  # no aliases, bounded
    if not isinstance(data, dict):
        raise HydraError("invalid_spec", f"{path} does not hold a mapping (a job spec)")
    return data


def _error_from(response: httpx.Response) -> HydraError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error_code" in body:
        return HydraError(str(body["error_code"]), str(body.get("detail", "")), body.get("field"), response.status_code)
    text = response.text.strip()[:500]
    return HydraError(f"http_{response.status_code}", text or response.reason_phrase, None, response.status_code)


def _retry_after(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        try:
            return min(30.0, float(response.headers.get("Retry-After", "")))
        except ValueError:
            pass
    return min(5.0, 0.5 * 2**attempt)


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, str | None]]:
    """Server-Sent Events from the lines of a stream: ``(event, data, id)`` per dispatched event."""
    # Kept rather than httpx-sse (issue 17 item 7): the client's only dependency is httpx, and this is
    # the WHATWG dispatch rule for the three fields our server sends (event, data, id; comments skipped),
    # tested against the server's own stream; reconnection with Last-Event-ID lives in Client.events.
    kind, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield kind, "\n".join(data), event_id
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:
        yield kind, "\n".join(data), event_id


def _open_upload(path: str | Path) -> Any:
    """The file to upload, opened; a missing or unreadable one is a ``HydraError`` like every failure."""
    try:
        return open(path, "rb")  # closed by the caller's ``with``
    except FileNotFoundError:
        raise HydraError("file_unreadable", f"{path}: no such file", "file") from None
    except OSError as exc:
        raise HydraError("file_unreadable", f"cannot read {path}: {exc.strerror or exc}", "file") from None


class Client:
    """A client of one service for one API key (``url`` and ``api_key`` default to ``HYDRA_URL`` and
    ``HYDRA_API_KEY``). Use it as a context manager, or call ``close()``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("HYDRA_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("HYDRA_API_KEY")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.retries = retries
        self._transport = transport
        self._http = self._new_http()

    def __repr__(self) -> str:  # never shows the key
        return f"Client({self.url!r})"

    def _new_http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={**self._headers, "User-Agent": "hydra-client"},
            timeout=self.timeout,
            transport=self._transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------- plumbing
    def _request(self, method: str, path: str, *, retry: bool | None = None, **kwargs: Any) -> httpx.Response:
        """One call; idempotent ones (GET, or anything with an Idempotency-Key) are retried on a
        connection error, 429 and 502-504, after ``Retry-After`` when the service says."""
        if retry is None:
            retry = method == "GET" or "Idempotency-Key" in (kwargs.get("headers") or {})
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                if attempt + 1 >= attempts:
                    raise HydraError("connection_error", f"{method} {self.url}{path}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES or attempt + 1 >= attempts:
                    raise _error_from(response)
            time.sleep(_retry_after(response, attempt))
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise HydraError(
                "invalid_response", f"{method} {path} did not answer JSON", status_code=response.status_code
            ) from exc

    # ------------------------------------------------------------------------- jobs
    def submit(self, spec: dict[str, Any] | str | Path, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a job spec (a dict, or the path of a YAML/JSON file); returns the queued job.

        With ``idempotency_key`` a retried submission returns the same job instead of a second one
        (and is retried automatically on a lost connection)."""
        body = spec if isinstance(spec, dict) else load_spec_file(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        """A job's status, stage, progress (``fraction``), latest metrics and timestamps."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> builtins.list[dict[str, Any]]:
        """Your jobs, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._json("GET", "/v1/jobs", params=params)["data"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job (a queued one at once, a running one at its next batch); returns the job."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def delete_job(self, job_id: str) -> None:
        """Delete a stopped job with its events, artifacts and checkpoint (``HydraError('conflict')``
        while it is queued or running: cancel it first; ``'not_found'`` once deleted)."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def delete_artifact(self, job_id: str, name: str) -> None:
        """Delete one artifact of a stopped job."""
        self._request("DELETE", f"/v1/jobs/{job_id}/artifacts/{name}")

    def delete_model(self, model_id: str) -> None:
        """Delete an uploaded model (``HydraError('conflict')`` naming the unfinished jobs that use it)."""
        self._request("DELETE", f"/v1/models/{model_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (``HydraError('conflict')`` naming the unfinished jobs that use it)."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def label(self, job_id: str, tags: builtins.list[str] | None = None, note: str | None = None) -> dict[str, Any]:
        """Set a job's tags and/or note (those given replace the old ones; note ``""`` clears it)."""
        body: dict[str, Any] = {}
        if tags is not None:
            body["tags"] = tags
        if note is not None:
            body["note"] = note
        return self._json("PATCH", f"/v1/jobs/{job_id}", json=body)

    def compare(self, job_ids: builtins.list[str]) -> dict[str, Any]:
        """One table across jobs: ``{"jobs", "rows", "metrics"}`` (rows carry ``job_id``/``job_name``)."""
        return self._json("GET", "/v1/jobs/compare", params={"ids": ",".join(job_ids)})

    def estimate(self, spec: dict[str, Any] | str | Path) -> dict[str, Any]:
        """What a spec would cost (sample-passes per stage; seconds where a throughput was measured)."""
        body = spec if isinstance(spec, dict) else load_spec_file(spec)
        return self._json("POST", "/v1/jobs/estimate", json=body)

    def report(self, job_id: str) -> ReportView:
        """The report of a succeeded job (``HydraError('job_not_succeeded')`` until then); the whole
        report, typed for the fields this client reads (``hydra_client.report_view``)."""
        report: ReportView = self._json("GET", f"/v1/jobs/{job_id}/report")
        return report

    def artifacts(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The files a job produced: name, size, sha256, content type."""
        return self._json("GET", f"/v1/jobs/{job_id}/artifacts")["data"]

    def download(self, job_id: str, name: str, path: str | Path | None = None) -> Path:
        """Download artifact ``name`` to ``path`` (a file, or a folder to put it in; default: the
        current folder) and check its size and sha256 against the job's listing. A mismatch raises
        ``HydraError('checksum_mismatch')`` and leaves no file behind. Returns the file's path."""
        listing = {a["name"]: a for a in self.artifacts(job_id)}
        if name not in listing:
            raise HydraError(
                "not_found", f"job {job_id} has no artifact {name!r} (it has: {sorted(listing)})", "name", 404
            )
        expected = listing[name]
        target = Path(path) if path is not None else Path.cwd()
        if target.is_dir() or (path is not None and str(path).endswith(("/", os.sep))):
            target = target / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest, size = hashlib.sha256(), 0
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                header_sha = response.headers.get("X-Checksum-SHA256")
                with open(partial, "wb") as handle:
                    for chunk in response.iter_bytes(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        handle.write(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise HydraError("connection_error", f"download of {name}: {exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        actual = digest.hexdigest()
        if actual != expected["sha256"] or size != expected["size"] or (header_sha and header_sha != actual):
            partial.unlink(missing_ok=True)
            raise HydraError(
                "checksum_mismatch",
                f"{name}: got {size} bytes with sha256 {actual}, the listing says {expected['size']} bytes "
                f"with sha256 {expected['sha256']}",
                "name",
            )
        os.replace(partial, target)
        return target

    # ------------------------------------------------------------------------- events and waiting
    def events(
        self, job_id: str, after: int = 0, *, follow: bool = True, reconnect_for_s: float = 300.0
    ) -> Iterator[Event]:
        """The job's events, oldest first. ``follow=True``: the live Server-Sent-Events stream, which
        ends once the job is final and everything was sent; a dropped connection is resumed from the
        last event seen (for up to ``reconnect_for_s`` without success). ``follow=False``: the history."""
        cursor = after
        if not follow:
            while True:
                page = self._json("GET", f"/v1/jobs/{job_id}/events", params={"after": cursor, "limit": 1000})
                for item in page["data"]:
                    yield Event.from_json(item)
                if not page["data"] or len(page["data"]) < 1000:
                    return
                cursor = int(page["next_after"])
        http = self._new_http()
        try:
            yield from self._stream(job_id, cursor, http, reconnect_for_s)
        finally:
            http.close()

    def _stream(
        self, job_id: str, cursor: int, http: httpx.Client, reconnect_for_s: float, stop: threading.Event | None = None
    ) -> Iterator[Event]:
        failing_since: float | None = None
        while stop is None or not stop.is_set():
            try:
                with http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    params={"stream": "true", "after": cursor},
                    headers={"Accept": "text/event-stream"},
                    timeout=httpx.Timeout(self.timeout, read=60.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error_from(response)
                    failing_since = None
                    for kind, data, _event_id in parse_sse(response.iter_lines()):
                        if stop is not None and stop.is_set():
                            return
                        payload = json.loads(data)
                        if kind == "end":
                            return
                        event = Event.from_json(payload)
                        cursor = max(cursor, event.id)
                        yield event
            except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the client was closed under us
                if (stop is not None and stop.is_set()) or http.is_closed:
                    return
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > reconnect_for_s:
                    raise HydraError("connection_error", f"event stream of job {job_id}: {exc}") from exc
                time.sleep(1.0)
            except HydraError as err:
                if err.status_code not in RETRY_STATUSES:
                    raise
                time.sleep(_retry_after(None, 2))

    def wait(
        self,
        job_id: str,
        progress: bool = False,
        *,
        history: bool = False,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        file: IO[str] | None = None,
    ) -> dict[str, Any]:
        """Wait until the job is final and return its row. Quiet unless asked:

        ``progress=True``: one line per stage, epoch and evaluation (from the event stream) and, on a
        terminal, a tqdm bar of the whole run (from the job's ``fraction``); off a terminal (a pipe, a
        log file) only the lines, so a log is not flooded with bar redraws. Output goes to ``file``
        (default: stderr). A job that is already final is returned at once without replaying its
        events, unless ``history=True``. ``timeout`` (s): ``HydraError('timeout')`` when the job is
        not final by then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        row = self.get(job_id)
        if not progress or (row["status"] in FINAL_STATUSES and not history):
            while row["status"] not in FINAL_STATUSES:
                self._check_deadline(deadline, job_id, row)
                time.sleep(poll_interval)
                row = self.get(job_id)
            return row
        return self._wait_with_progress(job_id, deadline, poll_interval, file or sys.stderr)

    @staticmethod
    def _check_deadline(deadline: float | None, job_id: str, row: dict[str, Any]) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise HydraError("timeout", f"job {job_id} is still {row['status']}", "job_id")

    def _wait_with_progress(
        self, job_id: str, deadline: float | None, poll_interval: float, out: IO[str]
    ) -> dict[str, Any]:
        from tqdm import tqdm

        items: queue.Queue[Event | BaseException | None] = queue.Queue()
        stop = threading.Event()
        http = self._new_http()  # the stream's own connection: closing it ends the stream at once

        def read() -> None:
            try:
                for event in self._stream(job_id, 0, http, 300.0, stop):
                    items.put(event)
                items.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                items.put(exc)

        reader = threading.Thread(target=read, name=f"hydra-events-{job_id[:8]}", daemon=True)
        reader.start()
        on_terminal = bool(getattr(out, "isatty", lambda: False)())
        bar = tqdm(
            total=100,
            unit="%",
            bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]",
            leave=True,
            file=out,
            disable=not on_terminal,
        )
        ended = False

        def write(line: str) -> None:
            if on_terminal:
                bar.write(line, file=out)
            else:
                out.write(line + "\n")
                out.flush()

        def drain(block_s: float = 0.0) -> None:
            nonlocal ended
            end_at = time.monotonic() + block_s
            while not ended:
                try:
                    item = items.get(timeout=max(0.0, end_at - time.monotonic())) if block_s else items.get_nowait()
                except queue.Empty:
                    return
                if item is None or isinstance(item, BaseException):
                    ended = True  # a broken stream only costs the lines: the row still says when it is done
                    return
                line = event_line(item.kind, item.as_dict())
                if line:
                    write(line)

        try:
            while True:
                drain()
                row = self.get(job_id)
                bar.n = round(100 * float(row.get("fraction") or 0.0), 1)
                if row.get("stage"):
                    bar.set_description(
                        f"{row['stage']} {row.get('variant') or ''} {row.get('epoch') or 0}/{row.get('epochs') or 0}",
                        refresh=False,
                    )
                bar.refresh()
                if row["status"] in FINAL_STATUSES:
                    drain(block_s=5.0)  # the stream's last events (the final status) follow the row
                    return row
                self._check_deadline(deadline, job_id, row)
                time.sleep(poll_interval)
        finally:
            bar.close()
            stop.set()
            http.close()  # ends the stream's connection (the service can shut down at once)

    # ------------------------------------------------------------------------- uploads
    def upload_model(
        self,
        path: str | Path,
        arch: str,
        kwargs: dict[str, Any] | None = None,
        *,
        format: str = "auto",
        name: str | None = None,
    ) -> dict[str, Any]:
        """Upload a network (safetensors, or a weights-only torch state dict) for architecture ``arch``;
        the answer's ``ref`` (``model:<id>``) goes in a spec as ``model.checkpoint``. With ``arch="onnx"``
        the file is your own ONNX network (checked and converted by the service); its ``ref`` goes in a
        spec as ``model.onnx``."""
        data = {"arch": arch, "kwargs": json.dumps(kwargs or {}), "format": format}
        if name:
            data["name"] = name
        return self._upload("/v1/models", path, data)

    def upload_dataset(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        num_classes: int | None = None,
        image_size: int | None = None,
        channels: int | None = None,
    ) -> dict[str, Any]:
        """Upload an ``.npz`` dataset, or a ``.zip``/``.tar`` of class folders (``class_name/image``,
        optionally under ``train/`` and ``val/``) that the service decodes, resizes to ``image_size``
        (shorter side, then a centre crop) with ``channels`` (1 or 3) and stores as one; the answer's
        ``ref`` (``dataset:<id>``) goes in a spec as ``dataset.path`` with ``dataset.name: npz``."""
        data: dict[str, Any] = {}
        if name:
            data["name"] = name
        if num_classes is not None:
            data["num_classes"] = str(num_classes)
        if image_size is not None:
            data["image_size"] = str(image_size)
        if channels is not None:
            data["channels"] = str(channels)
        return self._upload("/v1/datasets", path, data)

    def _upload(self, route: str, path: str | Path, data: dict[str, Any]) -> dict[str, Any]:
        """POST the file at ``path`` with the form fields ``data``; the write is streamed without a time
        limit and the answer (the service checks the file first) may take ten minutes."""
        with _open_upload(path) as handle:
            return self._json(
                "POST",
                route,
                files={"file": (Path(path).name, handle)},
                data=data,
                timeout=httpx.Timeout(self.timeout, write=None, read=600.0),
            )

    def models(self) -> builtins.list[dict[str, Any]]:
        return self._json("GET", "/v1/models")["data"]

    def datasets(self) -> builtins.list[dict[str, Any]]:
        return self._json("GET", "/v1/datasets")["data"]

    # ------------------------------------------------------------------------- the rest
    def catalogue(self, kind: str) -> builtins.list[dict[str, Any]]:
        """``architectures``, ``datasets`` or ``objectives``, each entry with its defaults."""
        return self._json("GET", f"/v1/catalogue/{kind}")["data"]

    def health(self) -> dict[str, Any]:
        """``/healthz`` (no key needed)."""
        return self._json("GET", "/healthz", retry=False)
