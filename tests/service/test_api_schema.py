"""The failures schemathesis found (issue 11), each pinned as a fast regression test: the schema says
what the code accepts, integers that reach SQL are bounded, nothing unstorable reaches the database,
and ``Allow`` lists every method of a resource."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.svc_helpers import assert_error


@pytest.fixture
def schema(client: TestClient) -> dict:
    return client.get("/openapi.json").json()


def _param(schema: dict, path: str, method: str, name: str) -> dict:
    return next(p for p in schema["paths"][path][method]["parameters"] if p["name"] == name)["schema"]


def test_huge_offsets_are_422_not_500_and_bounded_in_the_schema(client: TestClient, key, schema: dict) -> None:
    params = {"limit": 169, "offset": 234391222644802618314981376, "status": "queued"}
    for path in ("/v1/jobs", "/v1/models", "/v1/datasets"):
        assert_error(client.get(path, params=params, headers=key.headers), 422, "validation_error", "offset")
        assert "maximum" in _param(schema, path, "get", "offset")
    assert client.get("/v1/jobs", params={"offset": 2**31 - 1}, headers=key.headers).json()["data"] == []
    job = client.post("/v1/jobs", json={}, headers=key.headers).json()["id"]
    assert_error(client.get(f"/v1/jobs/{job}/events", params={"after": 2**70}, headers=key.headers), 422)


def test_idempotent_replay_answers_a_documented_200(client: TestClient, key, schema: dict) -> None:
    headers = {**key.headers, "Idempotency-Key": "replay"}
    assert client.post("/v1/jobs", json={}, headers=headers).status_code == 201
    again = client.post("/v1/jobs", json={}, headers=headers)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert {"200", "201"} <= set(schema["paths"]["/v1/jobs"]["post"]["responses"])


def test_headers_and_form_fields_are_never_nullable_in_the_schema(client: TestClient, key, schema: dict) -> None:
    assert _param(schema, "/v1/jobs/{job_id}/events", "get", "Last-Event-ID")["type"] == "integer"
    assert _param(schema, "/v1/jobs", "post", "Idempotency-Key")["type"] == "string"
    datasets = schema["components"]["schemas"]["Body_upload_dataset_v1_datasets_post"]["properties"]
    assert datasets["num_classes"]["type"] == "integer" and "anyOf" not in datasets["num_classes"]
    job = client.post("/v1/jobs", json={}, headers=key.headers).json()["id"]
    ok = client.get(f"/v1/jobs/{job}/events", headers={**key.headers, "Last-Event-ID": "0"})
    assert ok.status_code == 200
    assert_error(client.get(f"/v1/jobs/{job}/events", headers={**key.headers, "Last-Event-ID": "null"}), 422)
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((20, 28, 28), np.uint8), labels=np.arange(20) % 10)
    uploaded = client.post(
        "/v1/datasets", headers=key.headers, data={"num_classes": "10"}, files={"file": ("d.npz", buffer.getvalue())}
    )
    assert uploaded.status_code == 201 and uploaded.json()["num_classes"] == 10, uploaded.text


def test_the_job_schema_states_the_rules_the_code_enforces(client: TestClient, key, schema: dict) -> None:
    components = schema["components"]["schemas"]
    pruning = components["PruningSpec"]["properties"]
    assert pruning["methods"]["uniqueItems"] and pruning["k"]["uniqueItems"]
    assert pruning["k"]["items"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    assert "imagefolder" not in components["DatasetSpec"]["properties"]["name"]["enum"]
    assert "pattern" in components["JobSpec"]["properties"]["device"]
    assert "type" in components["PGDObjective"]["required"]
    for field in ("epochs", "warmup_epochs"):
        assert "maximum" in components["StageSpec"]["properties"][field]
    evaluation = components["EvaluationSpec"]["properties"]
    for field in ("certify_max_samples", "val_pgd_steps"):
        assert "maximum" in json.dumps(evaluation[field]), field
    for field in ("n", "n0", "batch_size"):
        assert "maximum" in json.dumps(components["SmoothingOptions"]["properties"][field]), field
    refused = client.post("/v1/jobs", json={"pruning": {"methods": ["hydra", "hydra"]}}, headers=key.headers)
    assert_error(refused, 422, "validation_error", "pruning.methods")
    assert SEMANTIC_CODES_DOCUMENTED(schema)


def test_the_options_models_and_the_generated_rules_are_in_the_schema(schema: dict) -> None:
    components = schema["components"]["schemas"]
    pruning, evaluation = components["PruningSpec"]["properties"], components["EvaluationSpec"]["properties"]
    assert pruning["learned"]["$ref"] == "#/components/schemas/LearnedOptions"
    assert evaluation["smoothing"]["$ref"] == "#/components/schemas/SmoothingOptions"
    assert {"$ref": "#/components/schemas/BoundOptions"} in evaluation["bounds"]["anyOf"]
    assert set(components["LearnedOptions"]["properties"]) == {"gamma", "gamma_steps", "gamma_ratio", "tau", "lr"}
    assert set(components["SmoothingOptions"]["properties"]) == {"n0", "n", "alpha", "radii", "batch_size"}
    assert set(components["BoundOptions"]["properties"]) == {"methods", "batch_size"}
    # the old flat spellings: documented as deprecated, with the nested option's bounds
    tau = pruning["learned_tau"]
    assert tau["deprecated"] and tau["exclusiveMinimum"] == 0 and tau["maximum"] == 10 and "default" not in tau
    assert evaluation["smoothing_n"]["deprecated"] and evaluation["bound_batch_size"]["deprecated"]
    # JobSpec._start_point's rules, generated: one of the starting points is set ...
    start, *prune_stage = components["JobSpec"]["allOf"]
    assert len(start["anyOf"]) == 3
    pretrain, checkpoint, onnx = start["anyOf"]
    assert pretrain == {"properties": {"stages": {"properties": {"pretrain": {"not": {"type": "null"}}}}}}
    assert checkpoint["required"] == ["model"] and checkpoint["properties"]["model"]["required"] == ["checkpoint"]
    assert onnx["properties"]["model"]["required"] == ["onnx"]
    # ... and the allocation whose pruners train rates (learned, at both granularities) needs a prune stage
    assert len(prune_stage) == 2
    for rule in prune_stage:
        assert {"properties": {"pruning": {"properties": {"allocation": {"enum": ["uniform", "global"]}}}}} in rule[
            "anyOf"
        ]
    learned = [b for b in components["PruningSpec"]["anyOf"] if b["properties"]["allocation"] == {"enum": ["learned"]}]
    assert len(learned) == 2 and all(b["properties"]["k"] == {"items": {"exclusiveMaximum": 1}} for b in learned)


def test_the_schema_and_the_validator_agree_on_the_generated_rules(schema: dict) -> None:
    """The generated rules hold the specs the validator refuses, and pass the ones it accepts."""
    jsonschema = pytest.importorskip("jsonschema")
    from core.errors import CoreError
    from core.spec import load_spec

    validator = jsonschema.Draft202012Validator(
        {**schema["components"]["schemas"]["JobSpec"], "components": schema["components"]}
    )
    cases = [
        {},
        {"stages": {"pretrain": None}},
        {"stages": {"pretrain": None}, "model": {"checkpoint": "model:abc"}},
        {"pruning": {"allocation": "learned"}},
        {"pruning": {"allocation": "learned"}, "stages": {"prune": None}},
        {"pruning": {"allocation": "learned"}, "stages": {"prune": {"epochs": 0, "lr": 0.1}}},
        {"pruning": {"allocation": "global"}, "stages": {"prune": None}},
        {"pruning": {"allocation": "learned", "k": [0.5, 1.0]}},
        {"pruning": {"allocation": "learned", "learned_tau": 0.2, "learned": {"gamma": 2.0}}},
    ]
    for case in cases:
        try:
            load_spec(case)
            accepted = True
        except CoreError:
            accepted = False
        assert validator.is_valid(case) == accepted, case


def SEMANTIC_CODES_DOCUMENTED(schema: dict) -> bool:
    from api.openapi import SEMANTIC_422

    return all(
        code in schema["paths"][path][method]["description"]
        for (method, path), codes in SEMANTIC_422.items()
        for code in codes
    )


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"name": "a\\u0000b"}', "name"),  # Postgres text and JSONB refuse NUL: was a 500
        ('{"stages": {"pretrain": {"epochs": 1, "lr": 1e999}}}', "stages.pretrain.lr"),  # Infinity: was a 500
        ('{"model": {"kwargs": {"mean": [NaN]}}}', "model.kwargs.mean"),
        ('{"stages": {"pretrain": {"epochs": true, "lr": 0.1}}}', "stages.pretrain.epochs"),  # lax bool -> int
        ('{"dataset": {"download": 1}}', "dataset.download"),
        ('{"seed": "3"}', "seed"),
        ('{"model": {"kwargs": {"num_classes": 1000000000}}}', "model.kwargs.num_classes"),
        ('{"device": "cuda:\\u0663"}', "device"),
    ],
)
def test_unstorable_or_mistyped_values_are_422(client: TestClient, key, body: str, field: str) -> None:
    response = client.post("/v1/jobs", content=body, headers={**key.headers, "Content-Type": "application/json"})
    assert_error(response, 422, "validation_error", field)


def test_integral_floats_are_integers(client: TestClient, key) -> None:
    response = client.post(
        "/v1/jobs", json={"seed": 3.0, "model": {"kwargs": {"num_classes": 10.0}}}, headers=key.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["model"]["kwargs"] == {"num_classes": 10}


def test_nul_in_ids_and_forms_is_422_not_500(client: TestClient, key) -> None:
    assert_error(client.get("/v1/jobs/a%00b", headers=key.headers), 422)
    assert_error(client.get("/v1/models/a%00b", headers=key.headers), 422)
    assert_error(client.get("/v1/jobs/x/artifacts/a%00b", headers=key.headers), 422)
    response = client.post(
        "/v1/datasets", headers=key.headers, data={"name": "a\x00b"}, files={"file": ("d.npz", b"x")}
    )
    assert_error(response, 422, "validation_error", "name")


@pytest.mark.parametrize(
    "path, methods",
    [
        ("/v1/jobs", {"GET", "HEAD", "POST"}),
        ("/v1/models", {"GET", "HEAD", "POST"}),
        ("/v1/datasets", {"GET", "HEAD", "POST"}),
        ("/v1/jobs/abc/cancel", {"POST"}),
    ],
)
def test_options_allow_lists_every_method_of_the_resource(client: TestClient, path: str, methods: set) -> None:
    response = client.options(path)
    body = assert_error(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == methods, body


def test_the_report_route_documents_the_typed_report(schema: dict) -> None:
    answer = schema["paths"]["/v1/jobs/{job_id}/report"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Report"}
    report = schema["components"]["schemas"]["Report"]
    assert {"variants", "comparison", "flags", "check_rules", "format"} <= set(report["properties"])
    latency = schema["components"]["schemas"]["Latency"]["properties"]
    assert {"speedup", "speedup_ci95", "dense_iqr", "variant_iqr", "measurable", "verdict"} <= set(latency)


def test_the_pruning_rules_in_the_schema_come_from_the_pruner_registry(schema: dict) -> None:
    from core.errors import CoreError
    from core.pruning.methods import pruner_class

    for branch in schema["components"]["schemas"]["PruningSpec"]["anyOf"]:
        props = branch["properties"]
        for method in props["methods"]["items"]["enum"]:
            pruner_class(method, props["allocation"]["enum"][0], props["granularity"]["enum"][0])  # served
    served = {
        (b["properties"]["allocation"]["enum"][0], b["properties"]["granularity"]["enum"][0])
        for b in schema["components"]["schemas"]["PruningSpec"]["anyOf"]
    }
    with pytest.raises(CoreError):
        pruner_class("hydra", "global", "channel")
    assert ("global", "channel") not in served
