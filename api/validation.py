"""Request checks the job-spec model cannot make, mirrored exactly by the published schema (api/openapi.py).

The rule the fuzz test (tests/service/test_fuzz.py) holds the API to: a request the OpenAPI document
calls valid is accepted, and one it calls invalid is refused with a 4xx, never a 5xx. So every limit
here has its twin in ``api.openapi``, and both read the constants below.

- Nothing unstorable reaches the database: a NUL character (Postgres text and JSONB refuse it) or a
  non-finite number (``NaN``/``Infinity``: Python's JSON parser accepts them, JSONB does not) anywhere
  in a submitted value is a 422 naming the field, not a 500 from the driver.
- Architecture arguments are the ones the catalogue's architectures take, with bounds: an integer
  that is only refused when the worker builds the network (or that builds a network nobody can hold
  in memory) is refused at the door.
"""

from __future__ import annotations

import math
import re
from typing import Any

from api.errors import ApiError, ErrorCode
from core.models.zoo import NORMALIZATIONS as MODEL_NORMALIZATIONS
from service.settings import Settings

# The largest page offset (and event cursor) we accept: far beyond any real table, well inside the
# 32-bit INTEGER that SQLite and Postgres both bind without overflow.
MAX_OFFSET = 2**31 - 1
MAX_EVENT_ID = 2**53  # job_events.id is BIGINT; 2**53 is also the largest integer a JSON client keeps exact

# Identifiers in paths: uuids in practice; the character set keeps NULs and control characters out of SQL.
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
ARTIFACT_NAME_PATTERN = r"^[A-Za-z0-9._@+=-]{1,200}$"
NO_NUL_PATTERN = r"^[^\x00]*$"
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:[0-9]{1,3})$"
MODEL_REF_PATTERN = r"^model:[A-Za-z0-9._-]{1,64}$"
DATASET_REF_PATTERN = r"^dataset:[A-Za-z0-9._-]{1,64}$"

# model.kwargs (job specs and model uploads): name -> (JSON schema, check)
NORMALIZATIONS = tuple(MODEL_NORMALIZATIONS)  # the zoo's presets, defined once there
MAX_CLASSES = 100_000
MAX_CHANNELS = 64
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 4, 1024
MAX_NORM_VALUES = 64
MAX_NORM_ABS = 1e6


def _int_schema(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _norm_values(positive: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "number", "maximum": MAX_NORM_ABS}
    if positive:
        item["exclusiveMinimum"] = 0
    else:
        item["minimum"] = -MAX_NORM_ABS
    return {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_NORM_VALUES}


KWARGS_PROPERTIES: dict[str, dict[str, Any]] = {
    "num_classes": _int_schema(1, MAX_CLASSES),
    "in_channels": _int_schema(1, MAX_CHANNELS),
    "input_size": _int_schema(MIN_INPUT_SIZE, MAX_INPUT_SIZE),
    "normalization": {"type": "string", "enum": list(NORMALIZATIONS)},
    "mean": _norm_values(positive=False),
    "std": _norm_values(positive=True),
}
KWARGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": KWARGS_PROPERTIES,
    "additionalProperties": False,
    "description": "Architecture arguments (GET /v1/catalogue/architectures lists each architecture's): "
    "num_classes, in_channels, input_size, normalization, mean, std. Which of them an architecture takes, "
    "and whether they fit the dataset, is checked at submission (422 invalid_model_kwargs, "
    "invalid_normalization or incompatible_architecture).",
}


def _bad(field: str, detail: str) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, f"{field}: {detail}", field)


