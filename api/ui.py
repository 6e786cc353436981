"""The web dashboard at ``/ui``: server-rendered pages (Jinja2) and a little plain JavaScript.

How it keeps the API's rules: the pages are shells that hold no tenant's data. The browser keeps the
API key in ``sessionStorage`` (gone when the tab closes, never in a URL or a cookie; in
``localStorage`` only when the person ticks "remember in this browser", until Forget) and the page's
script calls the same JSON API as every other client, with ``Authorization: Bearer``: the list, a
job, its report and artifacts, the live event stream (``fetch`` streaming: ``EventSource`` cannot
send headers), submission and cancel. So a key sees its own tenant's jobs and nothing else, exactly
as with curl. Two helpers for the spec editor live here, behind the same key: the spec template
built from the catalogue's defaults, and parsing the editor's YAML/JSON with the line of every field
(so that a validation error is shown at the field it names).

Everything the pages load is served by the service (``/ui/static``); the Content-Security-Policy
header forbids anything else, so an air-gapped browser renders the same page.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from api.deps import CurrentPrincipal, SettingsDep
from api.errors import ApiError, ErrorCode
from api.schemas import ErrorPublic
from api.submit_form import FormApply, annotate_fractions, apply_form, apply_profile
from core.errors import CoreError
from core.objectives import OBJECTIVES
from core.safe_parse import BoundedSafeLoader, RefusedYaml, check_json, compose_yaml

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
STATIC_URL = "/ui/static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
# Spec fields the service sets itself, or that only make sense for a local run: left out of the template.
TEMPLATE_DROP = {
    "model": ("checkpoint", "checkpoint_format"),
    "dataset": ("data_dir", "download", "num_workers", "path"),
}

if TYPE_CHECKING:
    ObjectiveName = str
else:
    ObjectiveName = OBJECTIVES.literal()

pages = APIRouter(prefix="/ui", include_in_schema=False)
helpers = APIRouter(prefix="/ui/api", tags=["dashboard"])


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, template, {"static": STATIC_URL, **context})
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


@pages.get("")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=307)


# The pages that take no parameter: /ui/<name> renders <name>.html with its title. (uploads: upload a
# network, .onnx or weights, or data, an archive of class folders or an .npz; list both.)
STATIC_PAGES = {"jobs": "Jobs", "uploads": "Uploads", "compare": "Compare jobs", "submit": "Submit a job"}


def _add_static_page(name: str, title: str) -> None:
    @pages.get(f"/{name}", response_class=HTMLResponse, name=f"{name}_page")
    def static_page(request: Request) -> HTMLResponse:
        return _page(request, f"{name}.html", page=name, title=title)


for _name, _title in STATIC_PAGES.items():
    _add_static_page(_name, _title)


@pages.get("/models")
@pages.get("/datasets")
def uploads_alias() -> RedirectResponse:
    return RedirectResponse("/ui/uploads", status_code=307)


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _page(request, "job.html", page="job", title=f"Job {job_id[:8]}", job_id=job_id)


# ----------------------------------------------------------------------------- editor helpers
def spec_template(arch: str | None, dataset: str | None, objective: str | None) -> dict[str, Any]:
    """A complete job spec with every default of the core's schema and the catalogue's defaults for
    the chosen objective (what ``GET /v1/catalogue/objectives`` lists)."""
    from core.spec import OBJECTIVE_TYPES, JobSpec

    spec = JobSpec().model_dump(mode="json", exclude_none=True)
    if objective:
        if objective not in OBJECTIVE_TYPES:
            raise ApiError(ErrorCode.VALIDATION_ERROR, f"no objective {objective!r} in the catalogue", "objective")
        spec["objective"] = OBJECTIVE_TYPES[objective]().model_dump(mode="json", exclude_none=True)
    if arch:
        spec["model"]["arch"] = arch
    if dataset:
        spec["dataset"]["name"] = dataset
    apply_profile(spec, dataset, arch_given=bool(arch))  # the dataset's starting values (not CIFAR's on MNIST)
    for section, names in TEMPLATE_DROP.items():
        for name in names:
            spec[section].pop(name, None)
    if not spec["model"].get("kwargs"):
        spec["model"].pop("kwargs", None)
    return {"name": "my-job", **spec}


class _SpecDumper(yaml.SafeDumper):
    """Block mappings (one field per line: an error can point at its line), short lists inline."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_SpecDumper.add_representer(list, _represent_list)


