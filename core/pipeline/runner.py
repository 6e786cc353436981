"""Run a job spec: pretrain → (per variant) prune → finetune → evaluate → export.

A *variant* is one (method, k) pair of the spec; all variants start from the same pretrained network,
so a spec with HYDRA and LWM at several k is the paper's comparison table in one run.

The whole run is a list of *steps* (training phases with epochs, and evaluate/export steps). After
every epoch and every finished step one checkpoint (``checkpoint.pt``) is written atomically with
everything needed to continue bit-for-bit: the model with scores and masks, the optimizer, the RNG
states, the cursor (step, epoch) and the results so far. The learning rate is a pure function of the
iteration (no scheduler object to save), and the data order a pure function of (seed, epoch).
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

from core.io import checkpoint as ckpt
from core.certify.bounds import check_supported
from core.callbacks import RunCallbacks
from core.data.datasets import build_datasets, train_loader
from core.errors import CoreError, ResumeMismatch, RunCanceled
from core.pipeline.evaluate import attack_settings, evaluate_variant, sparsity_from_export, validate
from core.pruning.masked import (
    convert_to_masked,
    init_scores,
    masked_layers,
    refresh_masks,
    set_keep_fraction,
    set_stage,
)
from core.models.zoo import create_model
from core.objectives.adversarial import build_objective, train_step
from core.spec import BOUND_OBJECTIVES, JobSpec, StageSpec

CHECKPOINT_NAME = "checkpoint.pt"
DENSE = "dense"


@dataclass(frozen=True)
class Step:
    kind: str  # "pretrain" | "prune" | "finetune" | "evaluate"
    variant: str  # "dense" or e.g. "hydra_k0.01" (with "_s<seed>" in a multi-seed job)
    method: str | None = None
    k: float = 1.0
    seed: int = 0  # the training seed of this network
    seed_start: bool = False  # the first step of its seed in a multi-seed job: reseed, fresh network

    @property
    def trains(self) -> bool:
        return self.kind in ("pretrain", "prune", "finetune")


def variant_name(method: str, k: float, seed: int | None = None) -> str:
    """``hydra_k0.01``; in a multi-seed job ``hydra_k0.01_s3`` (``base_variant`` strips the seed)."""
    return f"{method}_k{k:g}" + ("" if seed is None else f"_s{seed}")


def base_variant(name: str, seed: int | None) -> str:
    suffix = f"_s{seed}"
    return name[: -len(suffix)] if seed is not None and name.endswith(suffix) else name


def job_seeds(spec: JobSpec) -> list[int]:
    """The training seeds of a job: ``seeds`` when given, else ``[seed]``."""
    return list(spec.seeds) if spec.seeds else [spec.seed]


def plan_steps(spec: JobSpec) -> list[Step]:
    """The ordered steps of a run. Stages the spec leaves out (``null`` or 0 epochs) are skipped.

    A multi-seed job (``seeds``) repeats the whole plan once per seed, seed after seed, each from its
    own freshly initialised (or freshly loaded) network; names carry ``_s<seed>``."""
    st = spec.stages
    steps: list[Step] = []
    multi = spec.seeds is not None
    for seed in job_seeds(spec):
        tag = seed if multi else None
        first = len(steps)
        dense = DENSE if not multi else f"{DENSE}_s{seed}"
        if st.pretrain is not None and st.pretrain.epochs > 0:
            steps.append(Step("pretrain", dense, seed=seed))
        steps.append(Step("evaluate", dense, seed=seed))
        for method in spec.pruning.methods:
            for k in spec.pruning.k:
                name = variant_name(method, k, tag)
                if method == "hydra" and st.prune is not None and st.prune.epochs > 0:
                    steps.append(Step("prune", name, method, k, seed))
                if st.finetune is not None and st.finetune.epochs > 0:
                    steps.append(Step("finetune", name, method, k, seed))
                steps.append(Step("evaluate", name, method, k, seed))
        if multi:
            steps[first] = Step(**{**steps[first].__dict__, "seed_start": True})
    return steps


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CoreError("device_unavailable", "device", f"{requested} requested but CUDA is not available")
    return torch.device(requested)


def lr_at(stage: StageSpec, iteration: int, total: int) -> float:
    """Learning rate after ``iteration`` of ``total`` iterations (linear warmup, then the schedule)."""
    per_epoch = max(1, total // max(1, stage.epochs))
    warm = stage.warmup_epochs * per_epoch
    if iteration < warm:
        return stage.lr * (iteration + 1) / warm
    t = (iteration - warm) / max(1, total - warm)
    if stage.schedule == "cosine":
        return stage.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if stage.schedule == "step":
        # lr/10 from 75% and lr/100 from 90% of the (post-warmup) training, the reference's step
        # schedule (utils/schedules.py) as written. Its if/elif chain tests ">= 0.75" first, so its
        # ">= 0.9" branch is unreachable and it actually stays at lr/10 to the end; we do the /100 it names.
        return stage.lr * (0.1 ** (int(t >= 0.75) + int(t >= 0.9)))
    return stage.lr


def make_optimizer(model: nn.Module, stage: StageSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CoreError("nothing_to_train", "stages", "this stage has no trainable parameters")
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)


def build_network(spec: JobSpec, info: dict[str, Any]) -> nn.Module:
    kwargs = dict(spec.model.kwargs)
    kwargs.setdefault("num_classes", info["num_classes"])
    return convert_to_masked(create_model(spec.model.arch, **kwargs))


def _resume_key(spec: JobSpec) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the whole spec but the worker-local paths of
    its inputs (a worker re-downloads the same upload to a different temporary path)."""
    key = spec.model_dump(mode="json")
    key["model"].pop("checkpoint", None)
    key["dataset"].pop("path", None)
    return key


