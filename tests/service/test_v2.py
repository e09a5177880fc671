"""The Open Inference Protocol routes, JSON and binary tensors, in process."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from service.codec import BINARY_HEADER, InferRequest, decode_infer, encode_infer
from service.config import Settings
from service.errors import InvalidInput
from service.model import TensorSpec

NAME = "mnist-8"
INPUT = "Input3"
OUTPUT = "Plus214_Output_0"


def infer_body(images: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {
                "name": INPUT,
                "datatype": "FP32",
                "shape": [len(images), 1, 28, 28],
                "data": images.astype(np.float32).reshape(-1).tolist(),
            }
        ],
        **extra,
    }


def binary_body(images: np.ndarray, binary_output: bool = True) -> tuple[bytes, dict]:
    blob = images.astype("<f4").tobytes()
    head = {
        "id": "req-1",
        "inputs": [
            {
                "name": INPUT,
                "datatype": "FP32",
                "shape": [len(images), 1, 28, 28],
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": binary_output}}],
    }
    encoded = json.dumps(head).encode()
    return encoded + blob, {
        BINARY_HEADER: str(len(encoded)),
        "Content-Type": "application/octet-stream",
    }


def test_server_metadata_live_and_ready(client):
    assert client.simulate_get("/v2").json["extensions"] == ["binary_tensor_data", "classification"]
    live = client.simulate_get("/v2/health/live")
    assert (live.status_code, live.json) == (200, {"live": True})
    ready = client.simulate_get("/v2/health/ready")
    assert (ready.status_code, ready.json) == (200, {"ready": True})


def test_model_metadata_reads_the_graph_with_a_dynamic_batch(client, model):
    """mnist-8's graph fixes the batch at 1, yet batches of any size are served (row by
    row): the metadata says -1 there, as Triton does for a batching model."""
    result = client.simulate_get(f"/v2/models/{NAME}")
    assert result.status_code == 200
    assert result.json["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert result.json["outputs"] == [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 10]}]
    assert result.json["versions"] == [model.info.version]
    assert result.json["parameters"]["sha256"] == model.info.sha256


def test_versioned_routes_answer_for_the_served_version(client, model):
    version = model.info.version
    assert client.simulate_get(f"/v2/models/{NAME}/versions/{version}").status_code == 200
    versioned = client.simulate_get(f"/v2/models/{NAME}/versions/{version}/ready")
    assert (versioned.status_code, versioned.json) == (200, {"name": NAME, "ready": True})
    assert client.simulate_get(f"/v2/models/{NAME}/ready").json == {"name": NAME, "ready": True}
    other = client.simulate_get(f"/v2/models/{NAME}/versions/not-{version}/ready")
    assert other.status_code == 404 and f"not-{version}" in other.json["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/resnet",
        "/v2/models/resnet/ready",
        "/v2/models/mnist-8/versions/99",
    ],
)
def test_unknown_model_or_version_is_404(client, path):
    result = client.simulate_get(path)
    assert result.status_code == 404
    assert "mnist-8" in result.json["error"]


def test_unknown_model_infer_is_404(client, mnist_test_set):
    result = client.simulate_post("/v2/models/resnet/infer", json=infer_body(mnist_test_set[0][:1]))
    assert result.status_code == 404
    assert result.json == {
        "error": "model 'resnet' is not served here; this server serves 'mnist-8' version "
        "'2f06e72de813'"
    }
    versioned = client.simulate_get(f"/v2/models/{NAME}/versions/99/ready")
    assert versioned.json == {
        "error": "model 'mnist-8' version '99' is not served here; this server serves "
        "'mnist-8' version '2f06e72de813'"
    }


def test_json_infer_matches_raw_onnxruntime(client, mnist_test_set, raw_argmax):
    images = mnist_test_set[0][:8]
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer",
        json=infer_body(images, id="abc"),
    )
    assert result.status_code == 200
    body = result.json
    assert body["id"] == "abc"
    assert body["model_name"] == NAME
    (output,) = body["outputs"]
    assert output["name"] == OUTPUT and output["shape"] == [8, 10] and output["datatype"] == "FP32"
    scores = np.array(output["data"]).reshape(8, 10)
    assert scores.argmax(axis=1).tolist() == raw_argmax(images)


def test_nested_json_data_is_accepted(client, mnist_test_set, raw_argmax):
    images = mnist_test_set[0][:3].astype(np.float32).reshape(3, 1, 28, 28)
    body = {
        "inputs": [
            {"name": INPUT, "datatype": "FP32", "shape": [3, 1, 28, 28], "data": images.tolist()}
        ]
    }
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 200
    (output,) = result.json["outputs"]
    assert output["shape"] == [3, 10]
    flat = client.simulate_post(f"/v2/models/{NAME}/infer", json=infer_body(images)).json
    assert output["data"] == flat["outputs"][0]["data"]
    assert np.array(output["data"]).reshape(3, 10).argmax(axis=1).tolist() == raw_argmax(images)


def test_binary_infer_round_trip(client, mnist_test_set, raw_argmax):
    images = mnist_test_set[0][:5]
    body, headers = binary_body(images)
    result = client.simulate_post(f"/v2/models/{NAME}/infer", body=body, headers=headers)
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/octet-stream"
    length = int(result.headers[BINARY_HEADER.lower()])
    head = json.loads(result.content[:length])
    assert head["id"] == "req-1"
    (output,) = head["outputs"]
    assert output["parameters"]["binary_data_size"] == 5 * 10 * 4
    scores = np.frombuffer(result.content[length:], dtype="<f4").reshape(5, 10)
    assert scores.argmax(axis=1).tolist() == raw_argmax(images)


def test_binary_input_with_json_output(client, mnist_test_set):
    body, headers = binary_body(mnist_test_set[0][:2], binary_output=False)
    result = client.simulate_post(f"/v2/models/{NAME}/infer", body=body, headers=headers)
    assert result.status_code == 200
    assert BINARY_HEADER.lower() not in result.headers
    assert len(result.json["outputs"][0]["data"]) == 20


def test_binary_data_output_request_parameter(client, mnist_test_set):
    body = infer_body(mnist_test_set[0][:1], parameters={"binary_data_output": True})
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 200
    assert int(result.headers[BINARY_HEADER.lower()]) < len(result.content)


def _input(**changes) -> dict:
    tensor = {"name": INPUT, "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}
    tensor.update(changes)
    return {"inputs": [tensor]}


SHAPE_RULE = "input 'Input3' 'shape' must be a list of non-negative integers"
EXPECTS = "; the model expects [-1, 1, 28, 28], where -1 is any number of rows (at least 1)"
# Each bad request with its whole message: a changed or lost message is a failure.
BAD_INFER = [
    pytest.param(
        _input(name="x"),
        "input 'x' is not an input of the model; its inputs are ['Input3']",
        id="unknown-input",
    ),
    pytest.param(
        _input(datatype="INT64"),
        "input 'Input3' has datatype 'INT64'; the model expects FP32",
        id="wrong-datatype",
    ),
    pytest.param(
        _input(datatype="BYTES"),
        "input 'Input3' has datatype 'BYTES'; the model expects FP32",
        id="bytes",
    ),
    pytest.param(
        _input(datatype=["FP32"]),
        "input 'Input3' has datatype an array; the model expects FP32",
        id="datatype-array",
    ),
    pytest.param(
        _input(datatype=None),
        "input 'Input3' has datatype null; the model expects FP32",
        id="datatype-null",
    ),
    pytest.param(
        {"inputs": [{"name": INPUT, "shape": [1, 1, 28, 28], "data": [0.5] * 784}]},
        "input 'Input3' has no 'datatype'; the model expects FP32",
        id="datatype-missing",
    ),
    pytest.param(
        _input(shape=[1, 784]), "input 'Input3' has shape [1, 784]" + EXPECTS, id="wrong-rank"
    ),
    pytest.param(
        _input(shape=[1, 1, 28, 27]),
        "input 'Input3' has shape [1, 1, 28, 27]" + EXPECTS,
        id="wrong-dim",
    ),
    pytest.param(
        _input(shape=[0, 1, 28, 28], data=[]),
        "input 'Input3' has shape [0, 1, 28, 28]" + EXPECTS,
        id="zero-batch",
    ),
    pytest.param(_input(shape="1x784"), SHAPE_RULE, id="shape-string"),
    pytest.param(_input(shape=[1, 1, 28, -28]), SHAPE_RULE, id="negative-dim"),
    pytest.param(_input(shape=[True, 1, 28, 28]), SHAPE_RULE, id="boolean-dim"),
    pytest.param(
        _input(data=[0.0] * 783),
        "input 'Input3' has 783 values; shape [1, 1, 28, 28] needs 784",
        id="short-data",
    ),
    pytest.param(
        _input(data=["x"] * 784),
        "input 'Input3' data must hold only numbers (no strings, booleans, nulls or empty lists)",
        id="string-data",
    ),
    pytest.param(
        _input(data=[0.0] * 783 + [True]),
        "input 'Input3' data must hold only numbers (no strings, booleans, nulls or empty lists)",
        id="boolean-among-data",
    ),
    pytest.param(
        _input(data=None),
        "input 'Input3' data must be a list of numbers, got null",
        id="null-data",
    ),
    pytest.param(
        _input(data=[1e39] * 784),
        "input 'Input3' data has numbers too large for float32 (or NaN/infinity)",
        id="out-of-range",
    ),
    pytest.param(
        {"inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, 1, 28, 28]}]},
        "input 'Input3' has neither 'data' nor 'binary_data_size'",
        id="no-data",
    ),
    pytest.param({"inputs": []}, "'inputs' must be a non-empty list of tensors", id="no-inputs"),
    pytest.param({}, "'inputs' must be a non-empty list of tensors", id="empty-object"),
    pytest.param([], "the inference request must be a JSON object with 'inputs'", id="array"),
    pytest.param({"inputs": [3]}, "inputs[0] must be an object", id="input-not-an-object"),
    pytest.param(
        _input(name=[INPUT]),
        "inputs[0] 'name' must be a string naming one of the model's inputs ['Input3']",
        id="input-named-by-a-list",
    ),
    pytest.param(
        {"inputs": [{k: v for k, v in _input()["inputs"][0].items() if k != "name"}]},
        "inputs[0] 'name' must be a string naming one of the model's inputs ['Input3']",
        id="input-without-a-name",
    ),
    pytest.param(
        {**_input(), "outputs": [{"name": {"a": 1}}]},
        "outputs[0] 'name' must be a string naming one of the model's outputs ['Plus214_Output_0']",
        id="output-named-by-an-object",
    ),
    pytest.param(
        {**_input(), "outputs": ["Plus214_Output_0"]},
        "outputs[0] must be an object with a 'name'",
        id="output-not-an-object",
    ),
    pytest.param(
        {**_input(), "outputs": [{"name": "nope"}]},
        "output 'nope' is not an output of the model; its outputs are ['Plus214_Output_0']",
        id="unknown-output",
    ),
    pytest.param({**_input(), "id": 7}, "'id' must be a string", id="numeric-id"),
    pytest.param(
        {**_input(), "id": "r" * 257},
        "'id' is 257 characters long; this server takes request ids of at most 256 characters "
        "(every captured record of the request carries it): send a shorter one, e.g. a UUID",
        id="id-too-long",
    ),
    pytest.param(
        {"inputs": _input()["inputs"] * 2}, "input 'Input3' is given twice", id="duplicate-input"
    ),
    pytest.param(
        {**_input(), "extra": 1},
        "the inference request has 'extra', which this server does not read; it reads 'id', "
        "'parameters', 'inputs', 'outputs'",
        id="request-key",
    ),
    pytest.param(
        {"inputs": [{**_input()["inputs"][0], "extra": 1}]},
        "input 'Input3' has 'extra', which this server does not read; it reads 'name', "
        "'shape', 'datatype', 'parameters', 'data'",
        id="input-key",
    ),
    pytest.param(
        {**_input(), "parameters": 3},
        "the request's 'parameters' must be an object",
        id="parameters-not-an-object",
    ),
    pytest.param(
        {"inputs": [{**_input()["inputs"][0], "parameters": 3}]},
        "input 'Input3' 'parameters' must be an object",
        id="input-parameters-not-an-object",
    ),
    pytest.param(
        {**_input(), "parameters": {"binary_data_output": "yes"}},
        "the request's parameter 'binary_data_output' must be true or false",
        id="binary-output-flag",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_INFER)
def test_bad_infer_request_is_400(client, body, message):
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 400, result.text
    assert result.json["error"] == message


def test_binary_size_mismatch_is_400(client, mnist_test_set):
    body, headers = binary_body(mnist_test_set[0][:1])
    result = client.simulate_post(f"/v2/models/{NAME}/infer", body=body[:-4], headers=headers)
    assert result.status_code == 400
    assert result.json == {"error": "input 'Input3' declares more binary data than the body holds"}


def test_binary_trailing_bytes_are_400(client, mnist_test_set):
    body, headers = binary_body(mnist_test_set[0][:1])
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", body=body + b"\0" * 8, headers=headers
    )
    assert result.status_code == 400
    assert result.json == {"error": "the body has 8 bytes of binary data that no input declares"}


def test_binary_nan_is_400(client):
    blob = np.full((1, 1, 28, 28), np.nan, dtype="<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "datatype": "FP32",
                    "shape": [1, 1, 28, 28],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", body=head + blob, headers={BINARY_HEADER: str(len(head))}
    )
    assert result.status_code == 400
    assert result.json == {"error": "input 'Input3' holds NaN or infinity"}


@pytest.mark.parametrize("value", ["abc", "0", "999999"])
def test_bad_binary_header_is_400(client, value):
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", body=b'{"inputs": []}', headers={BINARY_HEADER: value}
    )
    assert result.status_code == 400
    assert BINARY_HEADER in result.json["error"]


def test_infer_wrong_content_type_is_415(client):
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", body=b"x", headers={"Content-Type": "text/plain"}
    )
    assert result.status_code == 415
    assert result.json == {
        "error": "Content-Type 'text/plain' is not accepted here; "
        "send application/json or application/octet-stream"
    }


def test_v2_wrong_method_is_405(client):
    assert client.simulate_delete("/v2").status_code == 405
    assert client.simulate_get(f"/v2/models/{NAME}/infer").status_code == 405


# -- request parameters: implemented, or refused by name -----------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        pytest.param({"parameters": {"priority": 1}}, "'priority'", id="request-priority"),
        pytest.param({"parameters": {"timeout": 1000}}, "'timeout'", id="request-timeout"),
        pytest.param(
            {"parameters": {"sequence_id": 7, "sequence_start": True}},
            "'sequence_id', 'sequence_start'",
            id="request-sequence",
        ),
        pytest.param({"parameters": {"my_custom": "x"}}, "'my_custom'", id="request-custom"),
        pytest.param(
            {"outputs": [{"name": OUTPUT, "parameters": {"shared_memory_region": "r"}}]},
            "output 'Plus214_Output_0' parameter 'shared_memory_region'",
            id="output-shared-memory",
        ),
        pytest.param(
            {"outputs": [{"name": OUTPUT, "parameters": {"top_k": 3}}]},
            "'top_k'",
            id="output-custom",
        ),
        pytest.param({"model_name": NAME}, "'model_name'", id="request-unknown-key"),
        pytest.param({"output": [{"name": OUTPUT}]}, "'output'", id="request-typo-key"),
        pytest.param(
            {"outputs": [{"name": OUTPUT, "datatype": "FP32"}]}, "'datatype'", id="output-key"
        ),
    ],
)
def test_unimplemented_request_parameters_and_keys_are_400_naming_them(client, changes, named):
    body = {**_input(), **changes}
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 400, result.text
    assert named in result.json["error"]


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"shared_memory_region": "r", "shared_memory_byte_size": 3136}, "'shared_memory_region'"),
        ({"content_type": "np"}, "'content_type'"),
    ],
)
def test_unimplemented_input_parameters_are_400_naming_them(client, parameters, named):
    body = _input(parameters=parameters)
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 400
    assert f"input 'Input3' parameter {named}" in result.json["error"]


def test_an_unknown_input_key_is_400(client):
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=_input(contents=[0] * 784))
    assert result.status_code == 400
    assert "'contents'" in result.json["error"]


def test_data_and_binary_data_size_together_are_400(client):
    blob = np.zeros((1, 1, 28, 28), "<f4").tobytes()
    head = json.dumps(_input(parameters={"binary_data_size": len(blob)})).encode()
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", body=head + blob, headers={BINARY_HEADER: str(len(head))}
    )
    assert result.status_code == 400
    assert "both 'data' and 'binary_data_size'" in result.json["error"]


CLASSIFICATION_RULE = (
    "output 'Plus214_Output_0' parameter 'classification' must be a whole number of classes "
    "(0 answers the scores)"
)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"binary_data": "yes"},
            "output 'Plus214_Output_0' parameter 'binary_data' must be true or false",
        ),
        ({"classification": -1}, CLASSIFICATION_RULE),
        ({"classification": 2.5}, CLASSIFICATION_RULE),
        ({"classification": True}, CLASSIFICATION_RULE),
    ],
)
def test_malformed_output_parameters_are_400(client, parameters, message):
    body = {**_input(), "outputs": [{"name": OUTPUT, "parameters": parameters}]}
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 400
    assert result.json == {"error": message}


def test_a_non_boolean_binary_data_output_is_400(client):
    body = {**_input(), "parameters": {"binary_data_output": 1}}
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 400
    assert "'binary_data_output' must be true or false" in result.json["error"]


def test_an_output_requested_twice_is_400(client):
    body = {**_input(), "outputs": [{"name": OUTPUT}, {"name": OUTPUT}]}
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 400
    assert "requested twice" in result.json["error"]


@pytest.mark.parametrize("binary_output", [False, True], ids=["json", "binary"])
def test_an_empty_outputs_list_answers_every_output(client, mnist_test_set, binary_output):
    """The protocol returns all outputs when none are named; Triton reads [] the same way."""
    images = mnist_test_set[0][:2]
    body = infer_body(images, outputs=[], parameters={"binary_data_output": binary_output})
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 200
    length = int(result.headers.get(BINARY_HEADER.lower(), len(result.content)))
    head = json.loads(result.content[:length])
    assert [output["name"] for output in head["outputs"]] == [OUTPUT]
    assert head["outputs"][0]["shape"] == [2, 10]
    assert ("parameters" in head["outputs"][0]) is binary_output


# -- Triton's classification extension ----------------------------------------------------


WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def raw_scores(mnist8_path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(mnist8_path), providers=["CPUExecutionProvider"])
    rows = [
        session.run(None, {INPUT: image.reshape(1, 1, 28, 28).astype("f4")})[0] for image in images
    ]
    return np.concatenate(rows)


def classify(client, images: np.ndarray, count, binary: bool = False):
    parameters = {"classification": count, "binary_data": binary}
    body = infer_body(images, outputs=[{"name": OUTPUT, "parameters": parameters}])
    return client.simulate_post(f"/v2/models/{NAME}/infer", json=body)


def test_classification_answers_the_top_classes_as_bytes(client, mnist_test_set, mnist8_path):
    images = mnist_test_set[0][:4]
    result = classify(client, images, 3)
    assert result.status_code == 200, result.text
    (output,) = result.json["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [4, 3]
    entries = np.array(output["data"]).reshape(4, 3)
    scores = raw_scores(mnist8_path, images)
    for row, row_scores in zip(entries, scores, strict=True):
        ranked = [int(entry.split(":")[1]) for entry in row]
        assert ranked == np.argsort(-row_scores, kind="stable")[:3].tolist()
        for entry, index in zip(row, ranked, strict=True):
            assert entry == f"{float(row_scores[index]):f}:{index}"  # no labels: two fields


def test_classification_in_binary_uses_bytes_serialization(client, mnist_test_set, mnist8_path):
    images = mnist_test_set[0][:2]
    result = classify(client, images, 2, binary=True)
    assert result.status_code == 200
    length = int(result.headers[BINARY_HEADER.lower()])
    (output,) = json.loads(result.content[:length])["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [2, 2]
    blob, entries = result.content[length:], []
    assert output["parameters"]["binary_data_size"] == len(blob)
    while blob:
        size = int.from_bytes(blob[:4], "little")
        entries.append(blob[4 : 4 + size].decode())
        blob = blob[4 + size :]
    expected = raw_scores(mnist8_path, images).argmax(axis=1).tolist()
    assert [int(entries[0].split(":")[1]), int(entries[2].split(":")[1])] == expected


def test_classification_count_is_capped_at_the_classes_and_zero_means_scores(
    client, mnist_test_set
):
    images = mnist_test_set[0][:1]
    capped = classify(client, images, 50).json["outputs"][0]
    assert capped["shape"] == [1, 10]
    scores = classify(client, images, 0).json["outputs"][0]
    assert scores["datatype"] == "FP32" and scores["shape"] == [1, 10]


def test_classification_carries_the_labels(settings, mnist_test_set, mnist8_path):
    from falcon import testing

    from service.app import create_app
    from service.loader import load_model

    labelled = Settings(**{**settings.__dict__, "model_labels": WORDS})
    client = testing.TestClient(create_app(labelled, model=load_model(labelled)))
    images = mnist_test_set[0][:3]
    result = classify(client, images, 1)
    assert result.status_code == 200
    expected = raw_scores(mnist8_path, images).argmax(axis=1)
    for entry, index in zip(result.json["outputs"][0]["data"], expected, strict=True):
        _, position, label = entry.split(":")
        assert int(position) == index and label == WORDS[index]


def test_the_answer_names_the_model_and_its_version(client, model, mnist_test_set):
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", json=infer_body(mnist_test_set[0][:1])
    )
    assert result.json["model_name"] == NAME
    assert result.json["model_version"] == model.info.version == "2f06e72de813"


def test_outputs_that_are_not_a_list_or_carry_unread_keys_are_400_saying_so(client, mnist_test_set):
    body = infer_body(mnist_test_set[0][:1], outputs={"name": OUTPUT})
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 400
    assert result.json["error"] == "'outputs' must be a list of objects with a 'name'"
    body = infer_body(mnist_test_set[0][:1], outputs=[{"name": OUTPUT, "shape": [1]}])
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=body)
    assert result.status_code == 400
    assert result.json["error"].startswith(f"output {OUTPUT!r} has 'shape', which this server")


def test_a_binary_header_length_of_the_whole_body_is_a_json_only_request(client, mnist_test_set):
    """Inference-Header-Content-Length may cover the whole body (no binary data); 0 or
    more than the body is refused, naming both lengths."""
    body = json.dumps(infer_body(mnist_test_set[0][:1])).encode()
    path = f"/v2/models/{NAME}/infer"
    headers = {"Content-Type": "application/octet-stream"}
    whole = client.simulate_post(
        path, body=body, headers={**headers, "Inference-Header-Content-Length": str(len(body))}
    )
    assert whole.status_code == 200, whole.text
    for length in (0, len(body) + 1):
        refused = client.simulate_post(
            path, body=body, headers={**headers, "Inference-Header-Content-Length": str(length)}
        )
        assert refused.status_code == 400
        assert refused.json["error"] == (
            f"Inference-Header-Content-Length is {length} but the body has {len(body)} bytes"
        )


def test_infer_answers_for_the_served_version_only(client, model, mnist_test_set, raw_argmax):
    images = mnist_test_set[0][:2]
    served = client.simulate_post(
        f"/v2/models/{NAME}/versions/{model.info.version}/infer", json=infer_body(images)
    )
    assert served.status_code == 200
    scores = np.array(served.json["outputs"][0]["data"]).reshape(2, 10)
    assert scores.argmax(axis=1).tolist() == raw_argmax(images)
    other = client.simulate_post(f"/v2/models/{NAME}/versions/99/infer", json=infer_body(images))
    assert other.status_code == 404 and "99" in other.json["error"]


def _binary_request(size: object, blob: bytes) -> tuple[bytes, dict]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "datatype": "FP32",
                    "shape": [1, 1, 28, 28],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return head + blob, {BINARY_HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def test_a_request_id_of_up_to_256_characters_is_taken_on_json_and_binary_requests(recorded):
    client, records = recorded
    blob = np.zeros(784, dtype=np.float32).tobytes()
    head, headers = _binary_request(len(blob), b"")  # the JSON header alone
    for request_id, status in (("é" * 256, 200), ("é" * 257, 400)):
        document = {**_input(), "id": request_id}
        answered = client.simulate_post(f"/v2/models/{NAME}/infer", json=document)
        binary_head = json.dumps({**json.loads(head), "id": request_id}).encode()
        binary = client.simulate_post(
            f"/v2/models/{NAME}/infer",
            body=binary_head + blob,
            headers={**headers, BINARY_HEADER: str(len(binary_head))},
        )
        assert answered.status_code == binary.status_code == status
        if status == 200:
            assert answered.json["id"] == binary.json["id"] == request_id
        else:
            assert answered.json["error"].startswith("'id' is 257 characters long")
            assert binary.json == answered.json
    # The model ran for the two answered requests only, and their records carry the id.
    assert [record["request_id"] for record in records] == ["é" * 256] * 2


SIZE_RULE = "input 'Input3' 'binary_data_size' must be a non-negative integer"


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (-4, SIZE_RULE),
        (True, SIZE_RULE),
        ("3136", SIZE_RULE),
        (0, "input 'Input3' declares 0 bytes; shape [1, 1, 28, 28] of FP32 needs 3136"),
        (3132, "input 'Input3' declares 3132 bytes; shape [1, 1, 28, 28] of FP32 needs 3136"),
    ],
)
def test_a_binary_data_size_that_is_not_the_tensors_is_400(client, size, message):
    body, headers = _binary_request(size, bytes(3136))
    result = client.simulate_post(f"/v2/models/{NAME}/infer", body=body, headers=headers)
    assert result.status_code == 400
    assert result.json == {"error": message}


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (1, "the request body is not valid JSON: unexpected end of data: line 1 column 2 (char 1)"),
        (2, "the inference request must be a JSON object with 'inputs'"),
    ],
)
def test_a_one_byte_json_header_is_read_as_json(client, length, message):
    """Any length from 1 to the body's is a JSON header to read: `{` alone is malformed
    JSON, `[]` is not an object (not a refused header length)."""
    body = b"{" if length == 1 else b"[]"
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", body=body + bytes(8), headers={BINARY_HEADER: str(length)}
    )
    assert result.status_code == 400
    assert result.json == {"error": message}


def test_a_dimension_of_one_past_the_batch_is_checked(client):
    """Only the batch dimension may differ from the model's 1: [1, 2, 28, 28] is refused."""
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", json=_input(shape=[1, 2, 28, 28], data=[0.0] * 1568)
    )
    assert result.json == {"error": "input 'Input3' has shape [1, 2, 28, 28]" + EXPECTS}


