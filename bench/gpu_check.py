"""One short check of the CUDA paths and their figures, for a session that is lent a GPU (one call of the
device tool's ``run``: at most 8 minutes on an H100), writing ``gpu_check.json`` and ``gpu_check.md``
(a table of every check and figure, with the card's name and driver) to ``--out`` (``$OUT`` there).

    python bench/gpu_check.py --out "$OUT"                                  # on the GPU machine
    python bench/gpu_check.py --device cpu --quick --out /tmp/gpu_check     # here, in a minute or two

Through the device tool: ``run`` with ``python bench/gpu_check.py --out "$OUT"`` (the project's Python
environment on that machine) and ``timeout_s`` 540: the checks start within ``--budget-s`` (420 s), the
throughput runs are limited per architecture (``--throughput-timeout-s``), so it ends in about 8 minutes
at most, and what it wrote comes back even if the limit cuts it off.

Each check is ok, failed (with its error; the others still run) or skipped (with why), with its seconds
and figures; the files are rewritten after every check, so a run cut off by its time limit still brings
back what it did. A check that would start past ``--budget-s`` is skipped.

* ``environment`` — torch, CUDA, the card (``torch.cuda.get_device_name``), its driver (``nvidia-smi``),
  the GPU count, bf16 support.
* ``precision`` — a training step (``core.pipeline.training.train_step``) under bf16 autocast and under
  fp16 with its ``GradScaler`` (``core.pipeline.resources.Precision``): finite loss, the scale; on the CPU
  fp16 must be refused (``unsupported_precision``).
* ``channels_last`` — on by default for a conv network on CUDA, the weights channels-last after
  ``to_memory_format``, a forward equal to the contiguous one.
* ``compile`` — ``CompiledForward``: compiles (seconds), agrees with eager, no fallback.
* ``device_data`` — ``Execution.prepare`` puts an in-memory training set on CUDA once; its batches are
  the loader's.
* ``sync_bn`` — refused for one GPU (``resources.sync_bn``), accepted for ``gpus: N > 1``.
* ``nccl`` — with several GPUs, a job with ``gpus`` = their number (NCCL, SyncBatchNorm), else skipped.
* ``throughput`` — ``bench/gpu_throughput.py`` at small settings (its own figures, in a subprocess).
* ``demo_job`` — the demo spec (examples/demo_mnist5k.yaml) with one epoch per stage on a small sample.
* ``cifar_job`` — a CIFAR-shaped synthetic job (random 32x32x3 images in an npz, ``cnn_small_cifar``)
  under bf16, channels-last and compile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.errors import CoreError  # noqa: E402
from core.pipeline.resources import (  # noqa: E402
    CompiledForward,
    Precision,
    input_format,
    to_memory_format,
    uses_channels_last,
)
from core.spec import load_spec  # noqa: E402


class Skip(Exception):
    """A check that does not apply here (says why)."""


def _small_cnn(channels: int = 3, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, classes),
    )


def _batch(device: torch.device, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ checks
def check_environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        out["card"] = torch.cuda.get_device_name(device)
        props = torch.cuda.get_device_properties(device)
        out["memory_gib"] = round(props.total_memory / 2**30, 1)
        out["capability"] = f"{props.major}.{props.minor}"
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
        out["driver"] = _driver()
    else:
        out["card"] = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return out


def _driver() -> str:
    try:
        got = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return got.stdout.strip().splitlines()[0] if got.returncode == 0 and got.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


def check_precision(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    from core.objectives.natural import NaturalTraining
    from core.pipeline.training import train_step

    out: dict[str, Any] = {}
    x, y = _batch(device)
    for name in ("fp32", "bf16", "fp16"):
        try:
            precision = Precision(name, device)
        except CoreError as exc:
            if device.type == "cuda" or name != "fp16":
                raise
            out["fp16_refused_on_cpu"] = exc.code == "unsupported_precision"
            if not out["fp16_refused_on_cpu"]:
                raise AssertionError(f"fp16 on the CPU refused with {exc.code}, not unsupported_precision") from exc
            continue
        model = _small_cnn().to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        objective = NaturalTraining(NaturalTraining.Spec())
        losses = []
        for _ in range(3):
            loss, _logits = train_step(model, objective, opt, x, y, precision=precision)
            losses.append(float(loss))
        if not all(np.isfinite(losses)):
            raise AssertionError(f"{name}: a non-finite loss {losses}")
        out[f"{name}_loss"] = round(losses[-1], 5)
        if precision.scaler is not None:
            out["fp16_grad_scale"] = float(precision.scaler.get_scale())
    return out


def check_channels_last(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    model = _small_cnn().to(device).eval()
    default = uses_channels_last(model, device, None)
    if device.type == "cuda" and not default:
        raise AssertionError("channels-last is not the default for a conv network on CUDA")
    x, _ = _batch(device)
    with torch.no_grad():
        ref = model(x)
        to_memory_format(model, True)
        weight = model[0].weight
        cl = weight.is_contiguous(memory_format=torch.channels_last)
        got = model(input_format(x, True))
    if not cl:
        raise AssertionError("the conv weight is not channels-last after to_memory_format")
    diff = float((got - ref).abs().max())
    if diff > 1e-3:
        raise AssertionError(f"channels-last forward differs by {diff}")
    return {"default_on_this_device": default, "max_abs_diff": diff}


def check_compile(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    model = _small_cnn().to(device).eval()
    fallbacks: list[str] = []
    compiled = CompiledForward(model, fallbacks.append)
    x, _ = _batch(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        got = compiled(x)
    _sync(device)
    first = time.perf_counter() - t0
    with torch.no_grad():
        ref = model(x)
    if fallbacks:
        raise AssertionError(f"torch.compile fell back to eager: {fallbacks[0]}")
    diff = float((got - ref).abs().max())
    if diff > 1e-3:
        raise AssertionError(f"compiled forward differs by {diff}")
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(5):
            compiled(x)
    _sync(device)
    return {"compile_s": round(first, 2), "compiled_forward_ms": round((time.perf_counter() - t0) / 5 * 1e3, 3)}


def check_device_data(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    from core.data.datasets import TensorImageDataset, train_loader
    from core.pipeline.execution import Execution
    from core.pipeline.resources import World

    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(96) % 10
    ds = TensorImageDataset(images, labels)
    spec = load_spec(_spec_data(device, {"batch_size": 32}))
    execution = Execution(spec, World())
    execution.prepare(_small_cnn(), ds)
    on_device = execution.device_data is not None
    if device.type == "cuda" and not on_device:
        raise AssertionError("the in-memory training set was not put on the GPU")
    if on_device:
        assert execution.device_data is not None
        if execution.device_data[0].device.type != "cuda":
            raise AssertionError("device_data is not on CUDA")
    got = [(xb.cpu(), yb.cpu()) for xb, yb in execution.loader(seed=1, epoch=0)]
    want = list(train_loader(ds, 32, 1, 0))
    same = len(got) == len(want) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))
    if not same:
        raise AssertionError("the device-resident batches differ from the loader's")
    return {"device_resident": on_device, "batches": len(got)}


def check_sync_bn(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Validation only (``device: auto``: what the spec accepts does not depend on this machine)."""
    auto = torch.device("cuda")  # _spec_data writes device.type; "auto" below
    for refused in ({"gpus": 1, "sync_bn": True}, {"processes": 2, "sync_bn": True}):
        data = {**_spec_data(auto, {"batch_size": 32}, refused), "device": "auto"}
        try:
            load_spec(data)
        except CoreError as exc:
            if exc.field != "resources.sync_bn":
                raise AssertionError(f"{refused} refused on {exc.field}, not resources.sync_bn") from exc
        else:
            raise AssertionError(f"{refused} was accepted")
    accepted = load_spec({**_spec_data(auto, {"batch_size": 32}, {"gpus": 2, "sync_bn": True}), "device": "auto"})
    return {"refused_for_one_gpu_and_cpu_ranks": True, "accepted_for_2_gpus": accepted.resources.sync_bn}


