"""The typed report: what ``report.json`` holds, what ``GET /v1/jobs/{id}/report`` serves (its
``response_model``, so the schema is in ``/openapi.json``) and the only thing the renderers read
(``report.md``, the model cards, the plots, the CLIs, the dashboard's ``report.js``, the seed merge).

This module imports only pydantic (no torch): the API imports it. The report is *built* in one place,
``core.pipeline.report_build``, from the runner's per-variant results; a stored report of an older
format is brought to this one there too (``load_report``).

Adding a field: declare it here (optional, with a default, so stored reports still load), fill it in
``core.pipeline.report_build`` and assert it in ``tests/test_report_model.py``. A field another
package fills while its code is young may go in ``VariantResult.extras`` first.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REPORT_FORMAT: Literal["hydra-compress-report/3"] = "hydra-compress-report/3"
Interval = tuple[float, float]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileDigest(_Model):
    name: str | None = None
    size: int
    sha256: str


class Sample(_Model):
    """An evaluation sample: its size, of how many, how it was drawn, and its count per class."""

    n: int
    of: int
    how: str
    per_class: dict[str, int] = Field(default_factory=dict)


class Check(_Model):
    """One sanity check of a network: ``flagged`` when its rule fires; ``message`` says what to do."""

    flagged: bool
    message: str
    rule: str
    details: dict[str, Any] = Field(default_factory=dict)


class Ratio(_Model):
    dense: float | None = None
    variant: float | None = None
    ratio: float | None = None
    batch: int | None = None


class Latency(_Model):
    """Dense against variant timed interleaved in one process (``core.pipeline.measure.speedup_entry``)."""

    dense: float
    variant: float
    dense_iqr: Interval | None = None
    variant_iqr: Interval | None = None
    speedup: float | None = None
    speedup_ci95: Interval | None = None
    samples: int | None = None
    measurable: bool = False
    verdict: str = "not measurable at this size"


class Inference(_Model):
    """A pruned network's inference cost against the dense one of its seed."""

    params: Ratio | None = None
    nonzero_params: Ratio | None = None
    macs: Ratio | None = None
    sparse_macs: Ratio | None = None
    latency: dict[str, Latency] = Field(default_factory=dict)
    peak_memory: Ratio | None = None
    method: dict[str, str] = Field(default_factory=dict)
    dense_network: str | None = None


class LayerSparsity(_Model):
    n: int
    nnz: int
    sparsity: float
    stored: int | None = None


class Sparsity(_Model):
    """Counted from the compressed artifact (channel: the rebuilt network against the full widths)."""

    total: float
    prunable_params: int
    kept_params: int
    stored_params: int | None = None
    layers: dict[str, LayerSparsity] = Field(default_factory=dict)


class LayerRate(_Model):
    n: int
    kept: int
    rate: float


class Allocation(_Model):
    """Per-layer keep rates of a pruned network (what the global/learned allocations decide)."""

    allocation: str
    granularity: str
    layers: dict[str, LayerRate]
    total: LayerRate


class PlainDefinition(_Model):
    code: str
    mean: list[float] | None = None
    std: list[float] | None = None
    loads: str | None = None
    prefix: str = ""


class Timings(_Model):
    """Wall seconds of each stage of this network (pretrain, prune, finetune, export, evaluate) and of
    each attack of its evaluation; a resumed stage counts the part run after the resume."""

    stages: dict[str, float] = Field(default_factory=dict)
    attacks: dict[str, float] = Field(default_factory=dict)


