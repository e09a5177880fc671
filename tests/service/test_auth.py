"""Bearer tokens on the prediction and model routes; health, readiness and /metrics open."""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from falcon import testing

from service import auth
from service.app import create_app
from service.auth import PUBLIC_ROUTES, BearerAuth, parse_tokens
from service.config import ConfigError, Settings
from service.openapi import openapi_document
from tests.service.conftest import MNIST8_SHA256, start_server

TOKEN = "k5J2-pQ9_wX7vZ3aR8mT1yB6"
ROTATED = "n4F8.hL2~cV9bN6mQ1+sD5/e=="
DIGIT = {"data": [0.0] * 784}

# Every route outside PUBLIC_ROUTES, with a request it serves (name mnist-8 is the default).
PROTECTED = [
    ("POST", "/predict", DIGIT),
    ("GET", "/v2", None),
    ("GET", "/v2/models/mnist-8", None),
    ("GET", "/v2/models/mnist-8/ready", None),
    ("POST", "/v2/models/mnist-8/infer", None),
    ("GET", "/v2/models/mnist-8/versions/x", None),
    ("GET", "/v2/models/mnist-8/versions/x/ready", None),
    ("POST", "/v2/models/mnist-8/versions/x/infer", None),
    ("GET", "/openapi.json", None),
]


@pytest.fixture
def protected(settings, model) -> testing.TestClient:
    tokens = dataclasses.replace(settings, api_tokens=(TOKEN, ROTATED))
    return testing.TestClient(create_app(tokens, model=model))


@pytest.mark.parametrize("method,path,body", PROTECTED)
def test_every_protected_route_answers_401_in_the_json_shape_without_a_token(
    protected, method, path, body
):
    response = protected.simulate_request(method, path, json=body)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert "Authorization: Bearer" in response.json["error"]
    assert response.headers["www-authenticate"] == 'Bearer realm="predict"'


@pytest.mark.parametrize(
    "header,code",
    [
        (f"Bearer {TOKEN}x", "invalid_token"),
        (f"Bearer {TOKEN[:-1]}", "invalid_token"),
        ("Bearer ", "invalid_request"),
        (f"Basic {TOKEN}", "invalid_request"),
        (TOKEN, "invalid_request"),
    ],
)
def test_a_wrong_token_or_scheme_is_refused_with_its_rfc_6750_error_code(protected, header, code):
    response = protected.simulate_post("/predict", json=DIGIT, headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json["error"]
    assert f'error="{code}"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("token", [TOKEN, ROTATED])
def test_each_configured_token_is_accepted_and_the_answer_is_the_models(
    protected, mnist_test_set, raw_argmax, token
):
    images, _ = mnist_test_set
    body = {"data": images[0].reshape(-1).tolist()}
    expected = raw_argmax(images[:1])[0]
    for scheme in ("Bearer", "bearer"):  # the scheme is case-insensitive
        response = protected.simulate_post(
            "/predict", json=body, headers={"Authorization": f"{scheme} {token}"}
        )
        assert response.status_code == 200
        assert response.json["prediction"] == expected


@pytest.mark.parametrize("path", sorted(PUBLIC_ROUTES))
def test_health_readiness_and_metrics_stay_open_for_the_load_balancer(protected, path):
    assert protected.simulate_get(path).status_code == 200


def test_without_tokens_every_route_is_open(client):
    assert client.simulate_post("/predict", json=DIGIT).status_code == 200


def test_refused_requests_are_counted_by_route_and_status(protected):
    protected.simulate_post("/predict", json=DIGIT)
    metrics = protected.simulate_get("/metrics").text
    assert 'route="/predict",status="401"' in metrics.replace(" ", "")


def test_every_configured_token_is_compared_in_constant_time(monkeypatch):
    compared = []
    real_compare = hmac.compare_digest

    def compare_digest(a, b):
        compared.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare_digest)
    middleware = BearerAuth((TOKEN, ROTATED, "z" * 40))
    assert middleware.accepts(TOKEN)  # a match on the first token still compares all three
    assert not middleware.accepts("a")  # so does a miss, of any length
    # Fixed-length digests, never the raw strings: the length of a token does not show.
    assert compared == [(32, 32)] * 6


