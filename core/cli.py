"""``hydra-compress``: run a job spec locally, with no service at all.

hydra-compress run examples/demo_mnist5k.yaml --out runs/demo
hydra-compress run examples/demo_mnist5k.yaml --out runs/demo --resume
hydra-compress run examples/demo_mnist5k.yaml --out runs/demo --force   # overwrite a finished run
hydra-compress catalogue
hydra-compress inspect runs/demo/hydra_k0.01.compressed.safetensors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any, NoReturn

import typer
from tqdm import tqdm

from core.callbacks import RunCallbacks
from core.errors import CoreError, RunCanceled, with_field
from core.vocab import REPORT_JSON, REPORT_MD

app = typer.Typer(add_completion=False, help="Robust network compression with HYDRA.", no_args_is_help=True)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ConsoleCallbacks(RunCallbacks):
    """One line per stage, epoch and evaluation; on a terminal also a tqdm bar per epoch.

    Lines go to ``out`` (default: stdout), the bar to ``bar_out`` (default: stderr). The bar is drawn
    only when ``bar_out`` is a terminal (``bars=None``; ``True``/``False`` force it): in a pipe or a log
    file the redraws would flood it, so there it is only the lines, one per epoch and per stage."""

    def __init__(self, out: IO[str] | None = None, bar_out: IO[str] | None = None, bars: bool | None = None) -> None:
        self._out = out
        self._bar_out = bar_out
        self._bars = bars
        self.bar: tqdm | None = None
        self.key: tuple[str, str | None, int] | None = None

    @property
    def out(self) -> IO[str]:
        return self._out or sys.stdout  # looked up late: a test runner may swap sys.stdout

    @property
    def bar_out(self) -> IO[str]:
        return self._bar_out or sys.stderr

    @property
    def bars(self) -> bool:
        return _is_terminal(self.bar_out) if self._bars is None else self._bars

    def write(self, line: str) -> None:
        if self.bar is not None:
            tqdm.write(line, file=self.out)  # clears and redraws the bar around the line
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def on_progress(
        self, *, stage: str, variant: str | None, epoch: int, epochs: int, fraction: float, metrics: dict[str, float]
    ) -> None:
        if not self.bars:
            return  # off a terminal: the epoch's line says it all
        key = (stage, variant, epoch)
        if key != self.key:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(
                desc=f"{stage:8s} {variant or '':14s} {epoch}/{epochs}", unit="batch", leave=False, file=self.bar_out
            )
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
            self.write(
                f"{payload['stage']:8s} {payload['variant']:14s} epoch {payload['epoch']:>3}/{payload['epochs']:<3} "
                + " ".join(f"{k}={v:.4f}" for k, v in m.items())
            )
        elif kind == "evaluation_finished":
            self.write(
                f"evaluate {payload['variant']:14s} " + " ".join(f"{k}={v:.4f}" for k, v in payload["metrics"].items())
            )
        elif kind == "stage_started":
            epochs = payload.get("epochs") or 0
            self.write(f"-- {payload['stage']} {payload['variant']}" + (f" ({epochs} epochs)" if epochs else ""))


def _fail(err: CoreError) -> NoReturn:
    """One line, ``error [code] field: message``, on stderr; exit status 2 (bad input, not a crash)."""
    typer.echo(f"error [{err.code}] {with_field(err.field, err.message)}", err=True)
    raise typer.Exit(code=2)


FINISHED_MARKER = REPORT_JSON  # written last by run_job: its presence means the run finished


def _check_out_dir(out: Path, resume: bool, force: bool) -> None:
    """A finished run is not overwritten by accident: it needs ``--force`` (``--resume`` of a finished
    run only re-reads it, as before)."""
    if resume or not (out / FINISHED_MARKER).exists():
        return
    if not force:
        raise CoreError(
            "run_exists",
            "--out",
            f"{out} holds a finished run ({FINISHED_MARKER}); pass --force to overwrite it, "
            "--resume to keep it, or choose another folder",
        )
    for name in (FINISHED_MARKER, REPORT_MD):  # a forced rerun that fails must not leave the old report
        (out / name).unlink(missing_ok=True)


@app.command()
def run(
    spec_path: Path = typer.Argument(..., help="Job spec, YAML or JSON."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (artifacts, checkpoint, reports)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished run in the run folder."),
    device: str | None = typer.Option(None, help="Override the spec's device (auto, cpu, cuda, cuda:N)."),
) -> None:
    """Run a job spec: pretrain, prune, finetune, evaluate, export."""
    from core.pipeline.preflight import check_host, preflight, shape_error
    from core.pipeline.report import summary_text
    from core.pipeline.runner import run_job
    from core.spec import load_spec

    try:
        spec = load_spec(spec_path)
        if device:  # validated like the spec's own field
            spec = load_spec({**spec.model_dump(mode="json"), "device": device})
        _check_out_dir(out, resume, force)
        check_host(spec)  # the device and the data-loading processes this machine has
        skipped = preflight(spec)  # the network must take the dataset's inputs: refuse before training
        if skipped:
            typer.echo(f"note: input shape not checked before the run: {skipped}", err=True)
        report = run_job(spec, out, ConsoleCallbacks(), resume=resume)
    except CoreError as err:
        _fail(err)
    except (RuntimeError, ValueError, AssertionError) as exc:
        shape = shape_error(exc)  # a network that does not fit data whose shape was unknown up front
        if shape is None:
            raise
        _fail(shape)
    except RunCanceled as exc:
        typer.echo(f"stopped: {exc}; resume with --resume", err=True)
        raise typer.Exit(code=3) from None
    except KeyboardInterrupt:
        typer.echo("\ninterrupted; the last epoch checkpoint stands: rerun with --resume", err=True)
        raise typer.Exit(code=130) from None
    typer.echo(summary_text(report))  # the table and the checks; report.md has the rest
    typer.echo(f"artifacts and report in {out}")


@app.command()
def catalogue() -> None:
    """List architectures, datasets and objectives with their defaults."""
    from core.data.datasets import dataset_catalogue
    from core.models.zoo import list_models
    from core.pruning.methods import METHODS
    from core.spec import OBJECTIVE_TYPES, EvaluationSpec, PruningSpec

    data = {
        "architectures": list_models(),
        "datasets": dataset_catalogue(),
        "objectives": {name: cls().model_dump() for name, cls in OBJECTIVE_TYPES.items()},
        "pruning_methods": {name: method.description for name, method in METHODS.items()},
        # every pruning setting (allocation, granularity and their hyper-parameters) with its default
        "pruning": {
            name: {"default": field.get_default(call_default_factory=True), "description": field.description}
            for name, field in PruningSpec.model_fields.items()
        },
        # every evaluation setting the pipeline reads, with its default and what it means
        "evaluation": {
            name: {"default": field.get_default(call_default_factory=True), "description": field.description}
            for name, field in EvaluationSpec.model_fields.items()
        },
        # pgd and trades: eps and step_size left out take the default of the chosen norm
        "objective_defaults_by_norm": {
            name: cls.defaults_by_norm() for name, cls in OBJECTIVE_TYPES.items() if hasattr(cls, "defaults_by_norm")
        },
    }
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


@app.command()
def inspect(artifact: Path) -> None:
    """Load a compressed artifact and print its metadata and measured sparsity."""
    from core.io.export import load_compressed

    try:
        state, meta = load_compressed(artifact)
    except CoreError as err:
        _fail(err)
    n = sum(t.numel() for t in state.values())
    nnz = sum(int(t.count_nonzero()) for t in state.values())
    typer.echo(
        json.dumps({"metadata": meta, "tensors": len(state), "params": n, "nonzero": nnz}, indent=2, default=str)
    )


if __name__ == "__main__":
    app()
