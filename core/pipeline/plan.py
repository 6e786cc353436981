"""The plan of a run: the ordered steps a job spec asks for, and what a resumed run must match.

A *variant* is one (method, k) pair of the spec; all variants start from the same pretrained network,
so a spec with HYDRA and LWM at several k is the paper's comparison table in one run. A multi-seed
job (``seeds``) repeats the whole plan once per seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from core.pruning.methods import METHODS
from core.spec import JobSpec, StageSpec
from core.vocab import TRAIN_STAGES, dense_name, variant_name


@dataclass(frozen=True)
class Step:
    kind: str  # a training stage (core.vocab.TRAIN_STAGES) or "evaluate"
    variant: str  # "dense" or e.g. "hydra_k0.01" (with "_s<seed>" in a multi-seed job)
    method: str | None = None
    k: float = 1.0
    seed: int = 0  # the training seed of this network
    seed_start: bool = False  # the first step of its seed in a multi-seed job: reseed, fresh network

    @property
    def trains(self) -> bool:
        return self.kind in TRAIN_STAGES


def job_seeds(spec: JobSpec) -> list[int]:
    """The training seeds of a job: ``seeds`` when given, else ``[seed]``."""
    return list(spec.seeds) if spec.seeds else [spec.seed]


def _runs(stage: StageSpec | None) -> bool:
    return stage is not None and stage.epochs > 0


def plan_steps(spec: JobSpec) -> list[Step]:
    """The ordered steps of a run. Stages the spec leaves out (``null`` or 0 epochs) are skipped; a
    ``prune`` stage runs for the methods that train scores (``core.pruning.methods``).

    A multi-seed job (``seeds``) repeats the whole plan once per seed, seed after seed, each from its
    own freshly initialised (or freshly loaded) network; names carry ``_s<seed>``."""
    st = spec.stages
    steps: list[Step] = []
    multi = spec.seeds is not None
    for seed in job_seeds(spec):
        tag = seed if multi else None
        first = len(steps)
        dense = dense_name(tag)
        if _runs(st.pretrain):
            steps.append(Step("pretrain", dense, seed=seed))
        steps.append(Step("evaluate", dense, seed=seed))
        for method in spec.pruning.methods:
            for k in spec.pruning.k:
                name = variant_name(method, k, tag)
                if METHODS.get(method).trains_scores and _runs(st.prune):
                    steps.append(Step("prune", name, method, k, seed))
                if _runs(st.finetune):
                    steps.append(Step("finetune", name, method, k, seed))
                steps.append(Step("evaluate", name, method, k, seed))
        if multi:
            steps[first] = replace(steps[first], seed_start=True)
    return steps


def differing_fields(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two spec dumps differ (``stages.prune.lr``, ``pruning.k``); a key only one
    side has counts as differing. Lists are compared whole (``pruning.k``), except lists of mappings
    of equal length, which recurse by index (``evaluation.x.0.y``)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                out.append(path)
            else:
                out.extend(differing_fields(saved[key], current[key], path))
        return out
    if (
        isinstance(saved, list)
        and isinstance(current, list)
        and len(saved) == len(current)
        and all(isinstance(v, dict) for v in saved + current)
    ):
        return [
            p
            for i, (a, b) in enumerate(zip(saved, current))
            for p in differing_fields(a, b, f"{prefix}.{i}" if prefix else str(i))
        ]
    return [] if saved == current else [prefix or "spec"]
