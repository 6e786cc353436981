"""The service from a shell, on ``hydra_client.Client``:

    hydra-client submit spec.yaml --url URL --key KEY [--wait]   # prints the job id; --wait: progress, table
    hydra-client wait JOB_ID [--history]                         # progress, then the table
    hydra-client status JOB_ID [--json]
    hydra-client list [--status running]
    hydra-client report JOB_ID [--json]
    hydra-client download JOB_ID [NAME] [--out DIR]              # sha256 checked; no NAME: the compressed networks
    hydra-client cancel JOB_ID [--wait]
    hydra-client delete JOB_ID [--artifact NAME]                 # a stopped job (or one artifact), store included
    hydra-client upload-model FILE [--arch ARCH] [--kwargs JSON]  # weights for ARCH, or (no --arch) your ONNX network
    hydra-client upload-dataset FILE [--image-size N] [--channels 1|3]   # .npz, or a .zip/.tar of class folders

(``hydra-compress`` has the same commands beside the core's local ones, see ``launch.cli``.)
``--url`` and ``--key`` default to ``HYDRA_URL`` and ``HYDRA_API_KEY``. Exit status: 0 success,
1 the job failed, 2 a user error or a refused request (one line on stderr: the error's code, field
and problem; also a service that could not be reached), 3 the job was canceled, 130 interrupted.

argparse (the standard library), not typer/click: the client installs with httpx, tqdm and PyYAML
only. Each command is one function, ``@command(name, its arguments)``, listed in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra_client.client import DEFAULT_URL, FINAL_STATUSES, Client
from hydra_client.display import comparison_table
from hydra_client.errors import HydraError

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BY_STATUS = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "canceled": EXIT_CANCELED}


class Refused(Exception):
    """A user error or a refused request: one line on stderr, exit status 2."""

    def __init__(self, err: HydraError) -> None:
        super().__init__(str(err))
        self.err = err


def error_line(err: HydraError) -> str:
    """``error [code] field: problem`` on one line (the field named once)."""
    return f"error [{err.error_code}] {err.message}"


@dataclass(frozen=True)
class Command:
    name: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    @property
    def help(self) -> str:
        return (self.run.__doc__ or "").strip().split("\n")[0]


COMMANDS: list[Command] = []


def command(name: str, arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[..., Any]:
    """Register ``fn(args) -> exit status`` as command ``name``; ``arguments`` adds its own options."""

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS.append(Command(name, arguments, fn))
        return fn

    return register


# ----------------------------------------------------------------------------- shared helpers
def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("HYDRA_URL") or DEFAULT_URL,
        help=f"The service (env HYDRA_URL; default {DEFAULT_URL}).",
    )
    parser.add_argument("--key", default=os.environ.get("HYDRA_API_KEY"), help="API key (env HYDRA_API_KEY).")


def _job_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID", help="The job's id (printed by submit).")
    _connection(parser)


def _client(args: argparse.Namespace) -> Client:
    if not args.key:
        raise Refused(HydraError("unauthorized", "an API key is needed: --key or HYDRA_API_KEY"))
    return Client(args.url, args.key)


def _calling(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except HydraError as err:
        raise Refused(err) from None


def _finish(client: Client, job_id: str, progress: bool, history: bool = False) -> int:
    """Wait for the job, print its outcome (the table on success); its status's exit code."""
    try:
        row = client.wait(job_id, progress=progress, history=history)
    except KeyboardInterrupt:
        print(f"\nstopped following job {job_id}; it goes on (hydra-client cancel {job_id} stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except HydraError as err:
        raise Refused(err) from None
    status = row["status"]
    if status == "succeeded":
        report = _calling(lambda: client.report(job_id))
        print("")
        print(comparison_table(report))
        print(f"\njob {job_id} succeeded; artifacts: hydra-client download {job_id}")
    else:
        reason = f": {row['error_reason']}" if row.get("error_reason") else ""
        print(f"job {job_id} {status}{reason}", file=sys.stderr)
    return EXIT_BY_STATUS.get(status, EXIT_FAILED)


def _fmt_time(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "-"


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in (metrics or {}).items())


def _progress_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help=help)


# ----------------------------------------------------------------------------- the commands
def _submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, metavar="SPEC", help="Job spec, YAML or JSON.")
    _connection(parser)
    parser.add_argument(
        "--wait", action="store_true", help="Follow the job to its end; the exit status says how it ended."
    )
    parser.add_argument("--idempotency-key", help="Submitting again with it returns the same job.")
    _progress_flag(parser, "With --wait: progress lines (and a bar on a terminal).")


@command("submit", _submit_args)
def submit(args: argparse.Namespace) -> int:
    """Submit a job spec; prints the job id (alone on stdout, for scripts)."""
    from hydra_client.client import load_spec_file

    spec = _calling(lambda: load_spec_file(args.spec))  # a bad file is refused before any key or network
    client = _client(args)
    job = _calling(lambda: client.submit(spec, idempotency_key=args.idempotency_key))
    print(job["id"], flush=True)
    return _finish(client, job["id"], args.progress) if args.wait else EXIT_OK