class VariantResult(_Model):
    """One network: what was measured, how, on what, how sure, what it costs, and its files."""

    method: str
    k: float
    seed: int | None = None
    n_test: int
    evaluated: str | None = None
    metrics: dict[str, float]
    counts: dict[str, tuple[int, int]] = Field(default_factory=dict)
    intervals: dict[str, Interval] = Field(default_factory=dict)
    interval_method: str | None = None
    procedures: dict[str, str] = Field(default_factory=dict)
    samples: dict[str, Sample] = Field(default_factory=dict)
    checks: dict[str, Check] = Field(default_factory=dict)
    certification: dict[str, Any] | None = None
    sparsity: Sparsity | None = None
    allocation: Allocation | None = None
    channels: dict[str, dict[str, int]] | None = None
    inference: Inference | None = None
    plain_definition: PlainDefinition | None = None
    artifacts: dict[str, FileDigest] = Field(default_factory=dict)
    training_loss: dict[str, list[float]] = Field(
        default_factory=dict, description="stage -> mean training loss of each epoch"
    )
    timings: Timings = Field(default_factory=Timings)
    # Filled by work in progress elsewhere (ONNX import, GPU/precision); optional until then.
    source_graph: dict[str, Any] | None = None
    precision: str | None = Field(None, description="the final evaluation's precision (resources.eval_precision)")
    resources: dict[str, Any] | None = None
    extras: dict[str, Any] = Field(default_factory=dict, description="fields not yet typed here")


class ComparisonRow(_Model):
    """One network in the comparison: dense first, then by method, decreasing k and seed."""

    variant: str
    base: str
    method: str
    k: float
    seed: int | None = None
    sparsity: float
    metrics: dict[str, float]
    ci95: dict[str, Interval] = Field(default_factory=dict)
    bytes: dict[str, int] = Field(default_factory=dict, description="artifact format -> file size")


class SeedSummary(_Model):
    mean: float
    std: float
    n_seeds: int
    per_seed: dict[str, float]


class AggregateRow(_Model):
    """One network over its seeds (a multi-seed job)."""

    variant: str
    method: str
    k: float
    seeds: list[int | None]
    sparsity: SeedSummary | None = None
    metrics: dict[str, SeedSummary] = Field(default_factory=dict)


class Flag(_Model):
    """A flagged check, ready to show: which network, which check, what it means."""

    variant: str
    check: str
    message: str


class DatasetInfo(BaseModel):
    model_config = ConfigDict(extra="allow")  # the dataset's own description (uploads add fields)

    name: str
    num_classes: int
    input_shape: list[int]
    n_train: int
    n_test: int


class Ball(_Model):
    norm: str
    eps: float
    step_size: float


class Report(_Model):
    """``report.json``: see docs/ARCHITECTURE.md, "The report"."""

    format: Literal["hydra-compress-report/3"] = REPORT_FORMAT
    name: str | None = None
    arch: str
    #: ``model.onnx`` jobs: the user's graph (sha256, op counts, names, opset), as every variant records it
    source_graph: dict[str, Any] | None = None
    #: how the run used its hardware: precision of training and of the final evaluation, world size, backend
    resources: dict[str, Any] | None = None
    dataset: DatasetInfo
    objective: dict[str, Any]
    attack: Ball
    device: str
    headline_robust_metric: str
    comparison: list[ComparisonRow]
    seeds: list[int] | None = None
    aggregate: list[AggregateRow] | None = None
    interval_method: str
    samples: dict[str, Sample] = Field(default_factory=dict)
    procedures: dict[str, str] = Field(default_factory=dict)
    variants: dict[str, VariantResult]
    flags: list[Flag] = Field(default_factory=list, description="every flagged check, in variant order")
    check_rules: dict[str, str] = Field(default_factory=dict, description="check -> the rule it applies")
    spec: dict[str, Any]
    artifacts: dict[str, FileDigest] = Field(default_factory=dict)

    def metric_names(self) -> list[str]:
        """The metrics some network has, in the order of ``procedures`` (benign first)."""
        return [m for m in self.procedures if any(m in row.metrics for row in self.comparison)]


__all__ = [
    "REPORT_FORMAT",
    "Report",
    "VariantResult",
    "ComparisonRow",
    "AggregateRow",
    "Check",
    "Flag",
    "Inference",
    "Latency",
    "Allocation",
    "Sparsity",
    "Timings",
]
