"""The methods each route answers (RFC 9110 section 9): GET and HEAD, OPTIONS, 405, unknown ones."""

from __future__ import annotations

import dataclasses

import pytest
from falcon import testing

from service.app import create_app
from service.http import IMPLEMENTED_METHODS
from service.openapi import openapi_document
from tests.service.test_openapi import registered_templates

VERSION = "2f06e72de813"  # mnist-8's, the first 12 hex digits of its sha256


def concrete(template: str) -> str:
    return template.replace("{name}", "mnist-8").replace("{version}", VERSION)


ROUTES = sorted(openapi_document()["paths"])
GET_ROUTES = [route for route in ROUTES if "get" in openapi_document()["paths"][route]]
# /metrics counts every request, so its text grows between a GET and a HEAD.
STABLE_GET_ROUTES = [route for route in GET_ROUTES if route != "/metrics"]


def test_the_routes_listed_here_are_every_route(client):
    assert set(ROUTES) == registered_templates(client.app)


@pytest.mark.parametrize("route", STABLE_GET_ROUTES)
def test_head_answers_as_get_without_the_content(client, route):
    """RFC 9110 section 9.3.2: the status and headers GET would send, Content-Type and the
    Content-Length of GET's content included, and no content."""
    get = client.simulate_get(concrete(route))
    head = client.simulate_head(concrete(route))
    assert get.status_code == 200 and get.content
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers == get.headers
    assert int(head.headers["content-length"]) == len(get.content)


def test_head_on_metrics_sends_its_type_and_a_length_but_no_content(client):
    head = client.simulate_head("/metrics")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == client.simulate_get("/metrics").headers["content-type"]
    assert int(head.headers["content-length"]) > 0


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/mnist-8/versions/0/ready"])
def test_head_of_a_refused_get_is_the_refusal_without_its_content(client, path):
    get = client.simulate_get(path)
    head = client.simulate_head(path)
    assert get.status_code == head.status_code == 404
    assert head.content == b""
    assert head.headers == get.headers


def refusal(client, path: str, allowed_get: bool):
    """A 405 on `path`, from a method the route does not take."""
    return client.simulate_request("POST" if allowed_get else "GET", path)


@pytest.mark.parametrize("route", ROUTES)
def test_options_answers_the_allow_list_a_405_gives_and_no_content(client, route):
    """RFC 9110 section 9.3.7: Allow says what the route takes; with no content the answer
    is 204, which carries neither Content-Type nor Content-Length (section 8.6)."""
    path = concrete(route)
    answer = client.simulate_options(path)
    refused = refusal(client, path, route in GET_ROUTES)
    assert refused.status_code == 405
    assert answer.status_code == 204
    assert answer.headers["allow"] == refused.headers["allow"]
    assert "content-type" not in answer.headers
    assert "content-length" not in answer.headers
    assert answer.content == b""


@pytest.mark.parametrize("route", ROUTES)
def test_allow_lists_head_with_get_and_always_options(client, route):
    allowed = refusal(client, concrete(route), route in GET_ROUTES).headers["allow"].split(", ")
    operations = [method.upper() for method in openapi_document()["paths"][route]]
    assert sorted(allowed) == sorted(operations)
    assert "OPTIONS" in allowed
    assert ("HEAD" in allowed) == ("GET" in allowed)


def test_a_405_message_names_the_allowed_methods(client):
    result = client.simulate_post("/v2")
    assert result.status_code == 405
    assert result.json == {
        "error": "method POST is not allowed on /v2; allowed: GET, HEAD, OPTIONS"
    }


@pytest.mark.parametrize("method", ["PURGE", "SEARCH", "LINK"])
def test_a_method_falcon_does_not_know_is_400_naming_the_methods_served(client, method):
    """These pass uvicorn's parser (llhttp knows them) and reach the app, which answered a
    bare "Invalid HTTP method". Not RFC 9110's 501 (section 9.1, a SHOULD): a target's 5xx
    feeds the alarm that rolls a deployment back, and the load balancer forwards any method."""
    result = client.simulate_request(method, "/v2")
    assert result.status_code == 400
    assert result.json == {
        "error": f"method {method!r} is not implemented by this server; it implements GET, "
        "HEAD, OPTIONS and POST (method names are case-sensitive, RFC 9110 section 9.1)"
    }


def test_a_known_method_a_route_does_not_take_stays_405(client):
    for method in ("PUT", "DELETE", "PATCH", "PROPFIND"):
        assert client.simulate_request(method, "/v2").status_code == 405


def test_the_methods_an_unknown_method_is_told_are_those_the_routes_implement(client):
    answered = {
        method.upper()
        for operations in openapi_document()["paths"].values()
        for method in operations
    }
    assert set(IMPLEMENTED_METHODS) == answered


def test_head_and_options_need_the_token_where_get_and_post_do(settings, model):
    token = "k5J2-pQ9_wX7vZ3aR8mT1yB6"
    client = testing.TestClient(
        create_app(dataclasses.replace(settings, api_tokens=(token,)), model=model)
    )
    for method, path in (("HEAD", "/v2"), ("OPTIONS", "/predict")):
        assert client.simulate_request(method, path).status_code == 401
        answer = client.simulate_request(method, path, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code in (200, 204)
    assert client.simulate_head("/v2/health/live").status_code == 200