def test_a_shape_mismatch_shows_the_shape_as_the_metadata_does(client):
    """The graph fixes mnist-8's batch at 1, but any number of rows is served and the
    metadata says -1 there: the refusal says the same, and what -1 means."""
    metadata = client.simulate_get(f"/v2/models/{NAME}").json["inputs"][0]["shape"]
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", json=_input(shape=[4, 784], data=[0.0] * 3136)
    )
    assert result.status_code == 400
    assert result.json == {
        "error": f"input 'Input3' has shape [4, 784]; the model expects {metadata}, where -1 "
        "is any number of rows (at least 1)"
    }
    assert metadata == [-1, 1, 28, 28]


@pytest.mark.parametrize("zeros", [False, True], ids=["image", "zeros"])
def test_a_binary_body_without_its_header_length_is_400_naming_the_header(
    client, mnist_test_set, zeros
):
    """Triton's binary tensor data extension: Inference-Header-Content-Length must be given
    whenever binary data follows the JSON header. (A tail of zeros is valid UTF-8.)"""
    images = mnist_test_set[0][:1]
    body, headers = binary_body(np.zeros_like(images) if zeros else images)
    length = int(headers.pop(BINARY_HEADER))
    result = client.simulate_post(f"/v2/models/{NAME}/infer", body=body, headers=headers)
    assert result.status_code == 400
    assert result.json == {
        "error": f"the body has {len(body) - length} bytes after a {length}-byte JSON header "
        f"but no {BINARY_HEADER} header, which a request with binary data must carry "
        f"(Triton's binary tensor data extension): send the JSON header's length in bytes, "
        f"{length} here"
    }