def check_storable(value: Any, field: str) -> None:
    """Refuse (422) a NUL character in any string or key, or a non-finite number, anywhere in ``value``."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _bad(field, "NUL characters are not accepted")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(field, f"{value} is not a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, field)
            check_storable(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_storable(item, f"{field}.{i}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_model_kwargs(kwargs: Any, field: str = "model.kwargs") -> dict[str, Any]:
    """Refuse (422) architecture arguments outside ``KWARGS_SCHEMA`` (unknown names, wrong types,
    bounds); return them with integral numbers as ints (JSON Schema's ``integer`` admits ``3.0``)."""
    if not isinstance(kwargs, dict):
        raise _bad(field, "must be a JSON object")
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        spec = KWARGS_PROPERTIES.get(name)
        where = f"{field}.{name}"
        if spec is None:
            raise ApiError(
                ErrorCode.VALIDATION_ERROR,
                f"{field}: unknown architecture argument {name!r}; the service takes {', '.join(KWARGS_PROPERTIES)}",
                field,
            )
        if spec.get("type") == "integer":
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)
            if not _is_int(value) or not spec["minimum"] <= value <= spec["maximum"]:
                raise _bad(where, f"must be an integer in [{spec['minimum']}, {spec['maximum']}], got {value!r}")
        elif "enum" in spec:
            if value not in spec["enum"]:
                raise _bad(where, f"must be one of {', '.join(spec['enum'])}, got {value!r}")
        else:  # mean / std
            positive = name == "std"
            ok = (
                isinstance(value, list)
                and 1 <= len(value) <= MAX_NORM_VALUES
                and all(
                    _is_number(v) and (v > 0 if positive else v >= -MAX_NORM_ABS) and v <= MAX_NORM_ABS for v in value
                )
            )
            if not ok:
                bound = "> 0" if positive else f">= {-MAX_NORM_ABS:g}"
                raise _bad(where, f"must be a list of 1 to {MAX_NORM_VALUES} numbers {bound} and <= {MAX_NORM_ABS:g}")
        out[name] = value
    return out


_DEVICE = re.compile(DEVICE_PATTERN)


def check_device(device: str) -> None:
    if not _DEVICE.fullmatch(device):
        raise _bad("device", "must be auto, cpu, cuda or cuda:N")


def allowed_devices(settings: Settings) -> list[str]:
    """The job devices this service's workers can run (``settings.worker_devices``): auto, each listed
    device, and plain ``cuda`` when one of them is a GPU."""
    devices = settings.worker_device_list
    allowed = {"auto", *devices}
    if any(d.startswith("cuda") for d in devices):
        allowed.add("cuda")
    return sorted(allowed)


def max_num_workers(settings: Settings) -> int:
    """The largest ``dataset.num_workers`` accepted: the workers' cores, within the spec's own bound."""
    from core.data.datasets import DatasetSpec

    spec_bound = next(
        (m.le for m in DatasetSpec.model_fields["num_workers"].metadata if getattr(m, "le", None) is not None), 64
    )
    return min(int(spec_bound), settings.max_dataloader_workers)


def check_worker_limits(device: str, num_workers: int, download: bool, settings: Settings) -> None:
    """Refuse (422) what the workers could not run, which would otherwise fail only once the job starts:
    a device none of them has, more data-loading processes than their cores, a dataset download
    where they cannot download. The published schema says the same (api/openapi.py)."""
    allowed = allowed_devices(settings)
    if device not in allowed:
        raise _bad("device", f"the workers have no device {device!r}; this service runs jobs on {', '.join(allowed)}")
    most = max_num_workers(settings)
    if num_workers > most:
        raise _bad(
            "dataset.num_workers", f"at most {most} data-loading processes (the workers' cores), got {num_workers}"
        )
    if download and not settings.dataset_download:
        raise _bad(
            "dataset.download",
            "this service's workers do not download datasets: use a catalogue dataset the service holds "
            "or upload an .npz (POST /v1/datasets)",
        )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def check_json_types(raw: Any, validated: Any, field: str = "") -> None:
    """Refuse (422) a value pydantic's lax mode converted across JSON types: ``true`` for a number,
    ``1`` or ``"yes"`` for a boolean, ``"3"`` for an integer. The schema says number, boolean,
    integer; accepting the conversion would accept what the schema calls invalid. ``raw`` is the
    request's JSON, ``validated`` the model dumped in JSON mode; only keys the request gave are
    compared (a ``null`` may be replaced by a default)."""
    if raw is None:
        return
    kind, got = _json_type(raw), _json_type(validated)
    if kind != got:
        where = field or "body"
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"{where}: expected a {got}, got a {kind} ({raw!r:.60})", field or None
        )
    if kind == "object":
        for key, value in raw.items():
            if key in validated:
                check_json_types(value, validated[key], f"{field}.{key}" if field else str(key))
    elif kind == "array" and len(raw) == len(validated):
        for i, (a, b) in enumerate(zip(raw, validated)):
            check_json_types(a, b, f"{field}.{i}")
