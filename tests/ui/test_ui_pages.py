"""The dashboard's pages and helpers without a browser: what is served, with which headers, and the
spec editor's template and line mapping."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from api.ui import field_lines, spec_template

STATIC = Path(__file__).resolve().parents[2] / "api" / "static"
TEMPLATES = Path(__file__).resolve().parents[2] / "api" / "templates"
URL = re.compile(r"""https?://[^\s"'`)]+""")
SVG_NS = "http://www.w3.org/2000/svg"


def test_pages_are_shells_served_with_a_strict_csp(ui_app) -> None:  # type: ignore[no-untyped-def]
    with TestClient(ui_app) as client:
        assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/jobs"
        assert client.get("/", follow_redirects=False).headers["location"] == "/ui/jobs"
        for path in ("/ui/jobs", "/ui/submit", "/ui/jobs/1b4e28ba-2fa1-11d2-883f-0016d3cca427"):
            response = client.get(path)  # no key needed: the page holds no tenant's data
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert not URL.search(response.text), URL.findall(response.text)
            assert "<script>" not in response.text and " style=" not in response.text  # nothing inline (CSP)
            for asset in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', response.text):
                assert client.get(asset).status_code == 200, asset
        assert (
            'data-job-id="1b4e28ba-2fa1-11d2-883f-0016d3cca427"'
            in client.get("/ui/jobs/1b4e28ba-2fa1-11d2-883f-0016d3cca427").text
        )


def test_static_files_load_nothing_from_outside_and_keep_the_key_out_of_urls() -> None:
    for path in [*STATIC.iterdir(), *TEMPLATES.iterdir()]:
        text = path.read_text()
        assert [u for u in URL.findall(text) if u != SVG_NS] == [], path
        assert "@import" not in text and "url(" not in text, path
    script = (STATIC / "hydra.js").read_text()
    assert "sessionStorage" in script and "localStorage" not in script and "document.cookie" not in script
    assert "Authorization: `Bearer ${getKey()}`" in script
    assert "EventSource" not in script.replace("EventSource cannot", "")  # fetch streaming, with the header


def test_helpers_need_the_key(ui_app, token) -> None:  # type: ignore[no-untyped-def]
    with TestClient(ui_app) as client:
        assert client.get("/ui/api/spec-template").status_code == 401
        assert client.post("/ui/api/spec-parse", json={"text": "a: 1"}).status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        for fmt in ("yaml", "json"):
            body = client.get(
                "/ui/api/spec-template", params={"objective": "smoothing", "format": fmt}, headers=headers
            ).json()
            parsed = client.post(
                "/ui/api/spec-parse", json={"text": body["text"], "format": fmt}, headers=headers
            ).json()
            assert parsed["error"] is None and parsed["spec"] == body["spec"]
            assert parsed["lines"]["objective.sigma"] > parsed["lines"]["objective"] >= 1
        bad = client.post(
            "/ui/api/spec-parse", json={"text": "a: 1\nb: [1,\n", "format": "yaml"}, headers=headers
        ).json()
        assert bad["spec"] is None and bad["error"]["line"] >= 2 and "YAML" in bad["error"]["detail"]
        bad = client.post("/ui/api/spec-parse", json={"text": '{"a": 1,\n}', "format": "json"}, headers=headers).json()
        assert bad["spec"] is None and bad["error"]["line"] == 2
        answer = client.get("/ui/api/spec-template", params={"objective": "nope"}, headers=headers)
        assert answer.status_code == 422 and answer.json()["field"] == "objective"


def test_the_template_is_a_valid_spec_with_the_catalogue_defaults() -> None:
    from core.spec import OBJECTIVE_TYPES, load_spec

    for name, cls in OBJECTIVE_TYPES.items():
        spec = spec_template("cnn_small_mnist", "mnist5k", name)
        assert spec["objective"] == cls().model_dump(mode="json", exclude_none=True)
        assert "data_dir" not in spec["dataset"] and "checkpoint" not in spec["model"]
        load_spec(spec)  # the service would accept it as it is


def test_field_lines_name_the_paths_the_api_reports() -> None:
    text = "name: x\npruning:\n  methods: [hydra, lwm]\n  k:\n    - 0.5\n    - 2.0\nstages:\n  prune: {epochs: 1, lr: 0.1}\n"
    lines = field_lines(text)
    assert lines["pruning"] == 2 and lines["pruning.k"] == 4 and lines["pruning.k.1"] == 6
    assert lines["stages.prune.lr"] == 8
    assert yaml.safe_load(text)["pruning"]["k"] == [0.5, 2.0]
    assert field_lines("a: [unclosed") == {}