def test_a_repeated_key_counts_its_last_occurrence(client, mnist_test_set, raw_argmax):
    """README, "Request parameters and headers": RFC 8259 section 4 leaves repeated names to
    the parser; the lane (msgspec) and the general path (orjson) both keep the last one."""
    image = mnist_test_set[0][:1]
    tensor = json.dumps(infer_body(image)["inputs"][0])
    body = ('{"inputs": [{"name": "nope"}], "inputs": [' + tensor + "]}").encode()
    result = client.simulate_post(f"/v2/models/{NAME}/infer", body=body)
    assert result.status_code == 200, result.text
    assert np.argmax(result.json["outputs"][0]["data"]) == raw_argmax(image)[0]
    repeated_data = tensor.replace('"data": [', '"data": ["x"], "data": [')
    result = client.simulate_post(
        f"/v2/models/{NAME}/infer", body=f'{{"inputs": [{repeated_data}]}}'
    )
    assert result.status_code == 200, result.text


def test_the_recorder_gets_the_v2_request_its_scores_and_its_latency(recorded, mnist_test_set):
    client, records = recorded
    images = mnist_test_set[0][:2].astype(np.float32)
    started = time.perf_counter()
    result = client.simulate_post(f"/v2/models/{NAME}/infer", json=infer_body(images, id="v2-9"))
    elapsed = time.perf_counter() - started
    (record,) = records
    assert record["route"] == "/v2/infer" and record["request_id"] == "v2-9"
    assert record["inputs"].shape == (2, 1, 28, 28)
    assert record["inputs"].reshape(2, -1).tolist() == images.reshape(2, -1).tolist()
    assert record["scores"].reshape(-1).tolist() == result.json["outputs"][0]["data"]
    assert 0 < record["latency_seconds"] <= elapsed