def check_nccl(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if count < 2:
        raise Skip(f"{count} GPU(s): NCCL needs at least 2")
    data = _cifar_job_data(device, Path(args.work), args.quick)
    data["resources"] = {"gpus": count, "sync_bn": True, "precision": "bf16"}
    data["model"] = {"arch": "resnet18"}  # has BatchNorm: SyncBatchNorm converts it
    data["dataset"]["batch_size"] = 32 * count
    return _run(data, Path(args.work) / "nccl")


def check_throughput(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """One ``gpu_throughput.py`` subprocess per architecture, each with its own time limit, so a slow
    compile of the larger one still leaves the smaller one's figures."""
    if args.quick:
        archs, settings = ["cnn_small_cifar"], ["--configs", "fp32,bf16_cl", "--batch", "8", "--steps", "1"]
        settings += ["--attack-steps", "1"]
    else:
        archs, settings = ["cnn_small_cifar", "resnet18"], ["--batch", "128", "--steps", "5", "--attack-steps", "3"]
    flat: dict[str, Any] = {}
    errors = []
    for arch in archs:
        cmd = [sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--device", device.type, "--json"]
        cmd += ["--archs", arch, *settings]
        flat[f"{arch}.command"] = " ".join(cmd[1:])
        try:
            got = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=args.throughput_timeout_s,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        except subprocess.TimeoutExpired:
            errors.append(f"{arch}: past {args.throughput_timeout_s:g} s")
            continue
        if got.returncode != 0:
            errors.append(f"{arch}: exited {got.returncode}: {got.stderr.strip()[-1000:]}")
            continue
        figures = json.loads(got.stdout.strip().splitlines()[-1])
        for config, values in figures["archs"][arch].items():
            for key in ("lean_img_s", "pretrain_img_s", "prune_img_s", "speedup_vs_fp32", "warmup_s"):
                if key in values:
                    flat[f"{arch}.{config}.{key}"] = values[key]
            if values.get("compile_fallbacks"):
                flat[f"{arch}.{config}.compile_fallbacks"] = values["compile_fallbacks"]
    if errors:
        raise AssertionError("; ".join(errors) + f" (figures so far: {json.dumps(flat)})")
    return flat


def _spec_data(
    device: torch.device, dataset: dict[str, Any] | None = None, resources: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "seed": 0,
        "device": device.type,
        "model": {"arch": "cnn_small_mnist"},
        "dataset": {"name": "mnist5k", **(dataset or {})},
        "objective": {"type": "natural"},
        "pruning": {"methods": ["hydra"], "k": [0.1]},
        "resources": resources or {},
    }


def check_demo_job(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load((ROOT / "examples" / "demo_mnist5k.yaml").read_text())
    data["device"] = device.type
    data["stages"] = {
        "pretrain": {"epochs": 1, "lr": 0.05},
        "prune": {"epochs": 1, "lr": 0.1},
        "finetune": {"epochs": 1, "lr": 0.01},
    }
    small = 256 if args.quick else 2048
    data["dataset"].update({"max_train_samples": small, "max_test_samples": small // 4})
    data["evaluation"].update(
        {"val_max_samples": 32, "max_samples": small // 4, "autoattack_max_samples": 16 if args.quick else 64}
    )
    data["evaluation"]["autoattack"] = not args.quick
    if args.quick:
        data["objective"]["steps"] = 2
        data["evaluation"].update({"pgd_steps": 2, "val_pgd_steps": 1})
        data["export"] = {"formats": ["compressed"]}
    return _run(data, Path(args.work) / "demo")


def _cifar_job_data(device: torch.device, work: Path, quick: bool) -> dict[str, Any]:
    n = 192 if quick else 2048
    g = np.random.default_rng(0)
    path = work / "cifar_shaped.npz"
    labels = np.arange(n) % 10
    np.savez(path, images=g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=labels.astype(np.int64))
    return {
        "seed": 0,
        "device": device.type,
        "model": {"arch": "cnn_small_cifar"},
        "dataset": {"name": "npz", "path": str(path), "batch_size": 32 if quick else 128, "test_fraction": 0.25},
        "objective": {"type": "pgd", "eps": 8 / 255, "step_size": 2 / 255, "steps": 2 if quick else 5},
        "pruning": {"methods": ["hydra"], "k": [0.1]},
        "stages": {
            "pretrain": {"epochs": 1, "lr": 0.05},
            "prune": {"epochs": 1, "lr": 0.1},
            "finetune": {"epochs": 1, "lr": 0.01},
        },
        "evaluation": {
            "pgd_steps": 2 if quick else 10,
            "val_pgd_steps": 1,
            "val_max_samples": 32,
            "max_samples": 48 if quick else 256,
            "autoattack": False,
            "measure_latency": not quick,
        },
        "export": {"formats": ["compressed"]},
    }


def check_cifar_job(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    data = _cifar_job_data(device, Path(args.work), args.quick)
    data["resources"] = {"precision": "bf16", "channels_last": True, "compile": device.type == "cuda" or not args.quick}
    return _run(data, Path(args.work) / "cifar")


def _run(data: dict[str, Any], out: Path) -> dict[str, Any]:
    from core.callbacks import RunCallbacks
    from core.pipeline.runner import run_job

    class Events(RunCallbacks):
        def __init__(self) -> None:
            self.kinds: list[str] = []
            self.fallbacks: list[str] = []

        def on_event(self, kind: str, payload: dict[str, Any]) -> None:
            self.kinds.append(kind)
            if kind == "compile_fallback":
                self.fallbacks.append(str(payload.get("error")))

    events = Events()
    t0 = time.perf_counter()
    report = run_job(load_spec(data), out, events)
    wall = time.perf_counter() - t0
    figures: dict[str, Any] = {"wall_s": round(wall, 1), "resources": report.get("resources", {})}
    if events.fallbacks:
        figures["compile_fallbacks"] = events.fallbacks
    for variant, result in report.get("variants", {}).items():
        metrics = result.get("metrics", {})
        for key in ("benign_acc", "robust_acc"):
            if key in metrics:
                figures[f"{variant}.{key}"] = round(float(metrics[key]), 4)
        stages = result.get("timings", {}).get("stages", {})
        for stage, seconds in stages.items():
            figures[f"{variant}.{stage}_s"] = round(float(seconds), 2)
    return figures


CHECKS: dict[str, Callable[[torch.device, argparse.Namespace], dict[str, Any]]] = {
    "environment": check_environment,
    "precision": check_precision,
    "channels_last": check_channels_last,
    "compile": check_compile,
    "device_data": check_device_data,
    "sync_bn": check_sync_bn,
    "nccl": check_nccl,
    "throughput": check_throughput,
    "demo_job": check_demo_job,
    "cifar_job": check_cifar_job,
}


# ------------------------------------------------------------------------------------------ output
def markdown(result: dict[str, Any]) -> str:
    env = result["checks"].get("environment", {}).get("figures", {})
    lines = [
        "# GPU check",
        "",
        f"Card: **{env.get('card', '?')}**, driver {env.get('driver', 'n/a')}, torch {env.get('torch', '?')}, "
        f"CUDA {env.get('cuda', 'n/a')}, {env.get('gpus', 0)} GPU(s). Started {result['started']}; "
        f"{result['wall_s']} s in all.",
        "",
        "| check | status | seconds | figure | value |",
        "|---|---|---:|---|---|",
    ]
    for name, check in result["checks"].items():
        figures = check.get("figures") or {}
        first = True
        detail = check.get("error") or check.get("why") or ""
        if not figures:
            lines.append(f"| {name} | {check['status']} | {check['seconds']} | {_cell(detail)} | |")
            continue
        for key, value in figures.items():
            head = f"| {name} | {check['status']} | {check['seconds']} |" if first else "| | | |"
            lines.append(f"{head} {key} | {_cell(value)} |")
            first = False
        if detail:
            lines.append(f"| | | | error | {_cell(detail)} |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def _write(out: Path, result: dict[str, Any]) -> None:
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(result))


@contextlib.contextmanager
def _timed(record: dict[str, Any]) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record["seconds"] = round(time.perf_counter() - t0, 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for the JSON and markdown"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (the CPU test of this script)")
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma-separated subset, in this order")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip a check that would start after this")
    parser.add_argument("--throughput-timeout-s", type=float, default=150.0, help="per architecture")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    unknown = [c for c in args.checks.split(",") if c not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available (use --device cpu for the CPU mode)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = tempfile.mkdtemp(prefix="hydra-gpu-check-")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:] if argv is None else argv,
        "device": args.device,
        "quick": args.quick,
        "checks": {},
        "wall_s": 0.0,
    }
    for name in args.checks.split(","):
        record: dict[str, Any] = {"status": "ok", "seconds": 0.0}
        result["checks"][name] = record
        if time.perf_counter() - started > args.budget_s:
            record.update(status="skipped", why=f"past the budget of {args.budget_s:g} s")
        else:
            with _timed(record):
                try:
                    record["figures"] = CHECKS[name](device, args)
                except Skip as exc:
                    record.update(status="skipped", why=str(exc))
                except Exception as exc:  # noqa: BLE001 - every check reports; the others still run
                    record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                    record["traceback"] = traceback.format_exc()[-3000:]
        result["wall_s"] = round(time.perf_counter() - started, 1)
        print(
            f"{name}: {record['status']} ({record['seconds']} s) {record.get('error') or record.get('why') or ''}",
            flush=True,
        )
        _write(out, result)
    failed = [n for n, c in result["checks"].items() if c["status"] == "failed"]
    result["ok"] = not failed
    _write(out, result)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}; failed: {failed or 'none'}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main().get("ok") else 1)
