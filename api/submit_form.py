"""The dashboard's submit form: per-dataset starting values and the common fields set from a form.

Why a profile per kind of data: the schema's defaults are the paper's CIFAR setting (l_inf 8/255,
100/20/100 epochs, AutoAttack on 1,000 samples), and the dashboard used them for every dataset, so
the first job a newcomer queued on MNIST digits was a many-CPU-hours CIFAR recipe. Grey 28x28 data
starts instead from the shipped MNIST example (examples/demo_mnist5k.yaml: l_inf eps 0.1, steps of
0.02, 30/20/20 epochs, PGD-20) with AutoAttack on 200 samples; the estimate next to the form says
what either costs. Everything stays editable in the YAML.

``apply_form`` writes the form's fields (dataset, architecture, objective, eps, methods, k, epochs per
stage) into the editor's spec and gives the text back, so the YAML stays the one source of the spec.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from api.errors import ApiError, ErrorCode

GREY_28 = [1, 28, 28]
SMALL_GREY_PROFILE: dict[str, Any] = {
    "attack": {"norm": "linf", "eps": 0.1, "step_size": 0.02, "steps": 10},
    "bound_eps": 0.1,
    "stages": {
        "pretrain": {"epochs": 30, "lr": 0.05},
        "prune": {"epochs": 20, "lr": 0.1},
        "finetune": {"epochs": 20, "lr": 0.01},
    },
    "evaluation": {"pgd_steps": 20, "val_pgd_steps": 5, "val_max_samples": 256, "autoattack_max_samples": 200},
    "arch": "cnn_small_mnist",
}
CIFAR_ARCH = "cnn_small_cifar"
ATTACK_OBJECTIVES = ("pgd", "trades")
BOUND_OBJECTIVES = ("crown_ibp", "mixtrain")
# Values a person types as fractions of 255 (8/255 is how the papers and the schema's comments say it).
FRACTIONS_OF_255 = {round(n / 255, 12): f"{n}/255" for n in range(1, 33)}


def dataset_shape(name: str | None) -> list[int] | None:
    if not name:
        return None
    from core.data.datasets import dataset_catalogue  # lazy: the catalogue imports torchvision

    shape = (dataset_catalogue().get(name) or {}).get("input_shape")
    return list(shape) if shape else None


def apply_profile(spec: dict[str, Any], dataset: str | None, arch_given: bool) -> dict[str, Any]:
    """The starting values for ``dataset`` (in place; returns ``spec``)."""
    shape = dataset_shape(dataset or spec["dataset"]["name"])
    if shape == GREY_28:
        profile = SMALL_GREY_PROFILE
        objective = spec["objective"]
        if objective.get("type") in ATTACK_OBJECTIVES:
            objective.update(profile["attack"])
        elif objective.get("type") in BOUND_OBJECTIVES:
            objective["eps"] = profile["bound_eps"]
        for stage, values in profile["stages"].items():
            if spec["stages"].get(stage):
                spec["stages"][stage].update(values)
        spec["evaluation"].update(profile["evaluation"])
        if not arch_given:
            spec["model"]["arch"] = profile["arch"]
    elif shape is not None and shape[0] == 3 and not arch_given:
        spec["model"]["arch"] = CIFAR_ARCH
    return spec


def annotate_fractions(text: str) -> str:
    """Mark values that are n/255 with a comment (``eps: 0.03137254901960784  # 8/255``): the decimal
    alone is unreadable, and the schema takes numbers."""
    out = []
    for line in text.split("\n"):
        key, sep, value = line.partition(": ")
        if sep and key.strip() in ("eps", "step_size") and "#" not in value:
            try:
                name = FRACTIONS_OF_255.get(round(float(value), 12))
            except ValueError:
                name = None
            if name:
                line = f"{line}  # {name}"
        out.append(line)
    return "\n".join(out)


class FormFields(BaseModel):
    """The common fields of the form; ``None`` leaves the spec's value. A JSON ``true``/``false`` is not
    a number here (pydantic's lax mode would read ``false`` as 0 epochs); ``30.0`` still is 30."""

    dataset: str | None = Field(None, max_length=200)
    arch: str | None = Field(None, max_length=200)
    objective: str | None = Field(None, max_length=50)
    eps: float | None = Field(None, gt=0, le=1e6)
    methods: list[str] | None = Field(None, max_length=20)
    k: list[float] | None = Field(None, max_length=50)
    pretrain_epochs: int | None = Field(None, ge=0, le=100_000)
    prune_epochs: int | None = Field(None, ge=0, le=100_000)
    finetune_epochs: int | None = Field(None, ge=0, le=100_000)

    @field_validator("eps", "k", "pretrain_epochs", "prune_epochs", "finetune_epochs", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values):
            raise ValueError("must be a number, not true or false")
        return value


class FormApply(BaseModel):
    spec: dict[str, Any]
    fields: FormFields
    format: Literal["yaml", "json"] = "yaml"


def _section(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """A section of the editor's spec as a mapping (anything else is replaced: the form writes a valid one)."""
    value = spec.get(name)
    return dict(value) if isinstance(value, dict) else {}


def apply_form(spec: dict[str, Any], fields: FormFields) -> dict[str, Any]:
    """``spec`` with the form's fields written in (a stage given 0 epochs is switched off: null)."""
    out = dict(spec)
    if fields.dataset:
        out["dataset"] = {**_section(out, "dataset"), "name": fields.dataset}
    if fields.arch:
        out["model"] = {**_section(out, "model"), "arch": fields.arch}
    if fields.objective and _section(out, "objective").get("type") != fields.objective:
        out["objective"] = {"type": fields.objective}
    if fields.eps is not None:
        objective = _section(out, "objective")
        if objective.get("type") == "smoothing":
            raise ApiError(
                ErrorCode.VALIDATION_ERROR, "fields.eps: smoothing has no eps; set objective.sigma", "fields.eps"
            )
        objective["eps"] = fields.eps
        out["objective"] = objective
    if fields.methods is not None or fields.k is not None:
        pruning = _section(out, "pruning")
        if fields.methods is not None:
            pruning["methods"] = fields.methods
        if fields.k is not None:
            pruning["k"] = fields.k
        out["pruning"] = pruning
    stages = _section(out, "stages")
    for stage in ("pretrain", "prune", "finetune"):
        epochs = getattr(fields, f"{stage}_epochs")
        if epochs is None:
            continue
        if epochs == 0:
            stages[stage] = None
        else:
            before = stages.get(stage) if isinstance(stages.get(stage), dict) else None
            stages[stage] = {**(before or {"lr": 0.1 if stage != "finetune" else 0.01}), "epochs": epochs}
        out["stages"] = stages
    return out