# -- the codec on signatures other than mnist-8's ----------------------------------------
# decode_infer and encode_infer are pure functions of the body and the model's tensors:
# several inputs, dynamic dimensions, integer and boolean tensors, two outputs.

F32 = np.dtype(np.float32)
PIXELS = TensorSpec("pixels", F32, "FP32", (-1, 3))
COUNTS = TensorSpec("counts", np.dtype(np.int64), "INT64", (-1, 2))
BYTE = TensorSpec("byte", np.dtype(np.uint8), "UINT8", (-1, 1))
SCORES = TensorSpec("scores", F32, "FP32", (-1, 2))
FLAGS = TensorSpec("flags", np.dtype(np.bool_), "BOOL", (-1, 2))


def _tensor(spec: TensorSpec, shape: list[int], **fields) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": shape, **fields}


def _decode(document: dict, inputs=(PIXELS, COUNTS), outputs=(SCORES,), tail: bytes = b""):
    head = json.dumps(document).encode()
    return decode_infer(head + tail, str(len(head)) if tail else None, inputs, outputs)


def test_two_binary_inputs_each_take_their_own_bytes():
    pixels = np.array([[1.5, 2, 3], [4, 5, 6]], "<f4")
    counts = np.array([[7, 8], [9, -10]], "<i8")
    request = _decode(
        {
            "inputs": [
                _tensor(PIXELS, [2, 3], parameters={"binary_data_size": pixels.nbytes}),
                _tensor(COUNTS, [2, 2], parameters={"binary_data_size": counts.nbytes}),
            ]
        },
        tail=pixels.tobytes() + counts.tobytes(),
    )
    assert request.inputs["pixels"].dtype == F32 and request.inputs["pixels"].shape == (2, 3)
    assert request.inputs["pixels"].tolist() == pixels.tolist()
    assert request.inputs["counts"].dtype == np.int64
    assert request.inputs["counts"].tolist() == [[7, 8], [9, -10]]


