"""Uploaded starting networks: a checkpoint is accepted only if it loads into its declared architecture.

Checking at the door (every tensor name and shape, no NaN/Inf, weights-only formats) means a job that
names ``model:<id>`` cannot fail hours later on a bad file, and the bytes we keep are known-good.
Pickled code never runs: safetensors or ``torch.load(weights_only=True)`` only, in ``core.io.checkpoint``.
The network is built on the ``meta`` device for the check (shapes and dtypes, no memory), so a request
naming a huge architecture costs nothing; the format is the one the bytes show, and a file named
``.safetensors`` must be one. Nothing is stored (object or row) unless every check passed.

An ONNX graph (``arch`` left out, or ``onnx``) is the user's own network: it is checked, converted and
verified against onnxruntime by ``core.models.onnx_import`` (nothing in it runs as code; a refusal is a
422 naming the node or the problem), stored as sent, and recorded with what the graph says (input
shape, classes, names, opset, op counts, and whether the bound code supports every layer) in
``arch_kwargs``; a job names it as ``model.onnx: model:<id>``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import CurrentPrincipal, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError, ErrorCode
from api.schemas import ERROR_RESPONSES as ERRORS
from api.schemas import ModelPublic, ModelsPublic
from api.uploading import ReceivedFile, add_read_routes, receive_upload
from api.validation import NO_NUL_PATTERN, check_model_kwargs, check_storable
from core.errors import CoreError
from core.safe_parse import check_json
from service.db import uploads
from service.db.base import UploadedModel, new_id

router = APIRouter(prefix="/models", tags=["models"])

# Fields of core's errors, renamed to the form fields of this endpoint.
_FORM_FIELD = {
    "model.checkpoint": "file",
    "model.checkpoint_format": "format",
    "model.arch": "arch",
    "model.kwargs": "kwargs",
    "model.onnx": "file",
}
ONNX_ARCH = "onnx"


def _upload_error(err: CoreError, temp_name: str = "", shown_name: str | None = None) -> ApiError:
    """422 ``invalid_upload`` naming the form field, and the file as the user called it (not our temp name)."""
    message = (
        err.message.replace(temp_name, repr(shown_name) if shown_name else "the file") if temp_name else err.message
    )
    return ApiError(ErrorCode.INVALID_UPLOAD, message, _FORM_FIELD.get(err.field or "", err.field or "file"))


def _parse_kwargs(text: str) -> dict[str, Any]:
    check_json(text, "kwargs")  # depth and integer length before json.loads recurses (422 naming the place)
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:  # JSONDecodeError
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"kwargs is not valid JSON: {getattr(exc, 'msg', exc)}", "kwargs"
        ) from exc
    if not isinstance(value, dict):
        raise ApiError(ErrorCode.VALIDATION_ERROR, "kwargs must be a JSON object", "kwargs")
    check_storable(value, "kwargs")
    return check_model_kwargs(value, "kwargs")


def _build_for_check(arch: str, arch_kwargs: dict[str, Any]) -> Any:
    """The declared network on the ``meta`` device (no memory, no init), or on the CPU if a builder
    cannot run there."""
    import torch

    from core.models.zoo import create_model

    try:
        with torch.device("meta"):
            return create_model(arch, **arch_kwargs)
    except CoreError:
        raise
    except TypeError:
        raise
    except Exception:  # noqa: BLE001 - a builder the meta device cannot run
        with torch.random.fork_rng(devices=[]):
            return create_model(arch, **arch_kwargs)


@router.post("", status_code=201, response_model=ModelPublic, responses=ERRORS)
def upload_model(
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[UploadFile, File(description="safetensors, a weights-only torch state dict, or an .onnx network")],
    arch: Annotated[
        str | None,
        Form(
            description="Architecture name from GET /v1/catalogue/architectures for a weights file; "
            "left out (or 'onnx') for an ONNX network."
        ),
    ] = None,
    kwargs: Annotated[str, Form(description="JSON object of architecture arguments (a JSON part).")] = "{}",
    checkpoint_format: Annotated[Literal["auto", "safetensors", "state_dict", "hydra"], Form(alias="format")] = "auto",
    name: Annotated[str | None, Form(max_length=200, pattern=NO_NUL_PATTERN)] = None,
) -> UploadedModel:
    """Upload a checkpoint, loaded into the declared architecture before it is accepted; or (``arch``
    left out) an ONNX network, converted and checked against onnxruntime before it is accepted."""
    arch_kwargs = _parse_kwargs(kwargs)
    if arch is None or arch == ONNX_ARCH:
        if arch_kwargs:
            raise ApiError(
                ErrorCode.INVALID_UPLOAD, "an ONNX network takes no kwargs (it is the graph as sent)", "kwargs"
            )
        return _upload_onnx(principal.tenant_id, session, settings, store, file, name, arch is None)
    from core.io.weights import precheck_weights_file  # lazy: only this route reads weights files
    from core.io.weights_check import check_weights_file
    from core.models.zoo import is_catalogue_name

    if not is_catalogue_name(arch):
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"unknown architecture {arch!r}", "arch")
    declared = checkpoint_format
    if declared == "auto" and (file.filename or "").lower().endswith(".safetensors"):
        declared = "safetensors"  # a file that calls itself safetensors must be one (not a renamed pickle)
    with receive_upload(file, settings, suffix=".weights") as received:
        try:
            precheck_weights_file(received.path, declared)  # garbage is refused before any network is built
            model = _build_for_check(arch, arch_kwargs)
            info = check_weights_file(received.path, model, declared)  # streamed: memory stays a few chunks
        except CoreError as err:
            raise _upload_error(err, received.path.name, file.filename) from err
        except TypeError as exc:
            raise ApiError(ErrorCode.VALIDATION_ERROR, f"bad architecture arguments: {exc}", "kwargs") from exc
        detected = str(info.get("format", checkpoint_format))
        extension = "safetensors" if detected in ("safetensors", "compressed") else "pt"
        return _keep(
            session,
            store,
            principal.tenant_id,
            received,
            name or file.filename,
            f"weights.{extension}",
            arch=arch,
            arch_kwargs=arch_kwargs,
            format=detected,
        )


def _keep(
    session: Any, store: Any, tenant_id: int, received: ReceivedFile, name: str | None, filename: str, **columns: Any
) -> UploadedModel:
    """Store the checked file as ``tenants/<tenant>/models/<new id>/<filename>`` and record it (``columns``:
    arch, arch_kwargs, format); an unnamed upload is named by its id."""
    model_id = new_id()
    key = f"tenants/{tenant_id}/models/{model_id}/{filename}"
    store.put_file(key, received.path)
    return uploads.create_model(
        session,
        model_id=model_id,
        tenant_id=tenant_id,
        name=name or model_id,
        storage_key=key,
        size=received.size,
        sha256=received.sha256,
        **columns,
    )


def _upload_onnx(
    tenant_id: int, session: Any, settings: Any, store: Any, file: UploadFile, name: str | None, arch_missing: bool
) -> UploadedModel:
    from core.certify.bounds import check_supported  # lazy: torch and onnx only for this route
    from core.models.onnx_import import MAX_NODES, import_onnx
    from core.models.onnx_network import create_onnx_model
    from core.pipeline.preflight import onnx_channel_refusal

    with receive_upload(file, settings, suffix=".onnx") as received:
        try:
            source = import_onnx(received.path.read_bytes(), max_bytes=settings.max_upload_bytes, max_nodes=MAX_NODES)
        except CoreError as err:
            if err.code == "onnx_unparsable" and arch_missing:  # most likely a weights file without its arch
                raise ApiError(
                    ErrorCode.INVALID_UPLOAD,
                    "arch is required for a weights file (the file is not an ONNX network, which needs none)",
                    "arch",
                ) from err
            raise _upload_error(err, received.path.name, file.filename) from err
        graph = source.describe()
        try:  # recorded now, so a bound-based job is refused at submission naming the layer
            check_supported(create_onnx_model(source))
            graph["bounds_unsupported"] = None
        except CoreError as err:
            graph["bounds_unsupported"] = err.message
        # and whether channel pruning can rebuild it (Torch-Pruning's dependency graph), likewise
        graph["channel_unsupported"] = onnx_channel_refusal(create_onnx_model(source), source.input_shape)
        return _keep(
            session,
            store,
            tenant_id,
            received,
            name or file.filename,
            "network.onnx",
            arch=ONNX_ARCH,
            arch_kwargs=graph,
            format=ONNX_ARCH,
        )


add_read_routes(
    router, "model", public=ModelPublic, listed=ModelsPublic, list_rows=uploads.list_models, get_row=uploads.get_model
)
