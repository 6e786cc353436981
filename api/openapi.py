"""The service's OpenAPI document: FastAPI's, made to say exactly what the service accepts.

FastAPI derives the schema from the route signatures and from ``core.spec.JobSpec``. Three things it
cannot know, and which this module writes in (each has its twin check in the code, so "valid in the
schema" means "accepted" and "invalid" means "refused with a 4xx"; tests/service/test_fuzz.py holds
both sides to it with schemathesis):

- **Transport**: a header, query parameter or multipart field cannot carry JSON ``null``; an absent
  one is the default. ``anyOf [X, null]`` is therefore just ``X`` there.
- **What the service accepts of a job spec** that the core's CLI accepts more widely: uploads are
  named ``model:<id>`` / ``dataset:<id>`` (no paths), the data folder is the service's, image folders
  are refused, architectures are the catalogue's, the arguments of an architecture are bounded.
- **Rules pydantic states as validators** rather than field constraints: distinct ``pruning.k`` and
  ``pruning.methods`` (``uniqueItems``), ``k`` in (0, 1], the device names, ``npz`` needs a path,
  an objective names its ``type``; and, generated from their one declaration, a job starts from one of
  ``JobSpec.STARTING_POINTS``, a method whose pruner trains rates (``Pruner.trains_rates``) needs a
  prune stage and every k below 1, and the old flat spellings of the options models
  (``pruning.learned_tau``) are documented as deprecated.

What no schema can say is documented per operation instead (``SEMANTIC_422``): whether a referenced
upload exists, whether an uploaded file is what it claims to be, and whether an architecture fits its
dataset. Those are answered 422 with one of the error codes listed there.
"""

from __future__ import annotations

import copy
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.errors import SPEC_RULE_CODES
from api.validation import (
    DATASET_REF_PATTERN,
    DEVICE_PATTERN,
    KWARGS_SCHEMA,
    MODEL_REF_PATTERN,
    NO_NUL_PATTERN,
    allowed_devices,
    max_num_workers,
)
from service.settings import Settings, get_settings

# core.spec's cross-field rules that keep their own code (api.errors.SPEC_RULE_CODES): both operations
# that validate a job spec can answer them
_SPEC_RULES = tuple(sorted(SPEC_RULE_CODES))
# error_code values a schema-valid request can still get with a 422, per operation (documented in the
# operation's description; the fuzz test accepts exactly these).
SEMANTIC_422: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/v1/jobs"): (
        "invalid_reference",
        "incompatible_architecture",
        "invalid_model_kwargs",
        "invalid_normalization",
        "unknown_architecture",
        "unsupported_layer",
        "channel_unsupported",
        "invalid_k",
        "invalid_eps",
        "number_too_long",
        *_SPEC_RULES,
    ),
    ("post", "/v1/models"): (
        "invalid_upload",
        "invalid_model_kwargs",
        "invalid_normalization",
        "unknown_architecture",
    ),
    ("post", "/v1/datasets"): ("invalid_upload",),
    ("post", "/ui/api/spec-parse"): ("yaml_alias_refused", "nesting_too_deep", "number_too_long", "too_many_nodes"),
    ("post", "/v1/jobs/estimate"): ("invalid_reference", *_SPEC_RULES),
}
_SEMANTIC_TEXT = {
    "unsupported_precision": "fp16 on a CPU job (it needs CUDA's gradient scaler; bf16 runs on CPU)",
    "invalid_resources": "ranks and devices that cannot go together (gpus on a CPU job, processes with gpus, "
    "SyncBatchNorm without several GPUs)",
    "invalid_batch_size": "a global batch the job's ranks cannot split evenly",
    "invalid_budget": "`pruning.budget: macs` off channel granularity, or learned channel rates without it",
    "invalid_score_sharpness": "sharpness-aware scores with no method that trains scores",
    "conflicting_options": "an option given both nested and in its deprecated flat spelling, with different "
    "values (`pruning.learned.tau` and `pruning.learned_tau`; the field names the flat one)",
    "invalid_reference": "a `model:<id>` / `dataset:<id>` that is not one of your uploads (or was uploaded "
    "for other architecture arguments)",
    "incompatible_architecture": "the architecture does not fit the dataset (channels, input size, classes)",
    "invalid_model_kwargs": "an argument the chosen architecture does not take",
    "invalid_normalization": "a normalization with a number of channels the architecture does not have",
    "unknown_architecture": "an architecture that cannot be built",
    "unsupported_layer": "a layer the certified objectives cannot bound (MixTrain, CROWN-IBP)",
    "invalid_k": "a keep fraction too small for the network: one that keeps no weight of some conv/linear layer "
    "(uniform allocation; the detail names the layer), or under a global or learned allocation fewer weights "
    "than one per layer, or than `pruning.global_min_per_layer` per layer",
    "channel_unsupported": "a network channel pruning cannot rebuild smaller (`pruning.granularity: channel` "
    "with grouped or depthwise convolutions, concatenation, attention, norms other than BatchNorm)",
    "invalid_eps": "an attack radius beyond the input range: an l_inf eps above 1 (pixel space [0, 1]), an l_2 eps "
    "above the diameter sqrt(C·H·W) of the dataset's input box (the field names which objective or the evaluation)",
    "number_too_long": "an integer literal of more than 4300 digits (Python's limit for parsing one); the field names "
    "where it is",
    "yaml_alias_refused": "a YAML alias (`*name`): refused before anything is expanded (an alias bomb costs gigabytes)",
    "nesting_too_deep": "YAML or JSON nested deeper than 32 levels",
    "too_many_nodes": "a YAML document of more than 100,000 nodes",
    "invalid_upload": "the file is not what it must be (the detail names the problem: format, a pickle, "
    "a lying header, shapes, NaN/Inf, ...)",
}