def test_a_fixed_batch_other_than_one_is_named_as_fixed():
    """A graph that fixes its batch at 4 takes exactly 4 rows, and says so."""
    four = TensorSpec("four", F32, "FP32", (4, 3))
    with pytest.raises(InvalidInput) as wrong:
        _decode({"inputs": [_tensor(four, [2, 3], data=[0] * 6)]}, inputs=(four,))
    assert wrong.value.message == "input 'four' has shape [2, 3]; the model expects [4, 3]"
    request = _decode({"inputs": [_tensor(four, [4, 3], data=[0] * 12)]}, inputs=(four,))
    assert request.inputs["four"].shape == (4, 3)


def test_a_missing_input_and_unequal_batches_are_400():
    with pytest.raises(InvalidInput) as missing:
        _decode({"inputs": [_tensor(PIXELS, [1, 3], data=[1, 2, 3])]})
    assert (
        missing.value.message == "missing inputs ['counts']; the model needs ['pixels', 'counts']"
    )
    with pytest.raises(InvalidInput) as unequal:
        _decode(
            {
                "inputs": [
                    _tensor(PIXELS, [2, 3], data=[0] * 6),
                    _tensor(COUNTS, [1, 2], data=[0] * 2),
                ]
            }
        )
    assert unequal.value.message == "all inputs must have the same batch size"