def _wait_args(parser: argparse.ArgumentParser) -> None:
    _job_id(parser)
    _progress_flag(parser, "Progress lines (and a bar on a terminal).")
    parser.add_argument("--history", action="store_true", help="Replay the events of a job already finished.")


@command("wait", _wait_args)
def wait(args: argparse.Namespace) -> int:
    """Follow a job to its end (progress, then the comparison table); the exit status says how it ended."""
    return _finish(_client(args), args.job_id, args.progress, args.history)


def _job_json_args(what: str) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments of a command that shows one job's ``what``: the job id, and ``--json`` for it as JSON."""

    def arguments(parser: argparse.ArgumentParser) -> None:
        _job_id(parser)
        parser.add_argument("--json", dest="as_json", action="store_true", help=f"{what} as JSON.")

    return arguments


def _show_job(args: argparse.Namespace, fetch: Callable[[Client, str], Any], show: Callable[[Any], None]) -> int:
    """Fetch the job's body (``fetch(client, job_id)``) and print it as JSON with ``--json``, else ``show`` it."""
    client = _client(args)
    body = _calling(lambda: fetch(client, args.job_id))
    if args.as_json:
        print(json.dumps(body, indent=2))
    else:
        show(body)
    return EXIT_OK


@command("status", _job_json_args("The job row"))
def status(args: argparse.Namespace) -> int:
    """A job's status, stage, progress and latest metrics."""
    return _show_job(args, lambda client, job_id: client.get(job_id), _print_status)


def _print_status(row: dict[str, Any]) -> None:
    stage = ""
    if row.get("stage") and row["status"] not in FINAL_STATUSES:  # a finished job: its status, not its last stage
        stage = f"  {row['stage']} {row.get('variant') or ''} epoch {row.get('epoch') or 0}/{row.get('epochs') or 0}"
    print(
        f"{row['id']}  {row['status']}{stage}  {100 * float(row.get('fraction') or 0):.0f}%  "
        f"attempt {row.get('attempt')}/{row.get('max_attempts')}"
    )
    if row.get("metrics") and not row.get("headlines"):
        print(f"  metrics: {_metrics_text(row['metrics'])}")
    for line in row.get("headlines") or []:  # every network of a succeeded job
        robust = line.get("robust_acc")
        robust_text = f"  {line.get('robust_metric')} {100 * robust:.2f}%" if isinstance(robust, (int, float)) else ""
        print(
            f"  {line['variant']:18s} sparsity {100 * float(line.get('sparsity') or 0):6.2f}%  "
            f"benign {100 * float(line.get('benign_acc') or 0):.2f}%{robust_text}"
        )
    print(f"  created {_fmt_time(row.get('created_at'))}  finished {_fmt_time(row.get('finished_at'))}")
    if row.get("error_reason"):
        print(f"  reason: {row['error_reason']}")


def _list_args(parser: argparse.ArgumentParser) -> None:
    _connection(parser)
    parser.add_argument("--status", dest="status_filter", help="queued, running, succeeded, ...")
    parser.add_argument("--limit", type=int, default=20, help="How many (default 20).")


@command("list", _list_args)
def list_jobs(args: argparse.Namespace) -> int:
    """Your jobs, newest first."""
    client = _client(args)
    for row in _calling(lambda: client.list(status=args.status_filter, limit=args.limit)):
        print(
            f"{row['id']}  {row['status']:9s} {100 * float(row.get('fraction') or 0):4.0f}%  "
            f"{_fmt_time(row.get('created_at'))}  {row.get('name') or ''}"
        )
    return EXIT_OK


@command("report", _job_json_args("The whole report"))
def report(args: argparse.Namespace) -> int:
    """The comparison table of a succeeded job (or its whole report with --json)."""
    return _show_job(args, lambda client, job_id: client.report(job_id), lambda body: print(comparison_table(body)))


def _download_args(parser: argparse.ArgumentParser) -> None:
    _job_id(parser)
    parser.add_argument("name", nargs="?", metavar="NAME", help="Artifact name; default: every compressed network.")
    parser.add_argument("--out", "-o", type=Path, default=Path("."), help="Folder (or file name, with NAME).")
    parser.add_argument("--all", dest="all_files", action="store_true", help="Every artifact of the job.")


@command("download", _download_args)
def download(args: argparse.Namespace) -> int:
    """Download artifacts; each one's size and sha256 is checked against the job's listing."""
    client = _client(args)
    listing = _calling(lambda: client.artifacts(args.job_id))
    if args.name:
        names = [args.name]
    elif args.all_files:
        names = [a["name"] for a in listing]
    else:
        names = [a["name"] for a in listing if a["name"].endswith(".compressed.safetensors")]
    if not names:
        raise Refused(HydraError("not_found", f"job {args.job_id} has no artifacts to download yet", "name"))
    sizes = {a["name"]: a for a in listing}
    if len(names) > 1:
        args.out.mkdir(parents=True, exist_ok=True)
    for item in names:
        path = _calling(functools.partial(client.download, args.job_id, item, args.out))
        info = sizes.get(item, {})
        print(f"{path}  {info.get('size', path.stat().st_size)} bytes  sha256 {info.get('sha256', '')} ok")
    return EXIT_OK


