"""Uploaded starting networks: a checkpoint is accepted only if it loads into its declared architecture.

Checking at the door (every tensor name and shape, no NaN/Inf, weights-only formats) means a job that
names ``model:<id>`` cannot fail hours later on a bad file, and the bytes we keep are known-good.
Pickled code never runs: safetensors or ``torch.load(weights_only=True)`` only, in ``core.checkpoint``.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile

from api.deps import CurrentPrincipal, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError, ErrorCode
from api.schemas import ERROR_RESPONSES as ERRORS
from api.schemas import ModelPublic, ModelsPublic
from api.uploading import receive_upload
from core.errors import CoreError
from service.db import uploads
from service.db.base import UploadedModel, new_id

router = APIRouter(prefix="/models", tags=["models"])

# Fields of core's errors, renamed to the form fields of this endpoint.
_FORM_FIELD = {
    "model.checkpoint": "file",
    "model.checkpoint_format": "format",
    "model.arch": "arch",
    "model.kwargs": "kwargs",
}


def _upload_error(err: CoreError) -> ApiError:
    code = ErrorCode.INVALID_UPLOAD
    return ApiError(code, err.message, _FORM_FIELD.get(err.field or "", err.field or "file"))


def _parse_kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"kwargs is not valid JSON: {exc.msg}", "kwargs") from exc
    if not isinstance(value, dict):
        raise ApiError(ErrorCode.VALIDATION_ERROR, "kwargs must be a JSON object", "kwargs")
    return value


@router.post("", status_code=201, response_model=ModelPublic, responses=ERRORS)
def upload_model(
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[UploadFile, File(description="safetensors, or a weights-only torch state dict")],
    arch: Annotated[str, Form(description="Architecture name from GET /v1/catalogue/architectures.")],
    kwargs: Annotated[str, Form(description="JSON object of architecture arguments.")] = "{}",
    checkpoint_format: Annotated[
        Literal["auto", "safetensors", "state_dict", "hydra"], Form(alias="format")
    ] = "auto",
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> UploadedModel:
    """Upload a checkpoint; it is loaded into the declared architecture before it is accepted."""
    arch_kwargs = _parse_kwargs(kwargs)
    from core.checkpoint import load_weights  # lazy: torch stays out of the import of the API
    from core.models import create_model, list_models

    if arch not in list_models() and not arch.startswith("torchvision:"):
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"unknown architecture {arch!r}", "arch")
    with receive_upload(file, settings, suffix=".weights") as received:
        try:
            model = create_model(arch, **arch_kwargs)
            info = load_weights(received.path, model, checkpoint_format)
        except CoreError as err:
            raise _upload_error(err) from err
        except TypeError as exc:
            raise ApiError(ErrorCode.VALIDATION_ERROR, f"bad architecture arguments: {exc}", "kwargs") from exc
        detected = str(info.get("format", checkpoint_format))
        model_id = new_id()
        extension = "safetensors" if detected in ("safetensors", "compressed") else "pt"
        key = f"tenants/{principal.tenant_id}/models/{model_id}/weights.{extension}"
        store.put_file(key, received.path)
        return uploads.create_model(
            session,
            model_id=model_id,
            tenant_id=principal.tenant_id,
            name=name or file.filename or model_id,
            arch=arch,
            arch_kwargs=arch_kwargs,
            format=detected,
            storage_key=key,
            size=received.size,
            sha256=received.sha256,
        )


@router.get("", response_model=ModelsPublic, responses=ERRORS)
def list_models(
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """List your uploaded models."""
    rows, count = uploads.list_models(session, principal.tenant_id, limit, offset)
    return {"data": rows, "count": count}


@router.get("/{model_id}", response_model=ModelPublic, responses=ERRORS)
def get_model(model_id: str, principal: CurrentPrincipal, session: ReadSessionDep) -> UploadedModel:
    """One uploaded model."""
    row = uploads.get_model(session, principal.tenant_id, model_id)
    if row is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no model {model_id}", "model_id")
    return row