def test_tokens_are_read_as_ecs_injects_a_secret(mnist8_path):
    # A secret's string arrives whole in the variable: tokens on lines, or comma separated.
    secret_string = f"{TOKEN}\n{ROTATED}\n"
    settings = Settings.from_env({"MODEL_URL": str(mnist8_path), "API_TOKENS": secret_string})
    assert settings.api_tokens == (TOKEN, ROTATED)
    assert parse_tokens(f" {TOKEN}, {ROTATED} ") == (TOKEN, ROTATED)
    assert TOKEN not in repr(settings)


@pytest.mark.parametrize(
    "value,message",
    [
        ("", "holds no token"),
        (" \n", "holds no token"),
        ("short", "token 1 is not a usable bearer token"),
        (f"{TOKEN},has space!inside-it-123", "token 2 is not a usable bearer token"),
    ],
)
def test_unusable_tokens_refuse_to_start_naming_the_variable(mnist8_path, value, message):
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env({"MODEL_URL": str(mnist8_path), "API_TOKENS": value})
    assert str(refused.value).startswith("API_TOKENS")


def test_openapi_declares_bearer_auth_on_exactly_the_protected_routes():
    document = openapi_document()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for operation in operations.values():
            secured = operation.get("security") == [{"bearer": []}]
            assert secured == (path not in PUBLIC_ROUTES), path
            assert ("401" in operation["responses"]) == secured


@pytest.mark.integration
def test_a_server_started_with_api_tokens_refuses_and_accepts_over_http(
    mnist8_path, tmp_path, mnist_test_set, raw_argmax
):
    server = start_server(
        {
            "MODEL_URL": str(mnist8_path),
            "MODEL_SHA256": MNIST8_SHA256,
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "PREDICTION_LOG_URL": "off",
            "API_TOKENS": f"{TOKEN},{ROTATED}",
        }
    )
    try:
        images, _ = mnist_test_set
        image = images[1]
        body = json.dumps({"data": image.reshape(-1).tolist()}).encode()

        def post(headers: dict[str, str]) -> tuple[int, dict]:
            request = urllib.request.Request(
                f"{server.url}/predict",
                data=body,
                headers={"Content-Type": "application/json", **headers},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, refused = post({})
        assert status == 401 and "Bearer" in refused["error"]
        status, answer = post(auth.bearer_header(ROTATED))
        assert status == 200 and answer["prediction"] == raw_argmax(image[None])[0]

        # tritonclient sends the header on every call, so Triton clients keep working.
        import tritonclient.http as triton
        from tritonclient.utils import InferenceServerException

        client = triton.InferenceServerClient(urllib.parse.urlparse(server.url).netloc)
        headers = auth.bearer_header(TOKEN)
        assert client.is_server_ready()  # readiness needs no token
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.get_model_metadata("mnist-8")
        assert client.get_model_metadata("mnist-8", headers=headers)["name"] == "mnist-8"
        tensor = triton.InferInput("Input3", [2, 1, 28, 28], "FP32")
        batch = images[:2].astype(np.float32).reshape(2, 1, 28, 28)
        tensor.set_data_from_numpy(batch)
        result = client.infer("mnist-8", [tensor], headers=headers)
        assert result.as_numpy("Plus214_Output_0").argmax(axis=1).tolist() == raw_argmax(batch)
        client.close()
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/metrics", "/%6Detrics", "//metrics", "/metrics/"])
def test_metrics_are_refused_to_anything_a_load_balancer_forwarded(client, path):
    """An ALB adds X-Forwarded-For to every request it forwards; a scraper inside the VPC
    calls the task directly. The listener rule's literal path match would let a
    percent-encoded /metrics, or one with a second leading slash (Falcon routes //metrics
    as /metrics), through, so the service refuses it too."""
    forwarded = client.simulate_get(path, headers={"X-Forwarded-For": "203.0.113.7"})
    assert forwarded.status_code == 404
    assert re.match(r"no route '/+metrics' through a load balancer", forwarded.json["error"])
    assert "inside the VPC" in forwarded.json["error"]
    direct = client.simulate_get(path)
    assert direct.status_code == 200 and "model_ready" in direct.text