def _differing_fields(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two ``_resume_key`` dicts differ (``stages.prune.lr``, ``pruning.k``); a
    key only one side has counts as differing. Lists are compared whole (``pruning.k``), except lists
    of mappings of equal length, which recurse by index (``evaluation.x.0.y``)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                out.append(path)
            else:
                out.extend(_differing_fields(saved[key], current[key], path))
        return out
    if (isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current)
            and all(isinstance(v, dict) for v in saved + current)):
        return [p for i, (a, b) in enumerate(zip(saved, current))
                for p in _differing_fields(a, b, f"{prefix}.{i}" if prefix else str(i))]
    return [] if saved == current else [prefix or "spec"]


class _Runner:
    def __init__(
        self, spec: JobSpec, out_dir: Path, callbacks: RunCallbacks, resume: bool, record: dict[str, Any]
    ) -> None:
        self.spec = spec
        self.record = record  # the spec as spec.json and the report show it
        self.out = out_dir
        self.cb = callbacks
        self.device = resolve_device(spec.device)
        self.steps = plan_steps(spec)
        self.train_ds, self.test_ds, self.info = build_datasets(spec.dataset, spec.seed)
        # Seed before the network is built: its initial weights are part of what a seed repeats.
        first_seed = job_seeds(spec)[0]
        torch.manual_seed(first_seed)
        random.seed(first_seed)
        self.model = build_network(spec, self.info).to(self.device)
        objectives = {spec.objective.type} | {spec.objective_for(s.kind).type for s in self.steps if s.trains}
        if objectives & set(BOUND_OBJECTIVES):  # refuse now, naming the layer, not hours into the job
            check_supported(self.model)
        self.pretrained: dict[str, torch.Tensor] | None = None
        self.results: dict[str, Any] = {}
        self.cursor = (0, 0)  # (step index, epochs done within it)
        self.optimizer: torch.optim.Optimizer | None = None
        self.started = time.time()
        self.steps_per_epoch = math.ceil(self._n_train() / spec.dataset.batch_size)
        self.total_iters = sum(self._stage(s).epochs for s in self.steps if s.trains) * self.steps_per_epoch
        self.done_iters = 0
        path = out_dir / CHECKPOINT_NAME
        if resume and path.exists():
            self._restore(ckpt.load_checkpoint(path))
        else:
            if spec.model.checkpoint:
                ckpt.load_weights(spec.model.checkpoint, self.model, spec.model.checkpoint_format)
            if not any(s.kind == "pretrain" for s in self.steps):
                self.pretrained = self._dense_state()

    # -- state ------------------------------------------------------------------------------
    def _n_train(self) -> int:
        return len(self.train_ds)

    def _stage(self, step: Step) -> StageSpec:
        stage = getattr(self.spec.stages, step.kind)
        assert stage is not None
        return stage

    def _dense_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()}

    def _save(self) -> None:
        state = {
            "format": "hydra-compress-checkpoint/1",
            "cursor": list(self.cursor),
            "done_iters": self.done_iters,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "pretrained": self.pretrained,
            "results": json.dumps(self.results),
            "rng": ckpt.capture_rng_state(),
            "spec": self.spec.model_dump_json(),
        }
        path = self.out / CHECKPOINT_NAME
        ckpt.save_checkpoint(path, state)
        self.cb.on_checkpoint(path)

    def _restore(self, state: dict[str, Any]) -> None:
        saved_spec = JobSpec.model_validate_json(state["spec"])
        differing = _differing_fields(_resume_key(saved_spec), _resume_key(self.spec))
        if differing:
            raise ResumeMismatch(differing)
        self.cursor = (int(state["cursor"][0]), int(state["cursor"][1]))
        self.done_iters = int(state["done_iters"])
        self.model.load_state_dict(state["model"])
        self.pretrained = state["pretrained"]
        self.results = json.loads(state["results"])
        self._resume_optimizer = state["optimizer"]
        ckpt.restore_rng_state(state["rng"])

    # -- steps ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._resume_optimizer: dict[str, Any] | None = getattr(self, "_resume_optimizer", None)
        start_step, start_epoch = self.cursor
        for index in range(start_step, len(self.steps)):
            step = self.steps[index]
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
        return self._finish()

    def _start_seed(self, seed: int) -> None:
        """A multi-seed job's next seed: reseed, rebuild the network (fresh initialisation, or the
        uploaded starting weights again), and forget the previous seed's pretrained network."""
        torch.manual_seed(seed)
        random.seed(seed)
        self.model = build_network(self.spec, self.info).to(self.device)
        if self.spec.model.checkpoint:
            ckpt.load_weights(self.spec.model.checkpoint, self.model, self.spec.model.checkpoint_format)
        has_pretrain = any(s.kind == "pretrain" for s in self.steps)
        self.pretrained = None if has_pretrain else self._dense_state()

    def _enter_variant(self, step: Step) -> None:
        """Start a variant from the shared pretrained network with its mask (scaled score init)."""
        assert self.pretrained is not None
        self.model.load_state_dict(self.pretrained)
        method_init = self.spec.pruning.score_init if step.method == "hydra" else "scaled"
        init_scores(self.model, method_init)
        set_keep_fraction(self.model, step.k)
        refresh_masks(self.model)

    def _train(self, index: int, step: Step, first_epoch: int) -> None:
        stage = self._stage(step)
        if first_epoch == 0 and step.kind != "pretrain" and not self._continues_variant(index, step):
            self._enter_variant(step)
        if step.kind == "pretrain":
            self.pretrained = None  # this step makes the pretrained network its variants start from
        set_stage(self.model, step.kind, freeze_bn=self.spec.pruning.freeze_bn)
        self.optimizer = make_optimizer(self.model, stage)
        if first_epoch > 0 and self._resume_optimizer is not None:
            self.optimizer.load_state_dict(self._resume_optimizer)
        self._resume_optimizer = None
        objective = build_objective(self.spec.objective_for(step.kind))
        total = stage.epochs * self.steps_per_epoch
        self.cb.on_event("stage_started", {"stage": step.kind, "variant": step.variant, "epochs": stage.epochs})
        for epoch in range(first_epoch, stage.epochs):
            metrics = self._train_epoch(step, stage, objective, epoch, total)
            metrics.update(validate(self.model, self.test_ds, self.spec, self.device))
            self.cursor = (index, epoch + 1)
            self._save()
            payload = {"stage": step.kind, "variant": step.variant, "epoch": epoch + 1, "epochs": stage.epochs}
            self.cb.on_event("epoch_finished", {**payload, "metrics": metrics})
        self.cb.on_event("stage_finished", {"stage": step.kind, "variant": step.variant})

    def _continues_variant(self, index: int, step: Step) -> bool:
        """True when the previous step trained this same variant (finetune after prune, evaluate after
        training): the model already holds the variant's weights and mask."""
        prev = self.steps[index - 1] if index > 0 else None
        return prev is not None and prev.trains and prev.variant == step.variant

    def _train_epoch(self, step: Step, stage: StageSpec, objective: Any, epoch: int, total: int) -> dict[str, float]:
        model, opt = self.model, self.optimizer
        assert opt is not None
        model.train()
        ds_spec = self.spec.dataset
        loader = train_loader(self.train_ds, ds_spec.batch_size, step.seed, epoch, ds_spec.num_workers)
        refresh = step.kind == "prune"
        loss_sum, correct, seen = 0.0, 0, 0
        n_batches = len(loader)
        for i, (x, y) in enumerate(loader):
            if self.cb.should_cancel():
                raise RunCanceled(f"canceled during {step.kind} of {step.variant}, epoch {epoch + 1}")
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            iteration = epoch * n_batches + i
            for group in opt.param_groups:
                group["lr"] = lr_at(stage, iteration, total)
            if hasattr(objective, "set_epoch"):
                objective.set_epoch(epoch, step.kind, i / n_batches)
            # refresh=True in the prune stage: scores changed, the only place a mask is recomputed.
            loss, logits = train_step(model, objective, opt, x, y, refresh=refresh)
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
        artifacts = self._export(step)
        # Attack what the user downloads: the exported network rebuilt from its file with plain layers
        # (no masks, no cached products), not the in-memory training model.
        network = self._exported_network(artifacts)
        result = evaluate_variant(network, self.test_ds, self.spec, self.device, self.info["num_classes"])
        result["evaluated"] = ("the exported network, reloaded from " + artifacts["compressed"]["name"]
                               if "compressed" in artifacts else "the in-memory network (no compressed export)")
        result.update({"method": step.method or "dense", "k": step.k, "seed": step.seed})
        result["artifacts"] = artifacts
        if "compressed" in artifacts:
            names = [name for name, _ in masked_layers(self.model)]
            result["sparsity"] = sparsity_from_export(self.out / artifacts["compressed"]["name"], names)
        self.results[step.variant] = result
        self._write_model_card(step, result)
        self.cb.on_event("evaluation_finished", {"variant": step.variant, "metrics": result["metrics"]})

    def _write_model_card(self, step: Step, result: dict[str, Any]) -> None:
        """``<variant>.model_card.md`` beside the variant's network files (Hugging Face conventions),
        reported as an artifact like them and named in ``result["artifacts"]["model_card"]``."""
        from core.io.export import file_digest
        from core.pipeline.model_card import card_name, render_model_card

        parent = None
        if step.method is not None:
            dense = DENSE if self.spec.seeds is None else f"{DENSE}_s{step.seed}"
            parent = self.results.get(dense)
        name = card_name(step.variant)
        path = self.out / name
        card = render_model_card(step.variant, result, self.spec, self.info, parent, self.record)
        ckpt.atomic_write_bytes(path, card.encode())
        size, digest = file_digest(path)
        result["artifacts"]["model_card"] = {"name": name, "size": size, "sha256": digest}
        self.cb.on_artifact(name, path, size, digest)

    def _exported_network(self, artifacts: dict[str, Any]) -> nn.Module:
        from core.io.export import load_compressed_model

        if "compressed" not in artifacts:
            return self.model
        network = load_compressed_model(self.out / artifacts["compressed"]["name"]).to(self.device)
        return network.eval()

    def _export(self, step: Step) -> dict[str, Any]:
        from core.io.export import export_compressed, export_dense

        meta = {
            "arch": self.spec.model.arch,
            "kwargs": {**self.spec.model.kwargs, "num_classes": self.info["num_classes"]},
            "variant": step.variant,
            "method": step.method or "dense",
            "k": step.k,
            "seed": step.seed,
        }
        out: dict[str, Any] = {}
        for fmt in self.spec.export.formats:
            name = f"{step.variant}.{fmt}.safetensors"
            path = self.out / name
            writer = export_compressed if fmt == "compressed" else export_dense
            info = writer(self.model, path, meta)
            out[fmt] = {"name": name, "size": info["size"], "sha256": info["sha256"]}
            self.cb.on_artifact(name, path, info["size"], info["sha256"])
        return out

    def _finish(self) -> dict[str, Any]:
        from core.pipeline.report import write_reports

        report = write_reports(self.out, self.spec, self.info, self.results, str(self.device), self.cb, self.record)
        self.cb.on_event("run_finished", {"variants": sorted(self.results)})
        return report


def run_job(
    spec: JobSpec,
    out_dir: str | Path,
    callbacks: RunCallbacks | None = None,
    resume: bool = False,
    record_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``spec`` into ``out_dir`` and return the report. With ``resume`` and a checkpoint present,
    continue from it; a finished run resumed again only rewrites the reports. ``record_spec`` is the
    spec as ``spec.json`` and the report record it (default: ``spec``): a caller that pointed inputs
    at local copies (the worker) records the references its user wrote instead."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = record_spec if record_spec is not None else spec.model_dump(mode="json")
    runner = _Runner(spec, out, callbacks or RunCallbacks(), resume, record)
    (out / "spec.json").write_text(json.dumps(record, indent=2))
    return runner.run()


__all__ = ["run_job", "plan_steps", "variant_name", "attack_settings", "CHECKPOINT_NAME"]