def test_dynamic_dimensions_take_any_size_and_a_batch_of_one_any_batch():
    """-1 is any size; a graph that fixes the batch at 1 is served row by row, so its
    batch dimension takes any size too (the other dimensions are checked)."""
    wide = TensorSpec("wide", F32, "FP32", (-1, -1))
    request = _decode({"inputs": [_tensor(wide, [2, 5], data=list(range(10)))]}, inputs=(wide,))
    assert request.inputs["wide"].shape == (2, 5)
    fixed = TensorSpec("fixed", F32, "FP32", (1, 3))
    request = _decode({"inputs": [_tensor(fixed, [2, 3], data=[0] * 6)]}, inputs=(fixed,))
    assert request.inputs["fixed"].shape == (2, 3)
    with pytest.raises(InvalidInput) as wrong:
        _decode({"inputs": [_tensor(fixed, [2, 4], data=[0] * 8)]}, inputs=(fixed,))
    assert wrong.value.message == (
        "input 'fixed' has shape [2, 4]; the model expects [-1, 3], where -1 is any number of "
        "rows (at least 1)"
    )
    with pytest.raises(InvalidInput) as dynamic:
        _decode({"inputs": [_tensor(wide, [2], data=[0] * 2)]}, inputs=(wide,))
    assert dynamic.value.message == (
        "input 'wide' has shape [2]; the model expects [-1, -1], where -1 is any size (at "
        "least 1 in the first dimension, the rows)"
    )


