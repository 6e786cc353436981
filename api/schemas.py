"""Response shapes (the template's ``XPublic`` / ``XsPublic(data, count)`` families).

Requests need no schema of their own: a job is submitted as ``core.spec.JobSpec`` itself, so the API,
the CLI and the worker validate against exactly one definition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from core.vocab import STAGES


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
