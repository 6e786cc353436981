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
        for path in ("/ui/jobs", "/ui/submit", "/ui/compare", "/ui/jobs/1b4e28ba-2fa1-11d2-883f-0016d3cca427"):
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
    assert "sessionStorage" in script and "document.cookie" not in script
    # localStorage holds the key only when the person ticked "remember in this browser"
    assert script.count("localStorage.setItem") == 1 and "if (remember) localStorage.setItem(KEY, value)" in script
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
        spec = spec_template("cnn_small_cifar", "cifar10", name)  # the schema's defaults are CIFAR's
        assert spec["objective"] == cls().model_dump(mode="json", exclude_none=True)
        assert "data_dir" not in spec["dataset"] and "checkpoint" not in spec["model"]
        load_spec(spec)  # the service would accept it as it is
        load_spec(spec_template("cnn_small_mnist", "mnist5k", name))


def test_the_template_follows_the_dataset(ui_app, token) -> None:  # type: ignore[no-untyped-def]
    """MNIST-sized data starts from the shipped MNIST example, not the paper's CIFAR recipe."""
    mnist = spec_template(None, "mnist5k", "trades")
    assert mnist["model"]["arch"] == "cnn_small_mnist"
    assert (mnist["objective"]["eps"], mnist["objective"]["step_size"]) == (0.1, 0.02)
    assert [mnist["stages"][s]["epochs"] for s in ("pretrain", "prune", "finetune")] == [30, 20, 20]
    assert mnist["evaluation"]["autoattack_max_samples"] == 200
    cifar = spec_template(None, "cifar10", "pgd")
    assert cifar["model"]["arch"] == "cnn_small_cifar" and cifar["stages"]["pretrain"]["epochs"] == 100
    with TestClient(ui_app) as client:
        headers = {"Authorization": f"Bearer {token}"}
        text = client.get("/ui/api/spec-template", params={"dataset": "mnist5k"}, headers=headers).json()["text"]
        assert "  eps: 0.1\n" in text and "0.0313" not in text
        text = client.get(
            "/ui/api/spec-template", params={"dataset": "cifar10", "objective": "pgd"}, headers=headers
        ).json()["text"]
        assert "  eps: 0.03137254901960784  # 8/255\n" in text and "  step_size: 0.00784313725490196  # 2/255\n" in text
        # the form writes its fields into the spec; 0 epochs switches a stage off
        spec = client.get("/ui/api/spec-template", params={"dataset": "mnist5k"}, headers=headers).json()["spec"]
        fields = {
            "eps": 8 / 255,
            "methods": ["hydra", "lwm"],
            "k": [0.1, 0.05],
            "pretrain_epochs": 2,
            "finetune_epochs": 0,
        }
        body = client.post("/ui/api/spec-form", json={"spec": spec, "fields": fields}, headers=headers).json()
        assert "# 8/255" in body["text"]
        out = body["spec"]
        assert out["objective"]["eps"] == 8 / 255 and out["pruning"]["methods"] == ["hydra", "lwm"]
        assert out["pruning"]["k"] == [0.1, 0.05] and out["stages"]["pretrain"]["epochs"] == 2
        assert out["stages"]["pretrain"]["lr"] == 0.05 and out["stages"]["finetune"] is None
        load_spec_ok = client.post("/v1/jobs/estimate", json=out, headers=headers)
        assert load_spec_ok.status_code == 200, load_spec_ok.text
        refused = client.post("/ui/api/spec-form", json={"spec": spec, "fields": {"eps": -1}}, headers=headers)
        assert refused.status_code == 422 and refused.json()["field"] == "fields.eps"


def test_field_lines_name_the_paths_the_api_reports() -> None:
    text = "name: x\npruning:\n  methods: [hydra, lwm]\n  k:\n    - 0.5\n    - 2.0\nstages:\n  prune: {epochs: 1, lr: 0.1}\n"
    lines = field_lines(text)
    assert lines["pruning"] == 2 and lines["pruning.k"] == 4 and lines["pruning.k.1"] == 6
    assert lines["stages.prune.lr"] == 8
    assert yaml.safe_load(text)["pruning"]["k"] == [0.5, 2.0]
    assert field_lines("a: [unclosed") == {}