def _strip_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf [X, {type: null}]`` -> ``X`` (keeping title, description and default)."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    rest = [o for o in options if o != {"type": "null"}]
    if len(rest) != 1 or len(rest) == len(options):
        return schema
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    if out.get("default", 0) is None:
        del out["default"]
    return {**copy.deepcopy(rest[0]), **out}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _architectures() -> list[str]:
    from core.models.zoo import TORCHVISION_PREFIX, list_models  # lazy: torch

    names = sorted(list_models())
    try:
        import torchvision

        names += sorted(TORCHVISION_PREFIX + n for n in torchvision.models.list_models(module=torchvision.models))
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    return names


def _tighten_job_spec(schemas: dict[str, Any], architectures: list[str], settings: Settings) -> None:
    job = schemas["JobSpec"]
    props = job["properties"]
    props["name"] = _nullable({"type": "string", "maxLength": 200, "pattern": NO_NUL_PATTERN})
    # the devices, data-loading processes and downloads the workers have (api.validation.check_worker_limits)
    devices = allowed_devices(settings)
    props["device"] = {
        **props["device"],
        "pattern": DEVICE_PATTERN,
        "enum": devices,
        "description": f"Where the job runs; this service's workers offer {', '.join(devices)}.",
    }
    # pydantic's ``_start_point``, generated from the rules' declarations: a job starts from one of
    # JobSpec.STARTING_POINTS, and a pruner that trains rates (Pruner.trains_rates) needs a prune stage
    from core.spec import JobSpec  # lazy: keeps the API's import light

    job["allOf"] = [
        {"anyOf": [_is_set(JobSpec, path) for path in JobSpec.STARTING_POINTS]},
        *_rate_training_needs_a_prune_stage(JobSpec),
    ]
    _tighten_model(schemas, architectures)
    _tighten_dataset(schemas, settings)
    _tighten_objectives_and_pruning(schemas)


