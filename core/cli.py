"""``hydra-compress``: run a job spec locally, with no service at all.

    hydra-compress run examples/demo_mnist5k.yaml --out runs/demo
    hydra-compress run examples/demo_mnist5k.yaml --out runs/demo --resume
    hydra-compress catalogue
    hydra-compress inspect runs/demo/hydra_k0.01.compressed.safetensors
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from tqdm import tqdm

from core.callbacks import RunCallbacks
from core.errors import CoreError, RunCanceled

app = typer.Typer(add_completion=False, help="Robust network compression with HYDRA.", no_args_is_help=True)


class ConsoleCallbacks(RunCallbacks):
    """A tqdm bar per stage and one metrics line per epoch."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.key: tuple[str, str | None, int] | None = None

    def on_progress(self, *, stage: str, variant: str | None, epoch: int, epochs: int, fraction: float,
                    metrics: dict[str, float]) -> None:
        key = (stage, variant, epoch)
        if key != self.key:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(desc=f"{stage:8s} {variant or '':14s} {epoch}/{epochs}", unit="batch", leave=False)
            self.key = key
        assert self.bar is not None
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['train_acc']:.3f}")

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if self.bar is not None and kind in ("epoch_finished", "evaluation_finished"):
            self.bar.close()
            self.bar = None
            self.key = None
        if kind == "epoch_finished":
            m = payload["metrics"]
            tqdm.write(
                f"{payload['stage']:8s} {payload['variant']:14s} epoch {payload['epoch']:>3}/{payload['epochs']:<3} "
                + " ".join(f"{k}={v:.4f}" for k, v in m.items())
            )
        elif kind == "evaluation_finished":
            tqdm.write(
                f"evaluate {payload['variant']:14s} " + " ".join(f"{k}={v:.4f}" for k, v in payload["metrics"].items())
            )
        elif kind == "stage_started":
            tqdm.write(f"-- {payload['stage']} {payload['variant']} ({payload['epochs']} epochs)")


def _fail(err: CoreError) -> None:
    typer.echo(f"error [{err.code}] {err.field or ''}: {err.message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    spec_path: Path = typer.Argument(..., help="Job spec, YAML or JSON."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (artifacts, checkpoint, reports)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    device: Optional[str] = typer.Option(None, help="Override the spec's device (auto, cpu, cuda, cuda:N)."),
) -> None:
    """Run a job spec: pretrain, prune, finetune, evaluate, export."""
    from core.report import render_markdown
    from core.run import run_job
    from core.spec import load_spec

    try:
        spec = load_spec(spec_path)
        if device:
            spec = spec.model_copy(update={"device": device})
        report = run_job(spec, out, ConsoleCallbacks(), resume=resume)
    except CoreError as err:
        _fail(err)
    except RunCanceled as exc:
        typer.echo(f"stopped: {exc}; resume with --resume", err=True)
        raise typer.Exit(code=3)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted; the last epoch checkpoint stands: rerun with --resume", err=True)
        raise typer.Exit(code=130)
    typer.echo(render_markdown(report).split("## How")[0])
    typer.echo(f"artifacts and report in {out}")


@app.command()
def catalogue() -> None:
    """List architectures, datasets and objectives with their defaults."""
    from core.data import dataset_catalogue
    from core.models import list_models
    from core.spec import OBJECTIVE_TYPES

    data = {
        "architectures": list_models(),
        "datasets": dataset_catalogue(),
        "objectives": {name: cls().model_dump() for name, cls in OBJECTIVE_TYPES.items()},
    }
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


@app.command()
def inspect(artifact: Path) -> None:
    """Load a compressed artifact and print its metadata and measured sparsity."""
    from core.export import load_compressed

    try:
        state, meta = load_compressed(artifact)
    except CoreError as err:
        _fail(err)
    n = sum(t.numel() for t in state.values())
    nnz = sum(int(t.count_nonzero()) for t in state.values())
    typer.echo(json.dumps({"metadata": meta, "tensors": len(state), "params": n, "nonzero": nnz}, indent=2, default=str))


if __name__ == "__main__":
    app()
