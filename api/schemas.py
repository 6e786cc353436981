"""Response shapes (the template's ``XPublic`` / ``XsPublic(data, count)`` families).

Requests need no schema of their own: a job is submitted as ``core.spec.JobSpec`` itself, so the API,
the CLI and the worker validate against exactly one definition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, computed_field, field_validator

from core.vocab import STAGES

TAG_PATTERN = r"^[A-Za-z0-9._:/+-]+$"


class ErrorPublic(BaseModel):
    error_code: str
    detail: str
    field: str | None = None


# For OpenAPI: the error statuses a tenant-facing route can answer with, all with one body (400: a body
# that cannot be parsed, e.g. broken multipart; 503: the database is unavailable).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic} for code in (400, 401, 404, 409, 413, 422, 429, 503)
}


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str | None
    status: str = Field(description="queued | running | succeeded | failed | canceled")
    stage: str | None = Field(None, description=" | ".join(STAGES))
    variant: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    fraction: float = Field(0.0, description="Fraction of the whole run done, in [0, 1].")
    metrics: dict[str, Any] | None = None
    error_reason: str | None = None
    attempt: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    tags: list[str] = Field(default_factory=list, description="Your labels (PATCH /v1/jobs/{id}).")
    note: str | None = Field(None, description="Your note (PATCH /v1/jobs/{id}).")
    report: dict[str, Any] | None = Field(None, exclude=True)  # read for the headlines, never sent here

    @field_validator("tags", mode="before")
    @classmethod
    def _no_tags(cls, value: Any) -> Any:
        return [] if value is None else value

    @computed_field(  # type: ignore[prop-decorator]
        description="Where the job is, for a person: the stage and variant while it runs, the final status "
        "once it ended (a finished job's `stage` is the last one it ran, e.g. 'evaluate lwm_k0.1')."
    )
    @property
    def phase(self) -> str:
        if self.status in ("succeeded", "failed", "canceled"):
            return self.status
        if self.status == "queued" or not self.stage:
            return self.status
        return " ".join(str(p) for p in (self.stage, self.variant) if p)

    @computed_field(  # type: ignore[prop-decorator]
        description="A succeeded job's every network in one line each: variant, measured sparsity, benign "
        "accuracy and the report's headline robust metric (report.json `comparison`)."
    )
    @property
    def headlines(self) -> list[VariantHeadline]:
        return variant_headlines(self.report)


class VariantHeadline(BaseModel):
    variant: str
    method: str | None = None
    k: float | None = None
    sparsity: float | None = None
    benign_acc: float | None = None
    robust_metric: str | None = None
    robust_acc: float | None = Field(None, description="The value of `robust_metric`.")


def flat_comparison(report: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """A stored report's headline metric and its comparison rows with each metric as a column
    (``variant, base, method, k, seed, sparsity, benign_acc, ...``): the shape the job list and the
    compare table show. Any stored format is read through ``load_report`` (format /2 is migrated)."""
    from core.pipeline.report_build import load_report  # pydantic only, no torch

    try:
        typed = load_report(report)
    except ValueError:  # not a full report of a known format (e.g. a hand-made one): its rows as they are
        rows = [dict(r) for r in report.get("comparison") or [] if isinstance(r, dict)]
        return report.get("headline_robust_metric"), rows
    rows = [
        {
            "variant": r.variant,
            "base": r.base,
            "method": r.method,
            "k": r.k,
            "seed": r.seed,
            "sparsity": r.sparsity,
            **r.metrics,
        }
        for r in typed.comparison
    ]
    return typed.headline_robust_metric, rows


def variant_headlines(report: dict[str, Any] | None) -> list[VariantHeadline]:
    """One headline per network of a report (dense first, as the report orders them)."""
    if not report:
        return []
    metric, rows = flat_comparison(report)
    out = []
    for row in rows:
        value = row.get(metric) if metric else None
        out.append(
            VariantHeadline(
                variant=str(row.get("variant")),
                method=row.get("method"),
                k=row.get("k"),
                sparsity=row.get("sparsity"),
                benign_acc=row.get("benign_acc"),
                robust_metric=metric,
                robust_acc=value if isinstance(value, (int, float)) else None,
            )
        )
    return out


class JobDetail(JobPublic):
    spec: dict[str, Any] = Field(description="The validated spec, with every default filled in.")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class JobEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    payload: dict[str, Any] | None
    created_at: datetime


class JobEventsPublic(BaseModel):
    data: list[JobEventPublic]
    count: int
    next_after: int = Field(description="Pass as `after` to get only newer events.")


class ArtifactPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    size: int
    sha256: str
    content_type: str
    created_at: datetime


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    arch: str
    arch_kwargs: dict[str, Any]
    format: str
    size: int
    sha256: str
    created_at: datetime

    @computed_field(  # type: ignore[prop-decorator]
        description='Use as `model.checkpoint` in a job spec ("model:<id>"), or as `model.onnx` for an ONNX upload.'
    )
    @property
    def ref(self) -> str:
        return f"model:{self.id}"


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    num_classes: int | None
    n_samples: int | None
    input_shape: list[int] | None
    size: int
    sha256: str
    created_at: datetime

    @computed_field(description='Use as `dataset.path` with `dataset.name = "npz"` ("dataset:<id>").')  # type: ignore[prop-decorator]
    @property
    def ref(self) -> str:
        return f"dataset:{self.id}"


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class CatalogueEntry(BaseModel):
    name: str
    info: dict[str, Any]


class CataloguePublic(BaseModel):
    data: list[CatalogueEntry]
    count: int


class HealthPublic(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class JobLabels(BaseModel):
    """PATCH /v1/jobs/{id}: what a person may change on a job (fields left out stay as they are)."""

    model_config = ConfigDict(extra="forbid")

    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=TAG_PATTERN)]] | None = Field(
        None, max_length=20, description="Replaces the job's tags: at most 20, each 1-40 of A-Z a-z 0-9 . _ : / + -."
    )
    note: str | None = Field(None, max_length=2000, description="Replaces the note; an empty string clears it.")


class CompareJob(BaseModel):
    id: str
    name: str | None
    status: str
    arch: str | None = None
    dataset: str | None = None
    objective: str | None = None
    headline_robust_metric: str | None = None
    note: str | None = Field(None, description="Why this job has no rows (not succeeded), if it has none.")


class ComparePublic(BaseModel):
    jobs: list[CompareJob]
    rows: list[dict[str, Any]] = Field(
        description="Every job's report comparison rows, each with `job_id` and `job_name` added (the job order "
        "given in `ids`, then the report's own order)."
    )
    metrics: list[str] = Field(description="The metric columns found in the rows, benign first.")


class EstimateStage(BaseModel):
    stage: str
    runs: int = Field(description="How many times this stage runs (per variant and seed).")
    epochs: int
    samples: int = Field(description="Training samples per epoch (or evaluated samples).")
    passes_per_sample: float = Field(description="Forward+backward passes per sample (attack steps included).")
    sample_passes: float = Field(description="runs x epochs x samples x passes_per_sample (+ per-epoch validation).")
    seconds: float | None = None


class EstimatePublic(BaseModel):
    stages: list[EstimateStage]
    total_sample_passes: float
    throughput: float | None = Field(None, description="Measured sample-passes per second on this architecture.")
    throughput_source: str
    seconds: float | None = None
    notes: list[str] = Field(default_factory=list)