def _tighten_model(schemas: dict[str, Any], architectures: list[str]) -> None:
    """``model``: the catalogue's architectures, uploaded checkpoints, or an uploaded ONNX graph."""
    model = schemas["ModelSpec"]["properties"]
    model["arch"] = {**model["arch"], "enum": architectures}
    model["kwargs"] = {**copy.deepcopy(KWARGS_SCHEMA), "title": "Kwargs"}
    model["checkpoint"] = {
        **_nullable({"type": "string", "pattern": MODEL_REF_PATTERN}),
        "title": "Checkpoint",
        "description": "Starting weights: an uploaded model, `model:<id>` (POST /v1/models).",
    }
    # model.onnx replaces arch and the starting checkpoint, and takes only the input normalisation
    # (ModelSpec._onnx_replaces_arch / _onnx_source)
    schemas["ModelSpec"]["anyOf"] = [
        {"not": {"required": ["onnx"]}},
        {"properties": {"onnx": {"type": "null"}}},
        {
            "required": ["onnx"],
            "not": {"required": ["arch"]},
            "properties": {
                "onnx": {"type": "string"},
                "checkpoint": {"type": "null"},
                "kwargs": {"propertyNames": {"enum": ["normalization", "mean", "std"]}},
            },
        },
    ]
    model["onnx"] = {
        **_nullable({"type": "string", "pattern": MODEL_REF_PATTERN}),
        "title": "Onnx",
        "description": "Your own network instead of `arch`: an ONNX upload, `model:<id>` (POST /v1/models "
        "without arch); its weights are the starting point, input shape and classes come from the graph.",
    }


def _tighten_dataset(schemas: dict[str, Any], settings: Settings) -> None:
    """``dataset``: the catalogue without server-side folders, uploads by id, what the workers allow."""
    dataset = schemas["DatasetSpec"]
    dprops = dataset["properties"]
    names = [n for n in dprops["name"]["enum"] if n != "imagefolder"]  # a server-side folder: refused
    dprops["name"] = {**dprops["name"], "enum": names}
    dprops["data_dir"] = {
        **dprops["data_dir"],
        "enum": ["data"],
        "description": "Chosen by the service; only the default is accepted.",
    }
    dprops["num_workers"] = {**dprops["num_workers"], "maximum": max_num_workers(settings)}
    if not settings.dataset_download:
        dprops["download"] = {
            **dprops["download"],
            "enum": [False],
            "description": "This service's workers do not download datasets.",
        }
    dprops["path"] = {
        **_nullable({"type": "string", "pattern": DATASET_REF_PATTERN}),
        "title": "Path",
        "description": "An uploaded dataset, `dataset:<id>` (POST /v1/datasets), with name `npz`.",
    }
    others = [n for n in names if n != "npz"]
    dataset["anyOf"] = [
        {"properties": {"name": {"enum": others}, "path": {"type": "null"}}},
        {"required": ["name", "path"], "properties": {"name": {"enum": ["npz"]}, "path": {"type": "string"}}},
    ]


