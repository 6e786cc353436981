"""The service from a shell, on ``hydra_client.Client``:

    hydra-compress submit spec.yaml --url URL --key KEY [--wait]   # prints the job id; --wait: progress, table
    hydra-compress wait JOB_ID                                     # progress, then the table
    hydra-compress status JOB_ID [--json]
    hydra-compress list [--status running]
    hydra-compress report JOB_ID [--json]
    hydra-compress download JOB_ID [NAME] [--out DIR]              # sha256 checked; no NAME: the compressed networks
    hydra-compress cancel JOB_ID [--wait]
    hydra-compress delete JOB_ID [--artifact NAME]                 # a stopped job (or one artifact), store included

``--url`` and ``--key`` default to ``HYDRA_URL`` and ``HYDRA_API_KEY``. Exit status: 0 success,
1 the job failed, 3 the job was canceled, 2 the service refused the request (the error's code and
field are printed) or could not be reached.

The commands are registered on any typer app with ``register(app)`` (``launch.cli`` adds them to the
core's local commands under one ``hydra-compress``); ``app`` here has them alone (``hydra-client``).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from hydra_client.client import DEFAULT_URL, FINAL_STATUSES, Client
from hydra_client.display import comparison_table
from hydra_client.errors import HydraError

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELED = 0, 1, 2, 3
EXIT_BY_STATUS = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "canceled": EXIT_CANCELED}

Url = Annotated[str, typer.Option("--url", envvar="HYDRA_URL", help="The service (env HYDRA_URL).")]
Key = Annotated[
    str | None, typer.Option("--key", envvar="HYDRA_API_KEY", help="API key (env HYDRA_API_KEY).", show_default=False)
]
JobId = Annotated[str, typer.Argument(help="The job's id (printed by submit).")]


def _client(url: str, key: str | None) -> Client:
    if not key:
        _refused(HydraError("unauthorized", "an API key is needed: --key or HYDRA_API_KEY"))
    return Client(url, key)


def _refused(err: HydraError) -> NoReturn:
    where = f" {err.field}:" if err.field else ""
    typer.echo(f"error [{err.error_code}]{where} {err.detail}", err=True)
    raise typer.Exit(EXIT_REFUSED)


def _calling(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except HydraError as err:
        _refused(err)


def _finish(client: Client, job_id: str, progress: bool) -> NoReturn:
    """Wait for the job, print its outcome (the table on success) and exit with its status's code."""
    try:
        row = client.wait(job_id, progress=progress)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following job {job_id}; it goes on (hydra-compress cancel {job_id} stops it)", err=True)
        raise typer.Exit(130) from None
    except HydraError as err:
        _refused(err)
    status = row["status"]
    if status == "succeeded":
        report = _calling(lambda: client.report(job_id))
        typer.echo("")
        typer.echo(comparison_table(report))
        typer.echo(f"\njob {job_id} succeeded; artifacts: hydra-compress download {job_id}")
    else:
        reason = f": {row['error_reason']}" if row.get("error_reason") else ""
        typer.echo(f"job {job_id} {status}{reason}", err=True)
    raise typer.Exit(EXIT_BY_STATUS.get(status, EXIT_FAILED))


def _fmt_time(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "-"


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in (metrics or {}).items())


# ----------------------------------------------------------------------------- the commands
def submit(
    spec: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.", exists=True, dir_okay=False)],
    url: Url = DEFAULT_URL,
    key: Key = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job to its end; the exit status says how it ended.")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Submitting again with it returns the same job.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="With --wait: progress lines/bar.")] = True,
) -> None:
    """Submit a job spec; prints the job id (alone on stdout, for scripts)."""
    client = _client(url, key)
    job = _calling(lambda: client.submit(spec, idempotency_key=idempotency_key))
    typer.echo(job["id"])
    if wait:
        _finish(client, job["id"], progress)


