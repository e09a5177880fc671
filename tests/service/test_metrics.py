"""GET /metrics: Prometheus text with requests by route and status, latencies and the model."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(client) -> dict:
    text = client.simulate_get("/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_requests_are_counted_by_route_template_and_status(client, model):
    client.simulate_post("/predict", json={"data": [0] * 784})
    client.simulate_post("/predict", json={"data": [0] * 3})
    client.simulate_get(f"/v2/models/{model.info.name}")
    found = samples(client)

    def count(route, method, status):
        key = (
            "http_requests_total",
            tuple(sorted({"route": route, "method": method, "status": status}.items())),
        )
        return found.get(key)

    assert count("/predict", "POST", "200") == 1
    assert count("/predict", "POST", "400") == 1
    assert count("/v2/models/{name}", "GET", "200") == 1


def test_latency_histograms_and_model_info(client, model):
    client.simulate_post("/predict", json={"data": [[0] * 784] * 3})
    found = samples(client)
    assert found[("model_inference_duration_seconds_count", ())] == 1
    assert found[("model_inferred_examples_total", ())] == 3
    assert found[("http_request_duration_seconds_count", (("route", "/predict"),))] == 1
    info = model.info
    key = (
        "model_info",
        tuple(sorted({"name": info.name, "version": info.version, "sha256": info.sha256}.items())),
    )
    assert found[key] == 1
    assert found[("model_ready", ())] == 1


def test_the_scrape_is_prometheus_text_format(client):
    from prometheus_client import CONTENT_TYPE_LATEST

    assert client.simulate_get("/metrics").headers["content-type"] == CONTENT_TYPE_LATEST