def dump_spec(spec: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(spec, indent=2) + "\n"
    return yaml.dump(spec, Dumper=_SpecDumper, sort_keys=False, default_flow_style=False, width=100)


def field_lines(text: str) -> dict[str, int]:
    """The 1-based line of every field of a YAML (or JSON) document, by dotted path: ``pruning.k``,
    ``pruning.k.0``... (the paths the API names in ``field``)."""
    try:
        root = compose_yaml(text)  # no aliases, bounded depth: the walk below recurses per level
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{path}.{key.value}" if path else str(key.value)
                lines.setdefault(name, key.start_mark.line + 1)
                walk(value, name)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                name = f"{path}.{index}"
                lines.setdefault(name, item.start_mark.line + 1)
                walk(item, name)

    if root is not None:
        walk(root, "")
    return lines


class SpecText(BaseModel):
    text: str = Field(max_length=1_000_000, description="The editor's text (at most max_spec_bytes bytes).")
    format: Literal["yaml", "json"] = "yaml"


class SpecTemplate(BaseModel):
    format: Literal["yaml", "json"]
    text: str = Field(description="The spec as editor text in that format.")
    spec: dict[str, Any] = Field(description="The same spec as an object.")


class ParseProblem(BaseModel):
    detail: str
    line: int | None = Field(None, description="1-based line of the problem, when known.")


class ParsedSpec(BaseModel):
    spec: dict[str, Any] | None = Field(description="The text as an object; null when it does not parse.")
    lines: dict[str, int] = Field(description="The 1-based line of every field, by dotted path (pruning.k.0).")
    error: ParseProblem | None = Field(description="Why the text does not parse (a 200: the editor shows it).")


# The helpers are in the OpenAPI document (tag "dashboard"), so the fuzz test covers them like every route.
HELPER_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic} for code in (400, 401, 413, 422, 429, 503)
}


@helpers.get("/spec-template", response_model=SpecTemplate, responses=HELPER_RESPONSES)
def get_spec_template(
    _principal: CurrentPrincipal,
    arch: str | None = Query(None, max_length=200, description="Architecture to fill in (not checked here)."),
    dataset: str | None = Query(None, max_length=200, description="Dataset to fill in (not checked here)."),
    objective: ObjectiveName | None = Query(None, description="Objective whose catalogue defaults to use."),
    fmt: Literal["yaml", "json"] = Query("yaml", alias="format"),
) -> dict[str, Any]:
    """The dashboard's spec editor: the default spec for these choices, as editor text."""
    spec = spec_template(arch, dataset, objective)
    text = dump_spec(spec, fmt)
    return {"format": fmt, "text": annotate_fractions(text) if fmt == "yaml" else text, "spec": spec}


@helpers.post("/spec-parse", response_model=ParsedSpec, responses=HELPER_RESPONSES)
def parse_spec(body: SpecText, _principal: CurrentPrincipal, settings: SettingsDep) -> dict[str, Any]:
    """The dashboard's spec editor: its text as a spec object, with the line of every field. A text that
    does not parse answers 200 with ``error`` (the spec itself is validated on submit); one that would
    cost the service what no spec needs is refused with 422: a YAML alias (``yaml_alias_refused``),
    nesting deeper than 32 levels (``nesting_too_deep``), an integer of more than 4300 digits
    (``number_too_long``), more than 100,000 YAML nodes (``too_many_nodes``)."""
    if len(body.text.encode()) > settings.max_spec_bytes:
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"the spec exceeds {settings.max_spec_bytes} bytes", "text")
    try:
        if body.format == "json":
            check_json(body.text, "text")  # before json.loads recurses: CoreError -> 422 naming the place
            spec = json.loads(body.text)
        else:
            spec = yaml.load(body.text, Loader=BoundedSafeLoader)  # a SafeLoader subclass: no arbitrary objects
    except RefusedYaml as exc:  # refused before anything was expanded
        raise CoreError(exc.code, "text", str(exc)) from None
    except json.JSONDecodeError as exc:
        return {"spec": None, "lines": {}, "error": {"detail": f"not valid JSON: {exc.msg}", "line": exc.lineno}}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        return {
            "spec": None,
            "lines": {},
            "error": {"detail": f"not valid YAML: {problem}", "line": mark.line + 1 if mark else None},
        }
    if not isinstance(spec, dict):
        return {"spec": None, "lines": {}, "error": {"detail": "a job spec is a mapping of fields", "line": 1}}
    try:  # YAML has values JSON has not (dates, binary, sets, non-string keys): the answer is JSON
        spec = json.loads(json.dumps(spec, default=_not_json, allow_nan=False))
    except _NotJson as exc:
        return {"spec": None, "lines": {}, "error": {"detail": str(exc), "line": None}}
    except (TypeError, ValueError) as exc:  # a key JSON cannot have, NaN or Infinity
        return {"spec": None, "lines": {}, "error": {"detail": f"not a JSON-like spec: {exc}", "line": None}}
    return {"spec": spec, "lines": field_lines(body.text), "error": None}


class _NotJson(ValueError):
    pass


def _not_json(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise _NotJson(f"a {type(value).__name__} value has no place in a job spec")


@helpers.post("/spec-form", responses=HELPER_RESPONSES)
def spec_form(body: FormApply, _principal: CurrentPrincipal) -> dict[str, Any]:
    """The editor's spec with the submit form's fields written in, as editor text (api/submit_form.py)."""
    spec = apply_form(body.spec, body.fields)
    text = dump_spec(spec, body.format)
    return {"format": body.format, "text": annotate_fractions(text) if body.format == "yaml" else text, "spec": spec}


def install_ui(app: FastAPI) -> None:
    """Mount the dashboard's pages, its helpers and its static files."""
    app.include_router(pages)
    app.include_router(helpers)
    app.mount(STATIC_URL, StaticFiles(directory=str(HERE / "static")), name="ui-static")

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/ui/jobs", status_code=307)