def wait_cmd(
    job_id: JobId,
    url: Url = DEFAULT_URL,
    key: Key = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Follow a job to its end (progress, then the comparison table); the exit status says how it ended."""
    _finish(_client(url, key), job_id, progress)


def status(
    job_id: JobId,
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Annotated[bool, typer.Option("--json", help="The job row as JSON.")] = False,
) -> None:
    """A job's status, stage, progress and latest metrics."""
    client = _client(url, key)
    row = _calling(lambda: client.get(job_id))
    if as_json:
        typer.echo(json.dumps(row, indent=2))
        return
    stage = ""
    if row.get("stage") and row["status"] not in FINAL_STATUSES:  # a finished job: its status, not its last stage
        stage = f"  {row['stage']} {row.get('variant') or ''} epoch {row.get('epoch') or 0}/{row.get('epochs') or 0}"
    typer.echo(
        f"{row['id']}  {row['status']}{stage}  {100 * float(row.get('fraction') or 0):.0f}%  "
        f"attempt {row.get('attempt')}/{row.get('max_attempts')}"
    )
    if row.get("metrics") and not row.get("headlines"):
        typer.echo(f"  metrics: {_metrics_text(row['metrics'])}")
    for line in row.get("headlines") or []:  # every network of a succeeded job
        robust = line.get("robust_acc")
        robust_text = f"  {line.get('robust_metric')} {100 * robust:.2f}%" if isinstance(robust, (int, float)) else ""
        typer.echo(
            f"  {line['variant']:18s} sparsity {100 * float(line.get('sparsity') or 0):6.2f}%  "
            f"benign {100 * float(line.get('benign_acc') or 0):.2f}%{robust_text}"
        )
    typer.echo(f"  created {_fmt_time(row.get('created_at'))}  finished {_fmt_time(row.get('finished_at'))}")
    if row.get("error_reason"):
        typer.echo(f"  reason: {row['error_reason']}")


def list_cmd(
    url: Url = DEFAULT_URL,
    key: Key = None,
    status_filter: Annotated[str | None, typer.Option("--status", help="queued, running, succeeded, ...")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 20,
) -> None:
    """Your jobs, newest first."""
    client = _client(url, key)
    for row in _calling(lambda: client.list(status=status_filter, limit=limit)):
        typer.echo(
            f"{row['id']}  {row['status']:9s} {100 * float(row.get('fraction') or 0):4.0f}%  "
            f"{_fmt_time(row.get('created_at'))}  {row.get('name') or ''}"
        )


def report_cmd(
    job_id: JobId,
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: Annotated[bool, typer.Option("--json", help="The whole report as JSON.")] = False,
) -> None:
    """The comparison table of a succeeded job (or its whole report with --json)."""
    client = _client(url, key)
    report = _calling(lambda: client.report(job_id))
    typer.echo(json.dumps(report, indent=2) if as_json else comparison_table(report))


def download(
    job_id: JobId,
    name: Annotated[str | None, typer.Argument(help="Artifact name; default: every compressed network.")] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder (or file name, with NAME).")] = Path("."),
    all_files: Annotated[bool, typer.Option("--all", help="Every artifact of the job.")] = False,
) -> None:
    """Download artifacts; each one's size and sha256 is checked against the job's listing."""
    client = _client(url, key)
    listing = _calling(lambda: client.artifacts(job_id))
    if name:
        names = [name]
    elif all_files:
        names = [a["name"] for a in listing]
    else:
        names = [a["name"] for a in listing if a["name"].endswith(".compressed.safetensors")]
    if not names:
        _refused(HydraError("not_found", f"job {job_id} has no artifacts to download yet", "name"))
    sizes = {a["name"]: a for a in listing}
    if len(names) > 1:
        out.mkdir(parents=True, exist_ok=True)
    for item in names:
        path = _calling(functools.partial(client.download, job_id, item, out))
        info = sizes.get(item, {})
        typer.echo(f"{path}  {info.get('size', path.stat().st_size)} bytes  sha256 {info.get('sha256', '')} ok")


def cancel(
    job_id: JobId,
    url: Url = DEFAULT_URL,
    key: Key = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job has stopped.")] = False,
) -> None:
    """Cancel a job: a queued one at once, a running one at its next batch."""
    client = _client(url, key)
    row = _calling(lambda: client.cancel(job_id))
    if wait and row["status"] not in FINAL_STATUSES:
        row = _calling(lambda: client.wait(job_id, progress=False))
    note = " (stops at its next batch)" if row["status"] == "running" else ""
    typer.echo(f"{job_id}  {row['status']}{note}")


def delete(
    job_id: JobId,
    url: Url = DEFAULT_URL,
    key: Key = None,
    artifact: Annotated[str | None, typer.Option("--artifact", help="Delete only this artifact.")] = None,
) -> None:
    """Delete a stopped job with its artifacts and checkpoint (or one artifact); cancel a live job first."""
    client = _client(url, key)
    if artifact:
        _calling(lambda: client.delete_artifact(job_id, artifact))
        typer.echo(f"{job_id}  artifact {artifact} deleted")
    else:
        _calling(lambda: client.delete_job(job_id))
        typer.echo(f"{job_id}  deleted")


COMMANDS: list[tuple[str, Callable[..., Any]]] = [
    ("submit", submit),
    ("wait", wait_cmd),
    ("status", status),
    ("list", list_cmd),
    ("report", report_cmd),
    ("download", download),
    ("cancel", cancel),
    ("delete", delete),
]


def register(target: typer.Typer) -> typer.Typer:
    """Add the client's commands to ``target`` (a command of the same name already there is kept)."""
    existing = {c.name or (c.callback.__name__ if c.callback else None) for c in target.registered_commands}
    for name, fn in COMMANDS:
        if name not in existing:
            target.command(name)(fn)
    return target


app = register(
    typer.Typer(
        name="hydra-client",
        help="Use a HYDRA compression service: submit, follow, download.",
        no_args_is_help=True,
        add_completion=False,
    )
)


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