def _cancel_args(parser: argparse.ArgumentParser) -> None:
    _job_id(parser)
    parser.add_argument("--wait", action="store_true", help="Wait until the job has stopped.")


@command("cancel", _cancel_args)
def cancel(args: argparse.Namespace) -> int:
    """Cancel a job: a queued one at once, a running one at its next batch."""
    client = _client(args)
    row = _calling(lambda: client.cancel(args.job_id))
    if args.wait and row["status"] not in FINAL_STATUSES:
        row = _calling(lambda: client.wait(args.job_id))
    note = " (stops at its next batch)" if row["status"] == "running" else ""
    print(f"{args.job_id}  {row['status']}{note}")
    return EXIT_OK


def _delete_args(parser: argparse.ArgumentParser) -> None:
    _job_id(parser)
    parser.add_argument("--artifact", default=None, help="Delete only this artifact.")


@command("delete", _delete_args)
def delete(args: argparse.Namespace) -> int:
    """Delete a stopped job with its artifacts and checkpoint (or one artifact); cancel a live job first."""
    client = _client(args)
    if args.artifact:
        _calling(lambda: client.delete_artifact(args.job_id, args.artifact))
        print(f"{args.job_id}  artifact {args.artifact} deleted")
    else:
        _calling(lambda: client.delete_job(args.job_id))
        print(f"{args.job_id}  deleted")
    return EXIT_OK


def _upload_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="safetensors / torch state dict, or an .onnx network")
    parser.add_argument(
        "--arch", default="onnx", help="Catalogue architecture of a weights file (default: the file is ONNX)."
    )
    parser.add_argument("--kwargs", default="{}", help="JSON object of architecture arguments (weights files).")
    parser.add_argument("--name", default=None, help="A name for the upload (default: the file name).")
    _connection(parser)


@command("upload-model", _upload_model_args)
def upload_model(args: argparse.Namespace) -> int:
    """Upload a network; prints its reference (model:<id>) for model.onnx or model.checkpoint."""
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise Refused(HydraError("invalid_kwargs", f"--kwargs is not JSON: {exc.msg}", "kwargs")) from None
    if not isinstance(kwargs, dict):
        raise Refused(HydraError("invalid_kwargs", "--kwargs must be a JSON object", "kwargs"))
    client = _client(args)
    row = _calling(lambda: client.upload_model(args.file, args.arch, kwargs or None, name=args.name))
    field = "model.onnx" if args.arch == "onnx" else "model.checkpoint"
    print(row.get("ref") or row.get("id"), flush=True)
    print(f"use it in a spec as {field}", file=sys.stderr)
    return EXIT_OK


def _upload_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="an .npz, or a .zip / .tar of class folders")
    parser.add_argument("--image-size", type=int, default=None, help="Archives: resize and centre-crop to N x N.")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None, help="Archives: 1 (grey) or 3 (RGB).")
    parser.add_argument("--num-classes", type=int, default=None, help="Declared number of classes (checked).")
    parser.add_argument("--name", default=None, help="A name for the upload (default: the file name).")
    _connection(parser)


@command("upload-dataset", _upload_dataset_args)
def upload_dataset(args: argparse.Namespace) -> int:
    """Upload a dataset; prints its reference (dataset:<id>) for dataset.path (with dataset.name: npz)."""
    client = _client(args)
    row = _calling(
        lambda: client.upload_dataset(
            args.file,
            name=args.name,
            num_classes=args.num_classes,
            image_size=args.image_size,
            channels=args.channels,
        )
    )
    print(row.get("ref") or row.get("id"), flush=True)
    print("use it in a spec as dataset.path, with dataset.name: npz", file=sys.stderr)
    return EXIT_OK


# ----------------------------------------------------------------------------- the parser
class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (``PROG: error: ... (see PROG --help)``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = "hydra-client") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="Use a HYDRA compression service: submit, follow, download.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for cmd in COMMANDS:
        cmd.arguments(sub.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: list[str] | None = None, prog: str = "hydra-client") -> int:
    """Run one command; its exit status (see the module's docstring)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error (2, its line already printed)
        return done.code if isinstance(done.code, int) else EXIT_REFUSED
    if args.command is None:
        parser.print_help()
        return EXIT_REFUSED
    run = next(cmd.run for cmd in COMMANDS if cmd.name == args.command)
    try:
        return run(args)
    except Refused as refused:
        print(error_line(refused.err), file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


app = main  # the console script of installs made before the argparse rewrite names ``hydra_client.cli:app``

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
