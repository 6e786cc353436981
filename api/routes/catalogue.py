"""What a job spec may name: architectures, datasets and objectives (with the paper's defaults).

Served from the core's own registries, so the catalogue can never list something the validator
refuses (or miss something it accepts).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.encoders import jsonable_encoder

from api.deps import CurrentPrincipal
from api.schemas import ERROR_RESPONSES as ERRORS
from api.schemas import CataloguePublic

router = APIRouter(prefix="/catalogue", tags=["catalogue"])

# Accepted by the core's CLI but not by the service (a server-side folder path); see routes/jobs.py.
SERVICE_REFUSED_DATASETS = {"imagefolder"}


def _entries(items: dict[str, Any]) -> dict[str, Any]:
    data = [
        {"name": name, "info": jsonable_encoder(info, custom_encoder={type: lambda t: t.__name__})}
        for name, info in sorted(items.items())
    ]
    for entry in data:
        if not isinstance(entry["info"], dict):
            entry["info"] = {"value": entry["info"]}
    return {"data": data, "count": len(data)}


@router.get("/architectures", response_model=CataloguePublic, responses=ERRORS)
def architectures(_principal: CurrentPrincipal) -> dict[str, Any]:
    """Architectures a job or an uploaded model may use, with their arguments."""
    from core.models.zoo import list_models  # lazy: only the routes that need it build networks

    return _entries(dict(list_models()))


@router.get("/datasets", response_model=CataloguePublic, responses=ERRORS)
def datasets(_principal: CurrentPrincipal) -> dict[str, Any]:
    """Dataset names a job may use ('npz' takes an uploaded dataset as path 'dataset:<id>')."""
    from core.data.datasets import dataset_catalogue

    catalogue = {k: v for k, v in dataset_catalogue().items() if k not in SERVICE_REFUSED_DATASETS}
    if "npz" in catalogue:
        catalogue["npz"] = {**catalogue["npz"], "service": "upload with POST /v1/datasets, then path 'dataset:<id>'"}
    return _entries(catalogue)


@router.get("/objectives", response_model=CataloguePublic, responses=ERRORS)
def objectives(_principal: CurrentPrincipal) -> dict[str, Any]:
    """Training objectives with their defaults and JSON schema."""
    from core.spec import BOUND_OBJECTIVES, OBJECTIVE_TYPES

    items = {
        name: {
            "description": " ".join((cls.__doc__ or "").split()),
            "defaults": cls().model_dump(mode="json"),
            "schema": cls.model_json_schema(),
            "needs_bound_support": name in BOUND_OBJECTIVES,
        }
        for name, cls in OBJECTIVE_TYPES.items()
    }
    for name, cls in OBJECTIVE_TYPES.items():  # pgd, trades: eps and step_size depend on the norm
        if hasattr(cls, "defaults_by_norm"):
            items[name]["defaults_by_norm"] = cls.defaults_by_norm()
    return _entries(items)
