"""The job spec: one Pydantic model that the CLI, the worker and the API all validate against.

Defaults are the HYDRA reference code's (docs/METHOD.md). Unknown fields are refused everywhere
(``extra="forbid"``) so a typo never silently falls back to a default. ``load_spec`` turns any
validation failure into a ``CoreError`` naming the first offending field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from core.certify.bounds import BoundOptions
from core.certify.smoothing import SmoothingOptions
from core.config import (
    EPS_8_255,
    NORM_DEFAULTS,
    STEP_2_255,
    Norm,
    OptionsModel,
    OptionsSection,
    StrictModel,
    field_error,
    nest_flat_options,
    norm_defaults,
)
from core.data.datasets import DatasetSpec
from core.errors import CoreError
from core.field_errors import first_problem
from core.objectives import OBJECTIVES, ObjectiveSpec
from core.pruning.allocation import Allocation, Granularity, check_pruning_combination
from core.pruning.masked import check_keep_fraction
from core.pruning.methods import METHODS, options_sections, pruner_class
from core.pruning.sharpness import Scope
from core.safe_parse import load_json, load_yaml
from core.vocab import DEFAULT_EXPORT_FORMATS, ExportFormat

__all__ = ["EPS_8_255", "NORM_DEFAULTS", "STEP_2_255", "norm_defaults", "Norm", "DatasetSpec"]  # re-exported


# ---------------------------------------------------------------- model and data
ONNX_ARCH = "onnx"  # model.arch of a network given as model.onnx
ONNX_KWARGS = ("normalization", "mean", "std")


class ModelSpec(StrictModel):
    arch: str = Field("cnn_small_mnist", description="Architecture name from the catalogue.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra arguments for the architecture.")
    checkpoint: str | None = Field(
        None, description="Starting weights: a file path (CLI) or an uploaded model id (service)."
    )
    checkpoint_format: Literal["auto", "safetensors", "state_dict", "hydra"] = "auto"
    onnx: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="The user's own network as an ONNX graph instead of a catalogue architecture: a local "
        ".onnx path (CLI) or an uploaded model id 'model:<id>' (service). Checked and converted by "
        "core.models.onnx_import; its input shape and classes are read from the graph, its weights are the "
        "starting point (stages.pretrain defaults to null), arch becomes 'onnx', and kwargs may only set "
        "the input normalisation (normalization, mean, std; default none: the graph's own preprocessing).",
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from core.models.zoo import is_catalogue_name, list_models

        if not is_catalogue_name(v) and v != ONNX_ARCH:
            known = ", ".join(sorted(list_models()))
            raise ValueError(f"unknown architecture {v!r}; known: {known}, torchvision:<name>, timm:<name>")
        return v

    @model_validator(mode="before")
    @classmethod
    def _onnx_replaces_arch(cls, data: Any) -> Any:
        """``onnx`` replaces ``arch``, which then reads 'onnx' (also after a dump and reload)."""
        if not isinstance(data, dict) or data.get("onnx") is None:
            return data
        arch = data.get("arch", ONNX_ARCH)
        if arch != ONNX_ARCH:
            raise _field_error(("arch",), "invalid_model", "give either model.arch or model.onnx, not both", arch)
        return {**data, "arch": ONNX_ARCH}

    @model_validator(mode="after")
    def _onnx_source(self) -> ModelSpec:
        if self.onnx is None:
            if self.arch == ONNX_ARCH:
                raise _field_error(("onnx",), "missing_onnx", "arch 'onnx' needs model.onnx (the graph)", None)
            return self
        if self.checkpoint is not None:
            raise _field_error(
                ("checkpoint",), "invalid_model", "an ONNX network brings its own weights", self.checkpoint
            )
        extra = sorted(set(self.kwargs) - set(ONNX_KWARGS))
        if extra:
            raise _field_error(
                ("kwargs",),
                "invalid_model_kwargs",
                f"an ONNX network takes only {', '.join(ONNX_KWARGS)} in model.kwargs, not {', '.join(extra)}",
                self.kwargs,
            )
        return self


# ---------------------------------------------------------------- objectives
# Built from the registry (``core.objectives``): each objective module holds its own spec model.
OBJECTIVE_TYPES: dict[str, type[ObjectiveSpec]] = {name: cls.Spec for name, cls in OBJECTIVES.items()}
# Objectives whose loss or certificate needs the bound code; their architectures are checked at submission.
BOUND_OBJECTIVES: tuple[str, ...] = tuple(name for name, cls in OBJECTIVES.items() if cls.needs_bounds)
if TYPE_CHECKING:  # the checker sees the base types; Pydantic sees the enumerations of the registries
    Objective = ObjectiveSpec
    MethodName = str
else:
    Objective = Annotated[Union[tuple(OBJECTIVE_TYPES.values())], Field(discriminator="type")]  # noqa: UP007
    MethodName = METHODS.literal()
DEFAULT_OBJECTIVE = "trades"


def _default_objective() -> ObjectiveSpec:
    return OBJECTIVE_TYPES[DEFAULT_OBJECTIVE]()


# ---------------------------------------------------------------- pruning and stages
_field_error = field_error  # a cross-field rule's error, located at the field (core.config)


def options_field(options: type[OptionsModel]) -> Any:
    """The field a section holds an options model in: its defaults, described by its docstring."""
    return Field(default_factory=options, description=" ".join((options.__doc__ or "").split()))


class ScoreSharpnessSpec(StrictModel):
    """Sharpness-aware score steps (S2AP / SAM on the scores; core/pruning/sharpness.py)."""

    rho: float = Field(
        gt=0,
        le=10,
        description="Radius of the ascent step on the scores: relative to each score tensor's norm "
        "(scope layer, S2AP's gamma) or absolute over all scores (scope global, SAM's rho).",
    )
    scope: Scope = Field(
        "layer",
        description="layer: e_l = rho·||s_l||·g_l/||g_l|| per layer (S2AP's constraint); global: "
        "e = rho·g/||g|| with one norm over all scores (plain SAM).",
    )


def rate_training_methods(methods: list[str], allocation: str, granularity: str) -> list[str]:
    """The methods whose pruner at ``(allocation, granularity)`` trains per-layer rates
    (``Pruner.trains_rates``): they need a prune stage that runs and every k below 1."""
    return [m for m in methods if pruner_class(m, allocation, granularity).trains_rates]


class PruningSpecBase(OptionsSection):
    """The ``pruning`` section's own fields; :data:`PruningSpec` adds the pruners' options sections."""

    methods: list[MethodName] = Field(
        default_factory=lambda: ["hydra"],
        min_length=1,
        description="Pruning methods (core.pruning.methods): hydra trains importance scores under the "
        "objective; lwm keeps the largest |w| (at channel granularity: the largest filter L1 norms).",
    )
    k: list[float] = Field(
        default_factory=lambda: [0.01],
        min_length=1,
        max_length=100,
        description="Fractions kept (99% pruning is k = 0.01): of the weights of every layer (uniform "
        "allocation), of all prunable weights of the network (global, learned), of the channels of "
        "every coupled channel group (channel granularity).",
    )
    score_init: Literal["scaled", "kaiming_normal", "kaiming_uniform"] = Field(
        "scaled",
        description="HYDRA's score initialisation: scaled (|w|-proportional, so the first mask is LWM's) or "
        "random kaiming_normal / kaiming_uniform (the paper's ablation).",
    )
    freeze_bn: bool = Field(False, description="Keep the BatchNorm affine parameters fixed in the prune stage.")
    allocation: Allocation = Field(
        "uniform",
        description="How the budget k is spread over the layers: uniform (every layer keeps k, HYDRA as "
        "published), global (one top-k of the scores over all layers, re-chosen after every prune "
        "step; for LWM: one top-k of |w| over all layers) or learned (HARP-style per-layer rates trained "
        "with the scores, then projected onto the exact budget; needs a method that trains scores and a "
        "prune stage). See core/pruning/allocation.py.",
    )
    granularity: Granularity = Field(
        "unstructured",
        description="What is pruned: single weights (unstructured) or whole channels/filters (channel: one "
        "score per output channel of every coupled group, the network physically rebuilt smaller at "
        "export; hydra trains the channel scores, lwm is L1-norm filter pruning). Channel granularity "
        "supports the uniform allocation (and learned under budget: macs) and plain conv/linear/BatchNorm networks (no grouped "
        "convolutions, concatenation or attention). See core/pruning/structured.py.",
    )
    budget: Literal["params", "macs"] = Field(
        "params",
        description="What k is a fraction of: params (the weights kept, or at channel granularity the "
        "channels of every group) or macs (the conv/linear multiply-accumulates of the rebuilt network; "
        "channel granularity only: uniform keeps the one channel fraction whose MACs match, learned trains "
        "per-group rates under HARP's MAC hinge). See core/pruning/channel_budget.py.",
    )
    global_min_per_layer: int = Field(
        1,
        ge=0,
        le=1_000_000,
        description="Global allocation: weights reserved in every layer (its best-scored ones) so no layer is emptied.",
    )
    score_sharpness: ScoreSharpnessSpec | None = Field(
        None,
        description="Sharpness-aware score steps (S2AP, arXiv 2510.18381: SAM on the importance scores): "
        "each prune step's score gradient is taken at the scores perturbed by an ascent step of radius "
        "rho, one extra forward/backward per step; on top of any allocation and granularity, for the "
        "methods that train scores (hydra; lwm is unchanged). null = off. See core/pruning/sharpness.py.",
    )

    @field_validator("k")
    @classmethod
    def _k_range(cls, v: list[float]) -> list[float]:
        for value in v:
            try:
                check_keep_fraction(value)
            except CoreError as err:
                raise ValueError(err.message) from None
        if len(set(v)) != len(v):
            raise ValueError("k values must be distinct")
        return v

    @field_validator("methods")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("methods must be distinct")
        return v

    @model_validator(mode="after")
    def _combination(self) -> PruningSpecBase:
        """Every method must go with the allocation and granularity (core.pruning.allocation)."""
        for method in self.methods:
            try:
                check_pruning_combination(method, self.allocation, self.granularity)
            except CoreError as err:
                name = (err.field or "pruning.allocation").removeprefix("pruning.")
                raise _field_error((name,), err.code, err.message, getattr(self, name, None)) from None
        if self.budget == "macs" and self.granularity != "channel":
            raise _field_error(
                ("budget",),
                "invalid_budget",
                "budget: macs counts the MACs of the rebuilt network: it needs granularity: channel",
                self.budget,
            )
        if self.granularity == "channel" and self.allocation == "learned" and self.budget != "macs":
            raise _field_error(
                ("budget",),
                "invalid_budget",
                "learned channel rates are trained under a MAC budget: set budget: macs",
                self.budget,
            )
        if self.score_sharpness is not None and not any(METHODS.get(m).trains_scores for m in self.methods):
            raise _field_error(
                ("score_sharpness",),
                "invalid_score_sharpness",
                "sharpness-aware scores perturb the trained scores, but no method in pruning.methods trains "
                "scores (add hydra, or set score_sharpness to null)",
                self.score_sharpness,
            )
        if rate_training_methods(self.methods, self.allocation, self.granularity) and max(self.k) >= 1.0:
            raise _field_error(("k",), "invalid_k", f"{self.allocation} allocation needs every k below 1", self.k)
        return self


# The pruners' own options, one field per section (``pruning.learned``), composed from the methods'
# registry (core.pruning.methods.options_sections) like the objectives: the pruner's module is the change.
if TYPE_CHECKING:
    PruningSpec = PruningSpecBase
else:
    PruningSpec = create_model(
        "PruningSpec",
        __base__=PruningSpecBase,
        __module__=__name__,
        __doc__=PruningSpecBase.__doc__,
        **{section: (options, options_field(options)) for section, options in options_sections().items()},
    )


class StageSpec(StrictModel):
    epochs: int = Field(ge=0, le=10_000)
    lr: float = Field(gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0, le=10_000)
    objective: Objective | None = Field(None, description="Overrides the job's objective for this stage.")


class StagesSpec(StrictModel):
    pretrain: StageSpec | None = Field(default_factory=lambda: StageSpec(epochs=100, lr=0.1))
    prune: StageSpec | None = Field(default_factory=lambda: StageSpec(epochs=20, lr=0.1))
    finetune: StageSpec | None = Field(default_factory=lambda: StageSpec(epochs=100, lr=0.01))


# ---------------------------------------------------------------- evaluation and export
class EvaluationSpec(OptionsSection):
    pgd_steps: int = Field(50, ge=1, le=10_000, description="Final PGD attack steps (the paper quotes PGD-50).")
    pgd_restarts: int = Field(1, ge=1, le=100, description="Random starts of the final PGD (per-example worst case).")
    pgd_step_size: float | None = Field(None, gt=0, description="Defaults to the objective's step size.")
    eps: float | None = Field(None, gt=0, description="Defaults to the objective's eps.")
    norm: Norm | None = Field(None, description="Threat model norm; defaults to the objective's (else linf).")
    val_pgd_steps: int = Field(10, ge=1, le=10_000, description="PGD steps of the per-epoch validation.")
    val_max_samples: int | None = Field(512, ge=1, le=100_000_000, description="Samples of the per-epoch validation.")
    max_samples: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="Test samples for the final benign and PGD evaluation (a seeded, "
        "class-stratified sample; null = the whole test split).",
    )
    autoattack: bool = Field(
        True,
        description="Also run AutoAttack (the reference pyautoattack code, standard version) in the "
        "final evaluation; the headline robust_acc is the per-example worst case over PGD and every attack.",
    )
    autoattack_max_samples: int | None = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Test samples attacked by PGD + AutoAttack for the headline "
        "robust accuracy (a class-stratified sample nested in the max_samples one; null = all).",
    )
    autoattack_version: Literal["standard"] = Field("standard", description="AutoAttack version (the standard one).")
    pgd_smooth_relu: bool = Field(
        True,
        description="Also run PGD through the smooth ReLU backward (a BPDA-style surrogate gradient "
        "that sees past inactive ReLUs) and count it in the worst case.",
    )
    pgd_smooth_tau: float = Field(0.1, gt=0, le=10, description="Temperature of that smooth ReLU backward.")
    sample_seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Seed of the class-stratified evaluation samples (default: the "
        "job's seed); the same for every seed of a multi-seed job, so all seeds see the same samples.",
    )
    # certification (randomized smoothing, bounds): each certificate's options, declared by core.certify
    smoothing: SmoothingOptions = options_field(SmoothingOptions)
    certify_max_samples: int | None = Field(
        500, ge=1, le=100_000_000, description="Test samples certified (a seeded, class-stratified sample)."
    )
    bounds: BoundOptions = options_field(BoundOptions)
    # inference cost of every pruned network against the dense one (core.pipeline.measure)
    measure_latency: bool = Field(
        True,
        description="Time inference of every pruned network against the dense one (seconds per network; "
        "false skips it), interleaved in one process: PyTorch on the job's device and onnxruntime on the CPU (the ONNX exports), at each of "
        "measure_batch_sizes. Parameters, MACs and peak inference memory are measured either way.",
    )
    measure_batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 64],
        min_length=1,
        max_length=8,
        description="Batch sizes of the inference measurements: latency at each, peak memory at the largest.",
    )
    measure_repeats: int = Field(15, ge=1, le=1000, description="Timed samples per network and batch size (median).")
    measure_warmup: int = Field(3, ge=1, le=1000, description="Untimed calls before the timed samples.")
    measure_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Threads of PyTorch and onnxruntime while timing (the same for every network; "
        "default: PyTorch's current thread count).",
    )


class ExportSpec(StrictModel):
    formats: list[ExportFormat] = Field(
        default_factory=lambda: list(DEFAULT_EXPORT_FORMATS),  # type: ignore[arg-type]
        description="Files written per network (default all three; the onnx export costs a few seconds per "
        "network): compressed (lossless sparse safetensors; the evaluated file), "
        "dense (safetensors for plain torch.nn), onnx (self-contained graph, checked against PyTorch "
        "through onnxruntime). A channel-granularity variant always also writes its physically smaller "
        "network (<variant>.channel.safetensors), which is the one evaluated.",
    )
    license: str = Field(
        "other",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9.+-]+$",
        description="Licence of the exported networks, an SPDX id (e.g. apache-2.0, mit, cc-by-4.0) written into "
        "every model card; default 'other': not stated by the submitter.",
    )


# ---------------------------------------------------------------- resources (how the job runs)
Precision = Literal["fp32", "bf16", "fp16"]


class ResourcesSpec(StrictModel):
    """How the job uses its hardware (core/pipeline/resources.py, core/pipeline/distributed.py). The
    execution-only fields (processes, gpus, compile, channels_last) may change between a run and its
    resume; the numeric ones (precision, eval_precision, sync_bn) may not."""

    precision: Precision = Field(
        "fp32",
        description="Training and training-time attacks: fp32, bf16 (autocast) or fp16 (autocast with a "
        "gradient scaler; CUDA only).",
    )
    eval_precision: Precision = Field(
        "fp32",
        description="The final evaluation's attacks and certificates (fp32 unless set; the report names a "
        "reduced precision beside every number it produced).",
    )
    channels_last: bool | None = Field(
        None, description="channels-last memory format for 4-D networks (default: on for CUDA, off on CPU)."
    )
    compile: bool = Field(
        False, description="torch.compile the training forward; falls back to eager with a warning event."
    )
    processes: int = Field(1, ge=1, le=64, description="CPU data-parallel ranks (gloo backend).")
    gpus: int = Field(
        0, ge=0, le=64, description="CUDA devices: 1 = one GPU, N > 1 = N data-parallel ranks (NCCL backend)."
    )
    sync_bn: bool = Field(False, description="SyncBatchNorm across the ranks of a multi-GPU job (gpus > 1).")

    @property
    def world_size(self) -> int:
        return self.gpus if self.gpus > 1 else self.processes

    @property
    def backend(self) -> str:
        return "nccl" if self.gpus > 0 else "gloo"


class JobSpec(StrictModel):
    # A job starts from one of these being set (not null): the network it pretrains, or its given weights.
    # Read by the validator below and by the API's JSON Schema (api/openapi.py).
    STARTING_POINTS: ClassVar[tuple[str, ...]] = ("stages.pretrain", "model.checkpoint", "model.onnx")

    name: str | None = Field(None, max_length=200)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None,
        min_length=1,
        max_length=20,
        description="Repeat every network (pretraining included) once per "
        "seed; the report gives each seed's numbers and their mean and standard deviation. Overrides seed.",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    model: ModelSpec = Field(default_factory=ModelSpec)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    objective: Objective = Field(default_factory=_default_objective)
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    stages: StagesSpec = Field(default_factory=StagesSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("device must be auto, cpu, cuda or cuda:N")

    @model_validator(mode="before")
    @classmethod
    def _onnx_starts_trained(cls, data: Any) -> Any:
        """A network given as ONNX comes with its trained weights: no pretraining unless the spec asks."""
        model = data.get("model") if isinstance(data, dict) else None
        onnx = model.get("onnx") if isinstance(model, dict) else getattr(model, "onnx", None)
        if onnx is None:
            return data
        stages = data.get("stages")
        if stages is None and "stages" not in data:
            return {**data, "stages": {"pretrain": None}}
        if isinstance(stages, dict) and "pretrain" not in stages:
            return {**data, "stages": {**stages, "pretrain": None}}
        return data

    @model_validator(mode="after")
    def _start_point(self) -> JobSpec:
        if all(self.value_at(path) is None for path in self.STARTING_POINTS):
            raise ValueError("stages.pretrain is null but model.checkpoint is not set: nothing to start from")
        pruning = self.pruning
        if self.stages.prune is None or self.stages.prune.epochs == 0:
            if rate_training_methods(pruning.methods, pruning.allocation, pruning.granularity):
                raise _field_error(
                    ("pruning", "allocation"),
                    "invalid_allocation",
                    f"{pruning.allocation} allocation trains its per-layer rates in the prune stage, but "
                    "stages.prune does not run",
                    pruning.allocation,
                )
        return self

    def value_at(self, path: str) -> Any:
        """The value at a dotted ``path`` (``model.checkpoint``); None where a section on the way is."""
        value: Any = self
        for part in path.split("."):
            value = getattr(value, part, None)
        return value

    @model_validator(mode="after")
    def _resources(self) -> JobSpec:
        """Resource combinations that cannot run, refused with the field named."""
        r = self.resources
        on_cpu = self.device == "cpu"
        for name in ("precision", "eval_precision"):
            if getattr(r, name) == "fp16" and on_cpu:
                raise _field_error(
                    ("resources", name),
                    "unsupported_precision",
                    "fp16 needs CUDA (a gradient scaler); use bf16 on CPU",
                    "fp16",
                )
        if r.gpus > 0 and on_cpu:
            raise _field_error(("resources", "gpus"), "invalid_resources", "gpus > 0 with device: cpu", r.gpus)
        if r.gpus > 1 and self.device.startswith("cuda:"):
            raise _field_error(
                ("resources", "gpus"),
                "invalid_resources",
                "a multi-GPU job uses cuda:0..N-1; set device: auto or cuda",
                r.gpus,
            )
        if r.gpus > 0 and r.processes > 1:
            raise _field_error(
                ("resources", "processes"),
                "invalid_resources",
                "processes is for CPU jobs; a GPU job has one rank per GPU",
                r.processes,
            )
        if r.sync_bn and r.gpus < 2:
            raise _field_error(
                ("resources", "sync_bn"), "invalid_resources", "SyncBatchNorm needs gpus > 1 (CUDA)", True
            )
        if self.dataset.batch_size % r.world_size:
            raise _field_error(
                ("dataset", "batch_size"),
                "invalid_batch_size",
                f"the global batch {self.dataset.batch_size} must divide evenly over {r.world_size} ranks",
                self.dataset.batch_size,
            )
        return self

    def objective_for(self, stage: str) -> ObjectiveSpec:
        """The objective a stage trains with: its own override, else the job's."""
        stage_spec = getattr(self.stages, stage, None)
        if stage_spec is not None and stage_spec.objective is not None:
            return stage_spec.objective
        return self.objective


