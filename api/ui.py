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

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from api.deps import CurrentPrincipal, SettingsDep
from api.errors import ApiError, ErrorCode
from api.submit_form import FormApply, annotate_fractions, apply_form, apply_profile

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

pages = APIRouter(prefix="/ui", include_in_schema=False)
helpers = APIRouter(prefix="/ui/api", include_in_schema=False)


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


@pages.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", page="jobs", title="Jobs")


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _page(request, "job.html", page="job", title=f"Job {job_id[:8]}", job_id=job_id)


@pages.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> HTMLResponse:
    return _page(request, "compare.html", page="compare", title="Compare jobs")


@pages.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    return _page(request, "submit.html", page="submit", title="Submit a job")


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
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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
    text: str = Field(max_length=1_000_000)
    format: Literal["yaml", "json"] = "yaml"


@helpers.get("/spec-template")
def get_spec_template(
    _principal: CurrentPrincipal,
    arch: str | None = Query(None, max_length=200),
    dataset: str | None = Query(None, max_length=200),
    objective: str | None = Query(None, max_length=50),
    fmt: Literal["yaml", "json"] = Query("yaml", alias="format"),
) -> dict[str, Any]:
    """The default spec for these choices, as editor text."""
    spec = spec_template(arch, dataset, objective)
    text = dump_spec(spec, fmt)
    return {"format": fmt, "text": annotate_fractions(text) if fmt == "yaml" else text, "spec": spec}


@helpers.post("/spec-parse")
def parse_spec(body: SpecText, _principal: CurrentPrincipal, settings: SettingsDep) -> dict[str, Any]:
    """The editor's text as a spec object, with the line of every field; a text that does not parse
    answers ``{"spec": null, "error": {"detail", "line"}}`` (the spec itself is validated on submit)."""
    if len(body.text.encode()) > settings.max_spec_bytes:
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"the spec exceeds {settings.max_spec_bytes} bytes", "text")
    try:
        spec = json.loads(body.text) if body.format == "json" else yaml.safe_load(body.text)
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
    return {"spec": spec, "lines": field_lines(body.text), "error": None}


@helpers.post("/spec-form")
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