def test_an_output_without_an_order_cannot_be_a_classification():
    with pytest.raises(InvalidInput) as refused:
        _decode(
            {
                "inputs": [
                    _tensor(PIXELS, [1, 3], data=[0] * 3),
                    _tensor(COUNTS, [1, 2], data=[0, 0]),
                ],
                "outputs": [{"name": "flags", "parameters": {"classification": 1}}],
            },
            outputs=(SCORES, FLAGS),
        )
    assert refused.value.message == "output 'flags' is BOOL, whose values cannot rank classes"


def test_two_binary_outputs_follow_the_json_header_in_order():
    scores = np.array([[0.25, 0.75]], F32)
    flags = np.array([[True, False]])
    request = InferRequest("r", {}, ("scores", "flags"), frozenset({"scores", "flags"}))
    body, length = encode_infer(
        "m", "1", request, {"scores": scores, "flags": flags}, (SCORES, FLAGS)
    )
    head = json.loads(body[:length])
    assert head == {
        "model_name": "m",
        "model_version": "1",
        "id": "r",
        "outputs": [
            {
                "name": "scores",
                "datatype": "FP32",
                "shape": [1, 2],
                "parameters": {"binary_data_size": 8},
            },
            {
                "name": "flags",
                "datatype": "BOOL",
                "shape": [1, 2],
                "parameters": {"binary_data_size": 2},
            },
        ],
    }
    assert body[length:] == scores.astype("<f4").tobytes() + b"\x01\x00"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([300], "input 'byte' data has numbers out of range for uint8 (0 to 255)"),
        ([-1], "input 'byte' data has numbers out of range for uint8 (0 to 255)"),
        ([1e30], "input 'byte' data has numbers out of range for uint8 (0 to 255)"),
        ([256.0], "input 'byte' data has numbers out of range for uint8 (0 to 255)"),
        ([1.5], "input 'byte' data has numbers with a fraction; uint8 holds whole numbers"),
    ],
)
def test_numbers_an_integer_input_cannot_hold_are_400(data, message):
    """An integer tensor's JSON numbers must fit its type exactly: numpy's cast would
    wrap 300 to 44 and -1 to 255, and cut 1.5 to 1, and the model would answer for
    numbers nobody sent."""
    with pytest.raises(InvalidInput) as refused:
        _decode({"inputs": [_tensor(BYTE, [1, 1], data=data)]}, inputs=(BYTE,))
    assert refused.value.message == message


