"""The OpenAPI document describes every route, and real responses fit it."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import validate

from service.openapi import openapi_document


def registered_templates(app) -> set[str]:
    templates: set[str] = set()
    stack = list(app._router._roots)
    while stack:
        node = stack.pop()
        if node.resource is not None:
            templates.add(node.uri_template)
        stack.extend(node.children)
    return templates


def test_document_is_valid_openapi_3(client):
    document = client.simulate_get("/openapi.json").json
    validate(document)
    assert document == openapi_document()


def test_every_route_is_documented_and_nothing_else(client):
    documented = set(openapi_document()["paths"])
    assert registered_templates(client.app) == documented


def response_schema(path: str, method: str, status: int) -> dict:
    document = openapi_document()
    schema = document["paths"][path][method]["responses"][str(status)]["content"][
        "application/json"
    ]["schema"]
    return {**schema, "components": document["components"]}


def check(result, path: str, method: str) -> None:
    schema = response_schema(path, method, result.status_code)
    resolver_schema = {"$ref": schema["$ref"]} if "$ref" in schema else schema
    jsonschema.validate(
        result.json,
        {**resolver_schema, "components": schema["components"]},
    )


INFER_ONE = {
    "inputs": [{"name": "Input3", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0] * 784}]
}


@pytest.mark.parametrize(
    ("method", "path", "template", "body", "status"),
    [
        ("get", "/v2", "/v2", None, 200),
        ("get", "/v2/health/live", "/v2/health/live", None, 200),
        ("get", "/v2/health/ready", "/v2/health/ready", None, 200),
        ("get", "/v2/models/mnist-8", "/v2/models/{name}", None, 200),
        ("get", "/v2/models/nope", "/v2/models/{name}", None, 404),
        ("get", "/v2/models/mnist-8/ready", "/v2/models/{name}/ready", None, 200),
        ("post", "/predict", "/predict", {"data": [0] * 784}, 200),
        ("post", "/predict", "/predict", {"data": [[0] * 784] * 2}, 200),
        ("post", "/predict", "/predict", {"data": [1]}, 400),
        ("post", "/v2/models/mnist-8/infer", "/v2/models/{name}/infer", INFER_ONE, 200),
        ("post", "/v2/models/mnist-8/infer", "/v2/models/{name}/infer", {"inputs": 3}, 400),
        ("post", "/predict", "/predict", {"data": [[[0] * 28] * 28]}, 200),
        (
            "post",
            "/v2/models/mnist-8/infer",
            "/v2/models/{name}/infer",
            {
                **INFER_ONE,
                "outputs": [{"name": "Plus214_Output_0", "parameters": {"classification": 2}}],
            },
            200,
        ),
        ("get", "/v2/models/mnist-8?verbose=1", "/v2/models/{name}", None, 400),
    ],
)
def test_responses_fit_the_document(client, method, path, template, body, status):
    """The status each request must get, then its body against that status's schema (a
    route answering 400 to everything would fit the 400 schema)."""
    path, _, query = path.partition("?")
    result = client.simulate_request(method.upper(), path, json=body, query_string=query or None)
    assert result.status_code == status, result.text
    check(result, template, method)


def test_metrics_and_document_routes_answer(client):
    assert client.simulate_get("/metrics").status_code == 200
    document = client.simulate_get("/openapi.json")
    assert document.headers["content-type"] == "application/json"
    assert document.json == openapi_document()