def _tighten_objectives_and_pruning(schemas: dict[str, Any]) -> None:
    """The objectives' ``type`` tag, the pruning combinations and options generated from the pruners."""
    # the objective union is discriminated by ``type``: pydantic needs the tag whenever an objective is given
    from core.spec import OBJECTIVE_TYPES, EvaluationSpec, PruningSpec  # lazy: keeps the API's import light

    for name in (spec_class.__name__ for spec_class in OBJECTIVE_TYPES.values()):
        if name in schemas:
            required = schemas[name].setdefault("required", [])
            if "type" not in required:
                required.append("type")

    schemas["PruningSpec"]["anyOf"] = _pruning_combinations(PruningSpec)
    for section in (PruningSpec, EvaluationSpec):
        _document_flat_options(schemas, section)
    pruning = schemas["PruningSpec"]["properties"]
    pruning["methods"] = {**pruning["methods"], "uniqueItems": True}
    pruning["k"] = {
        **pruning["k"],
        "uniqueItems": True,
        "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    }


def _is_set(model: type[BaseModel], path: str) -> dict[str, Any]:
    """JSON Schema of "the value at the dotted ``path`` of ``model`` is not null", defaults applied: an
    absent key counts as set when the field's default is not null (``stages.pretrain``), else the key
    and every section on the way are required (``model.checkpoint``)."""
    parts = path.split(".")
    cls: Any = model
    info = None
    for part in parts:
        info = cls.model_fields[part]
        cls = next((t for t in (info.annotation, *get_args(info.annotation)) if _is_model(t)), None)
    assert info is not None
    required = info.get_default(call_default_factory=True) is None
    schema: dict[str, Any] = {"not": {"type": "null"}}
    for part in reversed(parts):
        schema = {"properties": {part: schema}, **({"required": [part]} if required else {})}
    return schema


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _pruning_has(field: str, schema: dict[str, Any], default_matches: bool) -> dict[str, Any]:
    """``pruning.<field>`` matches ``schema``; required (with ``pruning``) unless its default matches."""
    inner: dict[str, Any] = {"properties": {field: schema}}
    if default_matches:
        return {"properties": {"pruning": inner}}
    return {"required": ["pruning"], "properties": {"pruning": {**inner, "required": [field]}}}


def _served() -> list[tuple[str, str, list[str], list[str]]]:
    """Every (allocation, granularity) some method serves, with the methods whose pruner there trains
    rates (``Pruner.trains_rates``) and the others: what the pruner registry answers the validators."""
    from core.errors import CoreError
    from core.pruning.allocation import ALLOCATIONS, GRANULARITIES
    from core.pruning.methods import METHODS, pruner_class

    out = []
    for allocation in ALLOCATIONS:
        for granularity in GRANULARITIES:
            rates: list[str] = []
            plain: list[str] = []
            for method in METHODS.names():
                try:
                    cls = pruner_class(method, allocation, granularity)
                except CoreError:
                    continue
                (rates if cls.trains_rates else plain).append(method)
            if rates or plain:
                out.append((allocation, granularity, rates, plain))
    return out


def _rate_training_needs_a_prune_stage(job: Any) -> list[dict[str, Any]]:
    """``JobSpec._start_point``'s second rule: where a method's pruner trains rates, the prune stage
    runs. Per (allocation, granularity) with such a method: another allocation, another granularity,
    only methods that train no rates, or a prune stage with epochs >= 1."""
    from core.pruning.allocation import ALLOCATIONS, GRANULARITIES

    pruning = job.model_fields["pruning"].get_default(call_default_factory=True)
    runs = {
        "properties": {
            "stages": {"properties": {"prune": {"type": "object", "properties": {"epochs": {"minimum": 1}}}}}
        }
    }
    rules = []
    for allocation, granularity, rates, plain in _served():
        if not rates:
            continue
        branches = [runs]
        for field, value, every in (
            ("allocation", allocation, ALLOCATIONS),
            ("granularity", granularity, GRANULARITIES),
        ):
            others = [v for v in every if v != value]
            if others:
                branches.append(_pruning_has(field, {"enum": others}, getattr(pruning, field) in others))
        if plain:
            only_plain = {"items": {"enum": plain}}
            branches.append(_pruning_has("methods", only_plain, set(pruning.methods) <= set(plain)))
        rules.append({"anyOf": branches})
    return rules


def _pruning_combinations(spec: Any) -> list[dict[str, Any]]:
    """``PruningSpec._combination`` as JSON Schema, generated by asking the pruner registry
    (``core.pruning.methods.pruner_class``, what the validator asks) which methods serve each
    (allocation, granularity): one ``anyOf`` branch per served pair, a non-default field required.
    Where a method's pruner trains rates (``Pruner.trains_rates``), every k is below 1 unless only
    methods that train none are chosen (a branch of its own)."""
    defaults = {name: spec.model_fields[name].default for name in ("allocation", "granularity")}
    branches = []
    for allocation, granularity, rates, plain in _served():
        values = {"allocation": allocation, "granularity": granularity}
        required = [name for name, value in values.items() if value != defaults[name]]
        # only methods that train no rates: any k; with a method that trains rates: every k below 1
        groups = [(plain, False)] if plain else []
        if rates:
            groups.append((rates + plain, True))
        for methods, k_below_one in groups:
            branch: dict[str, Any] = {
                "properties": {
                    **{name: {"enum": [value]} for name, value in values.items()},
                    "methods": {"items": {"enum": methods}},
                }
            }
            if required:
                branch["required"] = required
            if k_below_one:
                branch["properties"]["k"] = {"items": {"exclusiveMaximum": 1}}
            branches.append(branch)
    return branches


def _document_flat_options(schemas: dict[str, Any], section: Any) -> None:
    """The old flat spellings of a section's options (``pruning.learned_tau`` for ``pruning.learned.tau``;
    ``evaluation.bounds: [ibp]``), still accepted (``core.config.nest_flat_options``): each documented
    as deprecated with its option's schema, generated from the options models."""
    props = schemas[section.__name__]["properties"]
    for field, options in section.options_fields().items():
        option_props = schemas[options.__name__]["properties"]
        for flat, option in options.flat_fields().items():
            props[flat] = {
                **{k: v for k, v in copy.deepcopy(option_props[option]).items() if k != "default"},
                "title": flat.replace("_", " ").capitalize(),
                "description": f"Deprecated: the old spelling of `{_section_name(section)}.{field}.{option}`.",
                "deprecated": True,
            }
        if options.shorthand is not None:
            nested = props[field]
            short = {
                **copy.deepcopy(option_props[options.shorthand]),
                "description": f"Deprecated: the old form of `{field}.{options.shorthand}`.",
                "deprecated": True,
            }
            keep = {k: v for k, v in nested.items() if k in ("title", "description")}
            ref = {k: v for k, v in nested.items() if k not in ("title", "description", "default")}
            props[field] = {**keep, "anyOf": [ref, short]}


def _section_name(section: Any) -> str:
    """The JobSpec field that holds a section model (``pruning`` for PruningSpec)."""
    from core.spec import JobSpec

    return next(name for name, info in JobSpec.model_fields.items() if info.annotation is section)


def _tighten_uploads(schemas: dict[str, Any], architectures: list[str]) -> None:
    for name, schema in schemas.items():
        if not name.startswith("Body_upload_"):
            continue
        props = schema["properties"]
        for key, prop in list(props.items()):
            props[key] = _strip_null(prop)
            if props[key].get("type") == "string" and key == "name":
                props[key]["pattern"] = NO_NUL_PATTERN
        if "file" in props:
            props["file"]["minLength"] = 1
        if "arch" in props:
            enum = architectures + (["onnx"] if name.startswith("Body_upload_model") else [])
            props["arch"] = {**props["arch"], "enum": enum}
        if "kwargs" in props:  # sent as a JSON part (the route parses it): an object, like a job's
            props["kwargs"] = {**copy.deepcopy(KWARGS_SCHEMA), "title": "Kwargs", "default": {}}


def _document(paths: dict[str, Any]) -> None:
    for path, ops in paths.items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                param["schema"] = _strip_null(param["schema"])
            codes = SEMANTIC_422.get((method, path))
            if codes:
                lines = "\n".join(f"- `{c}`: {_SEMANTIC_TEXT[c]}" for c in codes)
                op["description"] = (
                    f"{op.get('description', '')}\n\nBesides schema violations (`validation_error`), a 422 "
                    f"answers what no schema can check, with one of these `error_code`s:\n{lines}"
                ).strip()
            content = op.get("requestBody", {}).get("content", {})
            multipart = content.get("multipart/form-data")
            if multipart is not None:
                multipart["encoding"] = {"kwargs": {"contentType": "application/json"}} if "models" in path else {}
                if not multipart["encoding"]:
                    del multipart["encoding"]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for ``app`` with the service's rules written in (cached on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        openapi_version=app.openapi_version,
    )
    schemas = schema.get("components", {}).get("schemas", {})
    architectures = _architectures()
    settings = getattr(app.state, "settings", None) or get_settings()
    if "JobSpec" in schemas:
        _tighten_job_spec(schemas, architectures, settings)
    _tighten_uploads(schemas, architectures)
    _document(schema.get("paths", {}))
    app.openapi_schema = schema
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve ``build_openapi(app)`` at the app's ``openapi_url`` (and in /docs)."""
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