@pytest.mark.parametrize(("data", "expected"), [([0], 0), ([255], 255), ([7.0], 7)])
def test_an_integer_input_takes_every_whole_number_of_its_range(data, expected):
    request = _decode({"inputs": [_tensor(BYTE, [1, 1], data=data)]}, inputs=(BYTE,))
    assert request.inputs["byte"].dtype == np.uint8
    assert request.inputs["byte"].tolist() == [[expected]]


# Every place of a request a client fills in, and a value of every JSON kind for it.
KINDS = [None, True, 1.5, -1, "x", [1], {"a": 1}, []]
PLACES = [
    ("id",),
    ("parameters",),
    ("parameters", "binary_data_output"),
    ("inputs",),
    ("inputs", 0),
    ("inputs", 0, "name"),
    ("inputs", 0, "shape"),
    ("inputs", 0, "shape", 0),
    ("inputs", 0, "datatype"),
    ("inputs", 0, "data"),
    ("inputs", 0, "data", 0),
    ("inputs", 0, "parameters"),
    ("inputs", 0, "parameters", "binary_data_size"),
    ("outputs",),
    ("outputs", 0),
    ("outputs", 0, "name"),
    ("outputs", 0, "parameters"),
    ("outputs", 0, "parameters", "binary_data"),
    ("outputs", 0, "parameters", "classification"),
]


def _with(place: tuple, value: object) -> dict:
    request = {
        **_input(),
        "id": "req-1",
        "parameters": {},
        "outputs": [{"name": OUTPUT, "parameters": {}}],
    }
    request["inputs"][0]["parameters"] = {}
    *path, last = place
    target = request
    for step in path:
        target = target[step]
    target[last] = value
    return request


@pytest.mark.parametrize("place", PLACES, ids=lambda p: ".".join(map(str, p)))
def test_any_value_anywhere_is_answered_or_refused_with_a_reason(client, place):
    """A value of any JSON kind in any place of a request gets a 200 or a 400 with a
    message, never a server error (a list or an object where a name is looked up once
    made a 500)."""
    for value in KINDS:
        result = client.simulate_post(f"/v2/models/{NAME}/infer", json=_with(place, value))
        assert result.status_code in (200, 400), (place, value, result.text)
        if result.status_code == 400:
            assert result.json["error"], (place, value)
