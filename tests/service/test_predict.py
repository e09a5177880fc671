"""POST /predict: the simple contract, its extensions, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

ZEROS = [0.0] * 784


def test_single_flat_image_gets_its_class(client, mnist_test_set):
    images, labels = mnist_test_set
    result = client.simulate_post("/predict", json={"data": images[0].reshape(-1).tolist()})
    assert result.status_code == 200
    assert result.json["prediction"] == int(labels[0]) == 7
    assert result.json["model"] == "mnist-8"


def test_28x28_nested_image_is_one_example(client, mnist_test_set):
    images, labels = mnist_test_set
    result = client.simulate_post("/predict", json={"data": images[1].tolist()})
    assert result.status_code == 200
    assert result.json["prediction"] == int(labels[1])


def test_batch_answers_one_prediction_per_row(client, mnist_test_set, raw_argmax):
    images, labels = mnist_test_set
    rows = images[:16].reshape(16, -1).tolist()
    result = client.simulate_post("/predict", json={"data": rows})
    assert result.status_code == 200
    assert "prediction" not in result.json
    assert result.json["predictions"] == raw_argmax(images[:16])
    assert np.mean(np.array(result.json["predictions"]) == labels[:16]) >= 0.9


def test_batch_of_one_is_still_a_batch(client, mnist_test_set, raw_argmax):
    images = mnist_test_set[0]
    result = client.simulate_post("/predict", json={"data": [images[3].reshape(-1).tolist()]})
    assert result.status_code == 200
    assert "prediction" not in result.json
    assert result.json["predictions"] == raw_argmax(images[3:4])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_list_of_28x28_images_answers_predictions_whatever_its_length(
    client, mnist_test_set, raw_argmax, count
):
    """The answer's shape follows the shape of `data`, never the batch size: a list of
    one 28x28 image is a list, as a list of one flat image is."""
    images = mnist_test_set[0][:count]
    result = client.simulate_post("/predict", json={"data": images.tolist()})
    assert result.status_code == 200
    assert "prediction" not in result.json
    assert result.json["predictions"] == raw_argmax(images)


def test_a_list_of_images_in_the_full_item_shape_answers_predictions(
    client, mnist_test_set, raw_argmax
):
    images = mnist_test_set[0][:1]
    result = client.simulate_post("/predict", json={"data": images.reshape(1, 1, 28, 28).tolist()})
    assert result.status_code == 200
    assert result.json["predictions"] == raw_argmax(images)


@pytest.mark.parametrize(
    "shape", [(28, 28, 1), (2, 392), (1, 28, 28, 1), (784, 1)], ids=lambda s: "x".join(map(str, s))
)
def test_shapes_that_are_neither_an_example_nor_a_list_of_examples_are_400(client, shape):
    result = client.simulate_post("/predict", json={"data": np.zeros(shape).tolist()})
    assert result.status_code == 400
    assert f"data has shape {list(shape)}" in result.json["error"]
    assert "[784] or [28, 28]" in result.json["error"]


def test_a_key_other_than_data_is_400_naming_it(client):
    result = client.simulate_post("/predict", json={"data": ZEROS, "model": "mnist-8"})
    assert result.status_code == 400
    assert "'model'" in result.json["error"]


BAD_BODIES = [
    pytest.param(b'{"data": [1, 2, 3]}', "784", id="wrong-count"),
    pytest.param(json.dumps({"data": ["a"] * 784}).encode(), "only numbers", id="strings"),
    pytest.param(json.dumps({"data": [None] * 784}).encode(), "only numbers", id="nulls"),
    pytest.param(json.dumps({"data": [True] * 784}).encode(), "only numbers", id="booleans"),
    pytest.param(b'{"data": [NaN' + b", 0" * 783 + b"]}", "not valid JSON", id="nan"),
    pytest.param(b'{"data": [Infinity' + b", 0" * 783 + b"]}", "not valid JSON", id="infinity"),
    pytest.param(b'{"data": [1e39' + b", 0" * 783 + b"]}", "too large", id="overflow"),
    pytest.param(b'{"data": [[1, 2], [3]]}', "ragged", id="ragged"),
    pytest.param(b'{"data": []}', "empty", id="empty-data"),
    pytest.param(b'{"data": [[]]}', "only numbers", id="empty-rows"),
    pytest.param(b"", "empty", id="empty-body"),
    pytest.param(b'{"data": [1, 2', "not valid JSON", id="malformed"),
    pytest.param(b"[1, 2, 3]", '{"data"', id="not-an-object"),
    pytest.param(b'{"pixels": []}', '{"data"', id="no-data"),
    pytest.param(b'{"data": 7}', "list of numbers", id="scalar"),
    pytest.param(b'{"data": {"a": 1}}', "list of numbers", id="object"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_bad_input_is_400_with_a_json_reason(client, body, message):
    result = client.simulate_post(
        "/predict", body=body, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 400
    assert result.headers["content-type"].startswith("application/json")
    assert message in result.json["error"]


def test_wrong_content_type_is_415(client):
    result = client.simulate_post(
        "/predict", body=b"data=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert result.status_code == 415
    assert "application/json" in result.json["error"]


def test_body_over_the_limit_is_413(client):
    body = json.dumps({"data": [[0.123456789] * 784] * 40}).encode()
    assert len(body) > 256 * 1024
    result = client.simulate_post(
        "/predict", body=body, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 413
    assert "limit" in result.json["error"]


def test_wrong_method_is_405_with_json(client):
    result = client.simulate_get("/predict")
    assert result.status_code == 405
    assert "POST" in result.json["error"]


def test_unknown_route_is_404_with_json(client):
    result = client.simulate_get("/nothing-here")
    assert result.status_code == 404
    assert "/openapi.json" in result.json["error"]


def test_gzip_body_is_accepted(client, mnist_test_set, raw_argmax):
    import gzip

    images = mnist_test_set[0]
    plain = json.dumps({"data": images[:4].reshape(4, -1).tolist()}).encode()
    result = client.simulate_post(
        "/predict",
        body=gzip.compress(plain),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert result.status_code == 200
    assert result.json["predictions"] == raw_argmax(images[:4])
    identity = client.simulate_post("/predict", body=plain, content_type="application/json")
    assert result.json == identity.json


def test_zip_bomb_is_413(client):
    import gzip

    body = gzip.compress(b'{"data": [' + b"0," * 2_000_000 + b"0]}")
    assert len(body) < 256 * 1024
    result = client.simulate_post(
        "/predict",
        body=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert result.status_code == 413


def test_the_quick_start_answers_are_what_the_readme_shows(client):
    """README, Quick start: zeros are a 5, a batch of zeros and 255s is [5, 6], version
    2f06e72de813 (the first 12 hex digits of mnist-8's sha256)."""
    one = client.simulate_post("/predict", json={"data": [0] * 784})
    assert one.json == {"prediction": 5, "model": "mnist-8", "version": "2f06e72de813"}
    two = client.simulate_post("/predict", json={"data": [[0] * 784, [255] * 784]})
    assert two.json == {"predictions": [5, 6], "model": "mnist-8", "version": "2f06e72de813"}
