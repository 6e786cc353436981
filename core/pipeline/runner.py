"""Run a job spec: pretrain → (per variant) prune → finetune → export → evaluate, then the reports.

The plan (``core.pipeline.plan``) is a list of steps. After every epoch and every finished step one
checkpoint (``core.vocab.CHECKPOINT_NAME``) is written atomically with everything needed to continue
bit-for-bit: the model with scores and masks, the optimizer, the RNG states, the cursor (step,
epoch) and the results so far. The learning rate is a pure function of the iteration (no scheduler
object to save), and the data order a pure function of (seed, epoch). See docs/ARCHITECTURE.md.

Pruning is a variant's ``core.pruning.pruner.Pruner``, which the registry builds for the spec's
(method, allocation, granularity) (``core.pruning.methods.build_pruner``); this module knows no method
by name. It calls the pruner at job start (``check_supported``), at variant entry (``enter``), as the
prune step's hook (``core.pipeline.training.train_step``), at the end of the prune stage (``finish``) and
in the checkpoint (``state_dict``). The files, the evaluated network and the inference costs come from
``core.pipeline.exporting``.

The core/worker seam: ``run_job`` takes the user's spec exactly as written (it is what ``spec.json``,
the report and the resume check see) and, separately, :class:`RunInputs`: the local files standing
for the spec's references (a worker downloads ``model:<id>`` / ``dataset:<id>`` uploads and passes
their paths). Nothing of the spec is rewritten or ignored for the worker's sake.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.callbacks import RunCallbacks
from core.certify.bounds import check_supported
from core.data.datasets import build_datasets
from core.errors import CoreError, ResumeMismatch, RunCanceled
from core.io import checkpoint as ckpt
from core.io.weights import load_weights
from core.models.onnx_import import ImportedNetwork
from core.models.onnx_network import check_fits_dataset, create_onnx_model, load_onnx
from core.models.zoo import create_model
from core.objectives import Objective, build_objective, objective_class
from core.pipeline.evaluate import evaluate_variant, validate
from core.pipeline.execution import Execution
from core.pipeline.exporting import example_batch, export_variant, inference_cost, layer_rates, rng_kept
from core.pipeline.plan import Step, differing_fields, job_seeds, plan_steps
from core.pipeline.resources import (
    COMPILE_FALLBACK,
    Precision,
    World,
    to_memory_format,
)
from core.pipeline.training import lr_at, make_optimizer
from core.pruning.masked import (
    convert_to_masked,
    refresh_masks,  # noqa: F401  (tests/test_run.py spies on this name)
    set_stage,
)
from core.pruning.methods import build_pruner, pruner_class
from core.pruning.pruner import Pruner
from core.spec import JobSpec, StageSpec
from core.vocab import (
    CHECKPOINT_NAME,
    EPOCH_FINISHED,
    EVALUATION_FINISHED,
    RUN_FINISHED,
    SPEC_NAME,
    STAGE_FINISHED,
    STAGE_STARTED,
    card_name,
    dense_name,
)

CHECKPOINT_FORMAT = "hydra-compress-checkpoint/1"
# resources fields that say how a job runs, not what it computes: a checkpoint resumes under other values
# (one process -> two ranks and back, compile on or off); precision and sync_bn change the numbers.
EXECUTION_FIELDS = ("resources.processes", "resources.gpus", "resources.compile", "resources.channels_last")


@dataclass(frozen=True)
class RunInputs:
    """The local files behind the spec's references; None = the spec's own value is a local path."""

    model_checkpoint: str | Path | None = None
    dataset_path: str | Path | None = None
    model_onnx: str | Path | None = None  # the .onnx file behind model.onnx

    @classmethod
    def from_spec(cls, spec: JobSpec) -> RunInputs:
        return cls(spec.model.checkpoint, spec.dataset.path, spec.model.onnx)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CoreError("device_unavailable", "device", f"{requested} requested but CUDA is not available")
    return torch.device(requested)


def build_network(spec: JobSpec, info: dict[str, Any], source: ImportedNetwork | None = None) -> nn.Module:
    """The job's network with masked layers: the catalogue's ``model.arch``, or ``source`` (the graph
    imported from ``model.onnx``, with its trained weights)."""
    kwargs = dict(spec.model.kwargs)
    kwargs.setdefault("num_classes", info["num_classes"])
    if spec.model.onnx is not None:
        if source is None:
            raise CoreError("missing_onnx", "model.onnx", "the ONNX network was not imported")
        return convert_to_masked(create_onnx_model(source, **kwargs))
    return convert_to_masked(create_model(spec.model.arch, **kwargs))


class _Runner:
    def __init__(
        self, spec: JobSpec, out_dir: Path, callbacks: RunCallbacks, resume: bool, inputs: RunInputs, world: World
    ) -> None:
        self.spec = spec
        self.inputs = inputs
        self.out = out_dir
        self.cb = callbacks
        self.world = world
        self.exec = Execution(spec, world, getattr(callbacks, "group", None))
        self.device = self.exec.device
        self.steps = plan_steps(spec)
        dataset_path = inputs.dataset_path if inputs.dataset_path is not None else spec.dataset.path
        self.train_ds, self.test_ds, self.info = build_datasets(spec.dataset, spec.seed, dataset_path)
        # Seed before the network is built: its initial weights are part of what a seed repeats.
        first_seed = job_seeds(spec)[0]
        torch.manual_seed(first_seed)
        random.seed(first_seed)
        self.source: ImportedNetwork | None = None  # model.onnx, imported (checked, converted, verified)
        if spec.model.onnx is not None:
            self.source = load_onnx(inputs.model_onnx if inputs.model_onnx is not None else spec.model.onnx)
            check_fits_dataset(self.source, self.info.get("input_shape"), self.info["num_classes"])
        self.model = self._build().to(self.device)
        self.exec.prepare(self.model, self.train_ds)
        objectives = {spec.objective.type} | {spec.objective_for(s.kind).type for s in self.steps if s.trains}
        if any(objective_class(name).needs_bounds for name in objectives):
            check_supported(self.model)  # refuse now, naming the layer, not hours into the job
        with rng_kept(self.device):
            self.example = example_batch(self.test_ds, self.device)  # tracing, rebuild and ONNX checks
            p = spec.pruning
            for cls in dict.fromkeys(pruner_class(m, p.allocation, p.granularity) for m in p.methods):
                cls.check_supported(self.model, self.example)  # likewise (channel: on pruning.granularity)
        self.pruner: Pruner | None = None  # the variant's pruner while its prune stage runs
        self.pretrained: dict[str, torch.Tensor] | None = None
        self.results: dict[str, Any] = {}
        # Per variant: each stage's per-epoch training loss and wall seconds (in the checkpoint too).
        self.history: dict[str, dict[str, dict[str, Any]]] = {}
        self.cursor = (0, 0)  # (step index, epochs done within it)
        self.optimizer: torch.optim.Optimizer | None = None
        self._resume_optimizer: dict[str, Any] | None = None
        self.started = time.time()
        self.steps_per_epoch = math.ceil(len(self.train_ds) / spec.dataset.batch_size)  # type: ignore[arg-type]
        self.total_iters = sum(self._stage(s).epochs for s in self.steps if s.trains) * self.steps_per_epoch
        self.done_iters = 0
        path = out_dir / CHECKPOINT_NAME
        if resume and path.exists():
            self._restore(ckpt.load_checkpoint(path))
        else:
            self._load_starting_weights()
            if not any(s.kind == "pretrain" for s in self.steps):
                self.pretrained = self._dense_state()

    # -- state ------------------------------------------------------------------------------
    def _build(self) -> nn.Module:
        """A fresh network of the job (``build_network``; the imported graph when there is one)."""
        if self.source is None:
            return build_network(self.spec, self.info)
        return build_network(self.spec, self.info, self.source)

    def _load_starting_weights(self) -> None:
        source = self.inputs.model_checkpoint
        if source is not None:
            load_weights(source, self.model, self.spec.model.checkpoint_format)

    def _stage(self, step: Step) -> StageSpec:
        stage = getattr(self.spec.stages, step.kind)
        assert stage is not None
        return stage

    def _dense_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}

    def _save(self) -> None:
        if not self.world.main:  # rank 0 alone writes (every rank holds the same state)
            return
        scaler = self.exec.precision.scaler
        state = {
            "format": CHECKPOINT_FORMAT,
            "cursor": list(self.cursor),
            "done_iters": self.done_iters,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "pruning": self.pruner.state_dict() if self.pruner is not None else None,
            "pretrained": self.pretrained,
            "results": json.dumps(self.results),
            "history": json.dumps(self.history),
            "rng": ckpt.capture_rng_state(),
            "spec": self.spec.model_dump_json(),
            "onnx_sha256": self.source.sha256 if self.source is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }
        path = self.out / CHECKPOINT_NAME
        ckpt.save_checkpoint(path, state)
        self.cb.on_checkpoint(path)

    def _restore(self, state: dict[str, Any]) -> None:
        saved_spec = JobSpec.model_validate_json(state["spec"])
        differing = differing_fields(saved_spec.model_dump(mode="json"), self.spec.model_dump(mode="json"))
        differing = [f for f in differing if f not in EXECUTION_FIELDS and f != "resources"]
        if differing:
            raise ResumeMismatch(differing)
        saved_graph = state.get("onnx_sha256")
        if self.source is not None and saved_graph is not None and saved_graph != self.source.sha256:
            raise ResumeMismatch(["model.onnx"], "the ONNX file is not the one the checkpoint was trained from")
        self.cursor = (int(state["cursor"][0]), int(state["cursor"][1]))
        self.done_iters = int(state["done_iters"])
        self.model.load_state_dict(state["model"])
        self.pretrained = state["pretrained"]
        self.results = json.loads(state["results"])
        self.history = json.loads(state.get("history") or "{}")  # absent in checkpoints before report/3
        self._resume_optimizer = state["optimizer"]
        step = self.steps[self.cursor[0]] if self.cursor[0] < len(self.steps) else None
        if step is not None and step.kind == "prune" and self.cursor[1] > 0:  # stopped inside a prune stage
            self.pruner = self._build_pruner(step)
            self.pruner.load_state_dict(state.get("pruning"), self.model)
        if self.exec.precision.scaler is not None and state.get("scaler"):
            self.exec.precision.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng_state(state["rng"])

    # -- steps ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        start_step, start_epoch = self.cursor
        for index in range(start_step, len(self.steps)):
            step = self.steps[index]
            if self.cb.should_cancel():  # between steps too: an evaluation step checks no batches
                raise RunCanceled(f"canceled before the {step.kind} step of {step.variant}")
            first_epoch = start_epoch if index == start_step else 0
            if step.seed_start and first_epoch == 0:
                self._start_seed(step.seed)
            if step.trains:
                self._train(index, step, first_epoch)
            else:
                self._evaluate(index, step)
            self.cursor = (index + 1, 0)
            self.optimizer = None
            self._save()
        if self.cb.should_cancel():  # asked during the last evaluation: the job must not end succeeded
            raise RunCanceled("canceled after the last evaluation, before the reports")
        return self._finish()

    def _start_seed(self, seed: int) -> None:
        """A multi-seed job's next seed: reseed, rebuild the network (fresh initialisation, or the
        uploaded starting weights again), and forget the previous seed's pretrained network."""
        torch.manual_seed(seed)
        random.seed(seed)
        self.model = self._build().to(self.device)
        self._load_starting_weights()
        has_pretrain = any(s.kind == "pretrain" for s in self.steps)
        self.pretrained = None if has_pretrain else self._dense_state()

    def _build_pruner(self, step: Step) -> Pruner:
        assert step.method is not None
        return build_pruner(self.spec.pruning, step.method, step.k, self.model, self.example)

    def _enter_variant(self, step: Step) -> None:
        """Start a variant from the shared pretrained network with its pruner's first mask."""
        assert self.pretrained is not None
        self.model.load_state_dict(self.pretrained)
        pruner = self._build_pruner(step)
        pruner.enter(self.model)
        if step.kind == "prune":
            self.pruner = pruner
        else:  # no prune stage for this variant (a one-shot baseline): the first mask is final
            pruner.finish(self.model)
            self.pruner = None

    def _train(self, index: int, step: Step, first_epoch: int) -> None:
        stage = self._stage(step)
        if first_epoch == 0 and step.kind != "pretrain" and not self._continues_variant(index, step):
            self._enter_variant(step)
        if step.kind == "pretrain":
            self.pretrained = None  # this step makes the pretrained network its variants start from
        set_stage(self.model, step.kind, freeze_bn=self.spec.pruning.freeze_bn)
        label = {"stage": step.kind, "variant": step.variant}
        self.model = self.exec.start_stage(
            self.model, lambda error: self.cb.on_event(COMPILE_FALLBACK, {**label, "error": error})
        )
        pruner = self.pruner if step.kind == "prune" else None
        params = pruner.optimizer_parameters(self.model) if pruner is not None else None
        self.optimizer = make_optimizer(self.model, stage, params)
        if first_epoch > 0 and self._resume_optimizer is not None:
            self.optimizer.load_state_dict(self._resume_optimizer)
        self._resume_optimizer = None
        objective = build_objective(self.spec.objective_for(step.kind))
        total = stage.epochs * self.steps_per_epoch
        self.cb.on_event(STAGE_STARTED, {"stage": step.kind, "variant": step.variant, "epochs": stage.epochs})
        history = self.history.setdefault(step.variant, {"training_loss": {}, "seconds": {}})
        losses = history["training_loss"].setdefault(step.kind, [])
        del losses[first_epoch:]  # epochs after the checkpoint are run again
        started = time.monotonic()
        for epoch in range(first_epoch, stage.epochs):
            metrics = self._train_epoch(step, stage, objective, epoch, total)
            losses.append(metrics["loss"])
            self.exec.end_epoch(self.model, pruner, f"{step.kind} epoch {epoch + 1} of {step.variant}")
            if self.world.main:  # monitoring only: rank 0 validates, the others go on to the next batch
                metrics.update(validate(self.model, self.test_ds, self.spec, self.device))
            self.cursor = (index, epoch + 1)
            self._add_seconds(step.variant, step.kind, started)
            started = time.monotonic()
            self._save()
            payload = {"stage": step.kind, "variant": step.variant, "epoch": epoch + 1, "epochs": stage.epochs}
            self.cb.on_event(EPOCH_FINISHED, {**payload, "metrics": metrics})
        if pruner is not None:  # the masks are final from here on (learned: exact budget)
            pruner.finish(self.model)
            self.pruner = None
        self.model = self.exec.end_stage(self.model)
        seconds = self.history[step.variant]["seconds"].get(step.kind, 0.0)
        self.cb.on_event(STAGE_FINISHED, {"stage": step.kind, "variant": step.variant, "seconds": seconds})

    def _add_seconds(self, variant: str, stage: str, since: float) -> None:
        seconds = self.history.setdefault(variant, {"training_loss": {}, "seconds": {}})["seconds"]
        seconds[stage] = seconds.get(stage, 0.0) + time.monotonic() - since

    def _continues_variant(self, index: int, step: Step) -> bool:
        """True when the previous step trained this same variant (finetune after prune, evaluate after
        training): the model already holds the variant's weights and mask."""
        prev = self.steps[index - 1] if index > 0 else None
        return prev is not None and prev.trains and prev.variant == step.variant

    def _train_epoch(
        self, step: Step, stage: StageSpec, objective: Objective, epoch: int, total: int
    ) -> dict[str, float]:
        model, opt = self.model, self.optimizer
        assert opt is not None
        model.train()
        loader = self.exec.loader(step.seed, epoch)
        refresh = step.kind == "prune"
        hook = self.pruner if refresh else None  # the variant's pruner: its step hooks and mask update
        loss_sum, correct, seen = 0.0, 0, 0
        n_batches = len(loader)
        for i, (x, y) in enumerate(loader):
            if self.cb.should_cancel():
                raise RunCanceled(f"canceled during {step.kind} of {step.variant}, epoch {epoch + 1}")
            x, y = self.exec.inputs(x, y)
            iteration = epoch * n_batches + i
            for group in opt.param_groups:
                group["lr"] = lr_at(stage, iteration, total)
            objective.set_epoch(epoch, step.kind, i / n_batches)
            if hook is not None:
                hook.set_progress(iteration / max(1, total))
            # refresh=True in the prune stage: scores changed, the only place a mask is recomputed.
            loss, logits = self.exec.step(model, objective, opt, x, y, refresh, hook)
            if not torch.isfinite(loss):
                raise CoreError("diverged", f"stages.{step.kind}.lr", f"the loss became {loss.item()} (lower the lr)")
            loss_sum += float(loss) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            self.done_iters += 1
            self.cb.on_progress(
                stage=step.kind,
                variant=step.variant,
                epoch=epoch + 1,
                epochs=stage.epochs,
                fraction=min(1.0, self.done_iters / max(1, self.total_iters)),
                metrics={"loss": loss_sum / seen, "train_acc": correct / seen},
            )
        loss_sum, correct, seen = self.exec.epoch_totals(loss_sum, correct, seen)
        return {"loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen), "lr": opt.param_groups[0]["lr"]}

    def _evaluate(self, index: int, step: Step) -> None:
        if step.method is None:  # the dense network
            if self.pretrained is None:  # pretraining just finished
                self.pretrained = self._dense_state()
            self.model.load_state_dict(self.pretrained)
        elif not self._continues_variant(index, step):  # a variant with no training stage (one-shot)
            self._enter_variant(step)
        set_stage(self.model, "eval")
        self.model.eval()
        to_memory_format(self.model, False)  # safetensors stores contiguous tensors
        # Rank 0 alone exports; every rank evaluates its shard of the exported network's evaluation, and
        # rank 0 alone records the result (core/pipeline/evaluate.py, "Sharded").
        shard = self.exec.eval_shard()
        eval_precision = Precision(self.spec.resources.eval_precision, self.device)
        if not self.world.main:
            if shard is not None:
                network = self.exec.share_network(None)
                with eval_precision.autocast():
                    evaluate_variant(
                        network,
                        self.test_ds,
                        self.spec,
                        self.device,
                        self.info["num_classes"],
                        self._local_cancel,
                        shard=shard,
                    )
            return
        self.cb.on_event(STAGE_STARTED, {"stage": "export", "variant": step.variant, "epochs": 0})
        started = time.monotonic()
        # Attack what the user downloads: the exported network rebuilt from its file with plain layers
        # (no masks, no cached products; a channel variant's smaller network), not the training model.
        exported = export_variant(
            self.model, self.out, self.spec, step, self.info, self.example, self.device, self.cb.on_artifact
        )
        self._add_seconds(step.variant, "export", started)
        seconds = self.history[step.variant]["seconds"]
        self.cb.on_event(STAGE_FINISHED, {"stage": "export", "variant": step.variant, "seconds": seconds["export"]})
        self.cb.on_event(STAGE_STARTED, {"stage": "evaluate", "variant": step.variant, "epochs": 0})
        started = time.monotonic()
        if shard is not None:
            self.exec.share_network(exported.network)
        attack_log: dict[str, Any] = {}
        with eval_precision.autocast():
            result = evaluate_variant(
                exported.network,
                self.test_ds,
                self.spec,
                self.device,
                self.info["num_classes"],
                self._local_cancel,
                attack_log=attack_log,
                shard=shard,
            )
        self._add_seconds(step.variant, "evaluate", started)
        result["training_loss"] = self.history[step.variant]["training_loss"]
        result["timings"] = {"stages": seconds, "attacks": attack_log.get("seconds", {})}
        result["attack_output"] = attack_log.get("output", {})
        result["precision"] = eval_precision.name
        if eval_precision.reduced:  # a weaker attack must never pass silently as the headline
            note = f" [run under {eval_precision.name} autocast (resources.eval_precision), not fp32]"
            result["procedures"] = {k: v + note for k, v in result.get("procedures", {}).items()}
        result["evaluated"] = exported.evaluated
        result["checks"].update(exported.checks)
        result.update({"method": step.method or "dense", "k": step.k, "seed": step.seed})
        result["artifacts"] = exported.artifacts
        result.update(exported.extras)
        if exported.sparsity is not None:
            result["sparsity"] = exported.sparsity
        if step.method is not None:
            if exported.sparsity is not None:
                result["allocation"] = layer_rates(self.spec, exported.sparsity)
            dense = self.results.get(dense_name(None if self.spec.seeds is None else step.seed))
            args = (self.spec, self.info, self.device, self.out, exported, dense, self._pretrained_network)
            result["inference"] = inference_cost(*args)
        self.results[step.variant] = result
        self._write_model_card(step, result)
        timings = result["timings"]
        self.cb.on_event(
            EVALUATION_FINISHED,
            {"variant": step.variant, "metrics": result["metrics"], "attack_seconds": timings["attacks"]},
        )
        payload = {"stage": "evaluate", "variant": step.variant, "seconds": timings["stages"]["evaluate"]}
        self.cb.on_event(STAGE_FINISHED, payload)

    def _local_cancel(self) -> bool:
        """Cancel check of work whose steps differ between ranks (the sharded evaluation, where ranks
        run different numbers of batches): not a collective. The caller sets the cancel on every rank;
        a rank that stops fails the run and the caller ends the others (core/pipeline/distributed.py)."""
        local = getattr(self.cb, "local_should_cancel", None)
        return bool(local()) if local is not None else self.cb.should_cancel()

    def _pretrained_network(self) -> nn.Module:
        """The dense network of this seed, rebuilt in memory (when it has no compressed export)."""
        assert self.pretrained is not None
        network = self._build()
        network.load_state_dict(self.pretrained)
        return network.eval()

    def _write_model_card(self, step: Step, result: dict[str, Any]) -> None:
        """``<variant>.model_card.md`` beside the variant's network files (Hugging Face conventions),
        reported as an artifact like them and named in ``result["artifacts"]["model_card"]``."""
        from core.io.export import file_digest
        from core.pipeline.model_card import render_model_card
        from core.pipeline.report_build import build_variant

        parent = None
        if step.method is not None:
            parent = self.results.get(dense_name(None if self.spec.seeds is None else step.seed))
        name = card_name(step.variant)
        path = self.out / name
        classes = self.info["num_classes"]
        typed_parent = build_variant(parent, classes) if parent is not None else None
        card = render_model_card(step.variant, build_variant(result, classes), self.spec, self.info, typed_parent)
        ckpt.atomic_write_bytes(path, card.encode())
        size, digest = file_digest(path)
        result["artifacts"]["model_card"] = {"name": name, "size": size, "sha256": digest}
        self.cb.on_artifact(name, path, size, digest)

    def _finish(self) -> dict[str, Any]:
        from core.pipeline.report import write_reports

        if not self.world.main:
            return {}
        report = write_reports(
            self.out, self.spec, self.info, self.results, str(self.device), self.cb, resources=self.exec.describe()
        )
        self.cb.on_event(RUN_FINISHED, {"variants": sorted(self.results)})
        return report.model_dump(mode="json")


def run_job(
    spec: JobSpec,
    out_dir: str | Path,
    callbacks: RunCallbacks | None = None,
    resume: bool = False,
    inputs: RunInputs | None = None,
) -> dict[str, Any]:
    """Run ``spec`` into ``out_dir`` and return the report. With ``resume`` and a checkpoint present,
    continue from it (``ResumeMismatch`` names the spec fields that differ from the checkpoint's); a
    finished run resumed again only rewrites the reports. ``inputs``: the local files behind the
    spec's references (default: the spec's own paths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = inputs or RunInputs.from_spec(spec)
    if spec.resources.world_size > 1:  # N ranks, each running run_rank (core/pipeline/distributed.py)
        from core.pipeline.distributed import run_distributed

        return run_distributed(spec, out, callbacks or RunCallbacks(), resume, inputs, run_rank)
    return run_rank(spec, out, callbacks or RunCallbacks(), resume, inputs, World())


def run_rank(
    spec: JobSpec, out: Path, callbacks: RunCallbacks, resume: bool, inputs: RunInputs, world: World
) -> dict[str, Any]:
    """One rank's run (the whole run when ``world.size == 1``); rank 0's report, ``{}`` on the others."""
    runner = _Runner(spec, out, callbacks, resume, inputs, world)
    if world.main:
        (out / SPEC_NAME).write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    return runner.run()


__all__ = ["RunInputs", "run_job", "run_rank", "resolve_device", "build_network", "CHECKPOINT_NAME"]