def nested_spec(data: Any) -> Any:
    """A raw spec mapping with every section's options in their nested form (what validation does first,
    ``core.config.nest_flat_options``): the shape of the dump, so raw and dump compare key by key."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, info in JobSpec.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, OptionsSection) and name in out:
            out[name] = nest_flat_options(out[name], section.options_fields())
    return out


def same_spec(stored: Any, dump: dict[str, Any]) -> bool:
    """Whether a stored spec (a job's, written by any earlier version) is the spec ``dump`` (a JSON-mode
    dump): a spec stored with the flat options is the same as today's nested dump of it."""
    if stored == dump:
        return True
    try:
        return JobSpec.model_validate(stored).model_dump(mode="json") == dump
    except ValidationError:
        return False


def _field_of(err: dict[str, Any]) -> str:
    parts = [str(p) for p in err.get("loc", ()) if not (isinstance(p, str) and p in OBJECTIVE_TYPES)]
    return ".".join(parts) or "spec"


def load_spec(data: dict[str, Any] | str | Path) -> JobSpec:
    """Validate a spec (a dict, or a YAML/JSON file path); raise ``CoreError`` naming the field."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise CoreError("spec_unreadable", "spec", f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CoreError("spec_unreadable", "spec", f"cannot read {path}: {reason}") from None
        # No aliases, bounded nesting and integers (core/safe_parse.py): a spec file cannot make the
        # parser expand a bomb or recurse past the interpreter's limit.
        try:
            data = (load_yaml(text) or {}) if path.suffix in (".yaml", ".yml") else load_json(text)
        except CoreError as exc:
            raise CoreError(exc.code, exc.field, f"{path}: {exc.message}") from None
    if not isinstance(data, dict):
        raise CoreError("invalid_spec", "spec", "the spec must be a mapping")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        # an unknown (misspelled) key first, with the known field it most likely meant
        field, message, _ = first_problem(exc.errors(), JobSpec, lambda loc: _field_of({"loc": loc}))
        raise CoreError("invalid_spec", field, message) from exc
