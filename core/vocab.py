"""Every word the pipeline, the worker, the API and the reports share, defined once.

Stages, the events a run emits, and the names of the files a run leaves in its folder. Free of
torch and of any service library, so every layer may import it.
"""

from __future__ import annotations

from typing import Literal, get_args

# ------------------------------------------------------------------ stages
TRAIN_STAGES = ("pretrain", "prune", "finetune")
#: Every stage a job reports as its current one (job status, ``stage_started`` events).
STAGES = (*TRAIN_STAGES, "evaluate", "export")
#: The modes of a masked network (``core.pruning.masked.set_stage``): a training stage, or "eval".
MODEL_MODES = (*TRAIN_STAGES, "eval")
TrainStage = Literal["pretrain", "prune", "finetune"]
Stage = Literal["pretrain", "prune", "finetune", "evaluate", "export"]

# ------------------------------------------------------------------ events (RunCallbacks.on_event kinds)
STAGE_STARTED = "stage_started"
STAGE_FINISHED = "stage_finished"
EPOCH_FINISHED = "epoch_finished"
EVALUATION_FINISHED = "evaluation_finished"
RUN_FINISHED = "run_finished"

# ------------------------------------------------------------------ networks
DENSE = "dense"  # the variant name of the unpruned network


def dense_name(seed: int | None = None) -> str:
    """``dense``, or ``dense_s<seed>`` in a multi-seed job."""
    return DENSE if seed is None else f"{DENSE}_s{seed}"


def variant_name(method: str, k: float, seed: int | None = None) -> str:
    """``hydra_k0.01``; in a multi-seed job ``hydra_k0.01_s3`` (``base_variant`` strips the seed)."""
    return f"{method}_k{k:g}" + ("" if seed is None else f"_s{seed}")


def base_variant(name: str, seed: int | None) -> str:
    suffix = f"_s{seed}"
    return name[: -len(suffix)] if seed is not None and name.endswith(suffix) else name


# ------------------------------------------------------------------ files of a run folder
CHECKPOINT_NAME = "checkpoint.pt"
SPEC_NAME = "spec.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT_NAME = "comparison.png"
#: Per-layer keep rates of the global/learned variants (written only by jobs with such an allocation).
RATES_PLOT_NAME = "layer_rates.png"
#: The run-level artifacts, in the order the report lists them (report.json is written last).
RUN_ARTIFACTS = (PLOT_NAME, REPORT_MD, SPEC_NAME)
#: The files a user may ask for per network (``export.formats``): the lossless sparse safetensors, the
#: dense safetensors for plain ``torch.nn``, and the self-contained ONNX graph (checked against PyTorch).
ExportFormat = Literal["compressed", "dense", "onnx"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
# every network as a checked ONNX graph too (a few seconds per network; drop "onnx" to skip it)
DEFAULT_EXPORT_FORMATS: tuple[str, ...] = ("compressed", "dense", "onnx")
ONNX = "onnx"
#: The physically smaller network of a channel-granularity variant (always written for those).
CHANNEL = "channel"


def artifact_name(variant: str, fmt: str) -> str:
    """The file of one exported network: ``hydra_k0.01.compressed.safetensors``,
    ``hydra_k0.01.channel.safetensors``; ``hydra_k0.01.onnx`` for the ONNX graph."""
    if fmt == ONNX:
        return f"{variant}.onnx"
    return f"{variant}.{fmt}.safetensors"


def card_name(variant: str) -> str:
    """The model card beside a network's files: ``hydra_k0.01.model_card.md``."""
    return f"{variant}.model_card.md"
