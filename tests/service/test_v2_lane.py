"""The fast lane for V2 requests: the general path's request bit for bit, or nothing.

With `NumberArrays` given, `codec.decode_infer` first reads the request's structure with
msgspec's typed decoder and each float input's JSON `data` straight into numpy
(service.codec._lane_request), for JSON and binary tensors alike; it must give exactly
the `InferRequest` the general path (orjson, a key at a time, then `np.asarray`) gives
for every body the general path takes, and every error must be the general path's,
word for word.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import codec
from service.errors import InvalidInput
from service.jsonnumbers import NumberArrays
from service.model import TensorSpec
from tests.service.test_jsonnumbers import NUMBER_TEXT
from tests.service.test_v2 import BAD_INFER, INPUT, OUTPUT, binary_body

SHAPE = [1, 1, 28, 28]


@pytest.fixture(scope="module")
def all_test_images(reference_files: dict[str, Path]) -> np.ndarray:
    """The whole MNIST test set (10,000 images): float32 [N, 784]."""
    from pipeline.datasets import read_idx_images

    images = read_idx_images(reference_files["images"])
    return images.reshape(len(images), -1).astype(np.float32)


def infer_body(data: object, shape: list[int] = SHAPE, **extra: object) -> bytes:
    """A V2 JSON request for the model's input (the standard library's encoder: it
    writes integers of any size, which orjson refuses past 64 bits)."""
    tensor = {"name": INPUT, "shape": shape, "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def image_body(image: np.ndarray, **extra: object) -> bytes:
    """One image's V2 JSON request, as orjson (a client's usual encoder) writes it."""
    tensor = {"name": INPUT, "shape": SHAPE, "datatype": "FP32", "data": image.tolist()}
    return orjson.dumps({"inputs": [tensor], **extra})


def decoded(
    model, body: bytes, numbers: NumberArrays | None, header_length: str | None = None
) -> codec.InferRequest | str:
    """What decode_infer makes of `body` (its request, or its error's message)."""
    try:
        return codec.decode_infer(body, header_length, model.inputs, model.outputs, numbers)
    except InvalidInput as exc:
        return exc.message


def same(a: codec.InferRequest | str, b: codec.InferRequest | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if (a.id, a.outputs, a.binary_outputs, a.classifications) != (
        b.id,
        b.outputs,
        b.binary_outputs,
        b.classifications,
    ) or a.inputs.keys() != b.inputs.keys():
        return False
    return all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in ((a.inputs[k], b.inputs[k]) for k in a.inputs)
    )


def taken_by_the_lane(model, body: bytes, header_length: str | None = None) -> bool:
    head, tail = codec.split_binary(body, header_length)
    lane = codec._lane_request(
        head, tail, model.inputs, model.outputs, NumberArrays(), header_length is not None
    )
    return lane is not None


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["pixels", "scaled-0-1"])
def test_every_mnist_test_image_decodes_as_the_general_path(all_test_images, model, scale):
    """Each of the 10,000 images as its own V2 JSON request: the lane takes it and the
    request is the general path's bit for bit, equal to the original float32 pixels."""
    images = (all_test_images / np.float32(scale)).astype(np.float32)
    lane = NumberArrays()
    for i, image in enumerate(images):
        body = image_body(image, id=f"req-{i}")
        fast = decoded(model, body, lane)
        assert taken_by_the_lane(model, body), f"image {i}: the lane declined a plain request"
        assert same(fast, decoded(model, body, None)), f"image {i}: the lane and general differ"
        assert fast.inputs[INPUT].tobytes() == image.tobytes()


def test_batches_flat_and_as_rows_decode_as_the_general_path(all_test_images, model):
    """A batch of 100 images, its data flat or as one row per image (row-major, as the
    protocol allows), with the usual output options."""
    lane = NumberArrays()
    rows = all_test_images[:100] / np.float32(255)
    outputs = [{"name": OUTPUT, "parameters": {"classification": 3}}]
    for data in (rows.reshape(-1).tolist(), rows.tolist()):
        body = infer_body(data, [100, 1, 28, 28], outputs=outputs, parameters={})
        assert taken_by_the_lane(model, body)
        fast = decoded(model, body, lane)
        assert same(fast, decoded(model, body, None))
        assert fast.inputs[INPUT].shape == (100, 1, 28, 28)
        assert fast.classifications == {OUTPUT: 3}


def test_the_lane_builds_no_python_float_for_the_numbers(model, monkeypatch):
    """The general path's list-to-array step is not reached for a plain request."""

    def general_numbers(*args: object) -> np.ndarray:
        raise AssertionError("the numbers went through Python floats")

    monkeypatch.setattr(codec, "numeric_array", general_numbers)
    request = codec.decode_infer(
        infer_body([0.5] * 784), None, model.inputs, model.outputs, NumberArrays()
    )
    assert request.inputs[INPUT].dtype == np.float32
    assert request.inputs[INPUT].reshape(-1).tolist() == [0.5] * 784


ZEROS = [0] * 783
# Requests the lane must decline or agree on, whatever the general path makes of them.
LOOK_ALIKES = [
    # repeated keys: msgspec and orjson both keep the last
    b'{"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", '
    b'"data": [1], "data": [' + b"0," * 783 + b"2]}]}",
    b'{"id": "a", "id": "b", "inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], '
    b'"datatype": "FP32", "data": [' + b"0," * 783 + b"2]}]}",
    # integers a double cannot hold: np.asarray makes int64 and rounds to float32 once
    infer_body([*ZEROS, 2**60 + 2**36 + 1]),
    infer_body([*ZEROS, 2**53 + 1]),
    infer_body([*ZEROS, 2**63]),  # uint64 in np.asarray
    infer_body([*ZEROS, -(2**63)]),
    infer_body([*ZEROS, 2**53]),
    infer_body([*ZEROS, 2**53 + 0.5]),  # a double: the same both ways
    infer_body([*ZEROS, 2**64]),  # beyond 64 bits: orjson makes it a float
    infer_body([True, *([0.5] * 783)]),  # a boolean among floats: refused by both
    infer_body([*([0.5] * 783), False]),
    infer_body([[[[0.5] * 28] * 28]]),  # nested as the shape: not for the lane
    infer_body([[0.5] * 784, [0.5] * 783]),  # ragged rows
    infer_body([[0.5] * 784, 0.5]),
    infer_body([-0.0, *([0] * 783)]),
    infer_body([0, *([-0] * 783)]),
    b'{"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ['
    + b"0, " * 783
    + b"1e400]}]}",
    b'{"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ['
    + b"0, " * 783
    + b'"\xff"]}]}',
    b'{"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ['
    + b"0, " * 783
    + b"1]}]} x",
    b'  {"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", '
    b'"data": [' + b"0 , " * 783 + b"1 ] } ] }  ",
    infer_body([0.5] * 784, outputs=[{"name": OUTPUT, "parameters": {"classification": 10**30}}]),
    infer_body([0.5] * 784, parameters={"binary_data_output": 1e308}),
    b'{"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ['
    + b"0, " * 783
    + b'1], "parameters": {"binary_data_size": 1e400}}]}',
    infer_body([0.5] * 784, id="caf\u00e9 \\u00e9"),
    b'{"id": "\\ud800", "inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], '
    b'"datatype": "FP32", "data": [' + b"0," * 783 + b"2]}]}",
    orjson.dumps(
        {"inputs": [{"name": INPUT, "shape": SHAPE, "datatype": "FP64", "data": [0.5] * 784}]}
    ),
    orjson.dumps(
        {"inputs": [{"name": 3, "shape": SHAPE, "datatype": "FP32", "data": [0.5] * 784}]}
    ),
    # a name no dict can hold: the lane must not look it up among the model's inputs
    orjson.dumps(
        {"inputs": [{"name": [INPUT], "shape": SHAPE, "datatype": "FP32", "data": [0.5] * 784}]}
    ),
    orjson.dumps({"inputs": {"name": INPUT}}),
    orjson.dumps({"inputs": [{"name": INPUT, "shape": SHAPE, "datatype": "FP32", "data": []}]}),
    orjson.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": SHAPE,
                    "datatype": "FP32",
                    "data": [0.5] * 784,
                    "parameters": {"binary_data_size": 3136},
                }
            ]
        }
    ),
    b"",
    b"null",
    b"[1, 2]",
    # nesting deeper than Python's recursion limit (msgspec, the standard library's json)
    b'{"inputs": [], "outputs": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


@pytest.mark.parametrize(
    "body",
    [orjson.dumps(param.values[0]) for param in BAD_INFER] + LOOK_ALIKES,
)
def test_every_request_gets_the_general_paths_answer(model, body):
    """The bad-input corpus and the look-alikes: the same request, or the same message."""
    assert same(decoded(model, body, NumberArrays()), decoded(model, body, None))


def test_integers_a_double_rounds_twice_are_declined(model):
    """2**60 + 2**36 + 1 is one above float32's midpoint between 2**60 and its next: int64
    rounds it up to float32 once, a double first drops the 1 and then rounds to even
    (down). The lane leaves all-integer data with such numbers to the general path."""
    body = infer_body([*ZEROS, 2**60 + 2**36 + 1])
    assert not taken_by_the_lane(model, body)
    general = decoded(model, body, None)
    assert general.inputs[INPUT].reshape(-1)[-1] == np.float32(2**60 + 2**37)
    assert NumberArrays().decode_array(b"[1, 9007199254740991]", np.dtype(np.float32)) is not None
    assert NumberArrays().decode_array(b"[1, 9007199254740993]", np.dtype(np.float32)) is None


def test_the_route_answers_a_json_tensor_through_the_lane(client, all_test_images):
    """POST /v2/models/mnist-8/infer with the first test image: class 7, as raw
    onnxruntime says (its label)."""
    body = infer_body(all_test_images[0].tolist(), id="req-1")
    result = client.simulate_post(
        "/v2/models/mnist-8/infer", body=body, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 200, result.text
    assert result.json["id"] == "req-1"
    assert int(np.argmax(result.json["outputs"][0]["data"])) == 7


def test_every_mnist_test_image_as_binary_tensors_decodes_as_the_general_path(
    all_test_images, model
):
    """Each of the 10,000 images as its own binary request (Triton's binary tensor
    extension, a binary output asked for): the lane takes it, and the request is the
    general path's bit for bit, the image's float32 pixels."""
    lane = NumberArrays()
    for i, image in enumerate(all_test_images / np.float32(255)):
        body, headers = binary_body(image.reshape(1, 1, 28, 28))
        length = headers[codec.BINARY_HEADER]
        assert taken_by_the_lane(model, body, length), f"image {i}: the lane declined it"
        fast = decoded(model, body, lane, length)
        assert same(fast, decoded(model, body, None, length)), f"image {i}: they differ"
        assert fast.inputs[INPUT].tobytes() == image.tobytes()
        assert fast.binary_outputs == {OUTPUT}


def test_a_plain_binary_request_never_reaches_the_general_path(model, all_test_images, monkeypatch):
    """The general path's key-at-a-time reading of the header is not reached for a batch
    of binary tensors: the lane reads it."""

    def general(*args: object) -> dict:
        raise AssertionError("the header went through the general path")

    monkeypatch.setattr(codec, "_request_document", general)
    body, headers = binary_body(all_test_images[:2].reshape(2, 1, 28, 28))
    request = codec.decode_infer(
        body, headers[codec.BINARY_HEADER], model.inputs, model.outputs, NumberArrays()
    )
    assert request.inputs[INPUT].tobytes() == all_test_images[:2].tobytes()
    assert (request.id, request.outputs, request.binary_outputs) == ("req-1", (OUTPUT,), {OUTPUT})


def test_two_binary_inputs_are_taken_by_the_lane_each_with_its_own_bytes():
    """The lane reads each binary input at its own offset in the tail, in order, and the
    request is the general path's."""
    pixels_spec = TensorSpec("pixels", np.dtype(np.float32), "FP32", (-1, 3))
    counts_spec = TensorSpec("counts", np.dtype(np.int64), "INT64", (-1, 2))
    pixels = np.array([[1.5, 2, 3], [4, 5, 6]], "<f4")
    counts = np.array([[7, 8], [9, -10]], "<i8")
    body, length = binary_request(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": pixels.nbytes},
                },
                {
                    "name": "counts",
                    "datatype": "INT64",
                    "shape": [2, 2],
                    "parameters": {"binary_data_size": counts.nbytes},
                },
            ]
        },
        pixels.tobytes() + counts.tobytes(),
    )
    head, tail = codec.split_binary(body, length)
    specs, outputs = (pixels_spec, counts_spec), (pixels_spec,)
    lane = codec._lane_request(head, tail, specs, outputs, NumberArrays(), True)
    assert lane is not None
    general = codec.decode_infer(body, length, specs, outputs)
    assert same(lane, general)
    assert lane.inputs["pixels"].tolist() == pixels.tolist()
    assert lane.inputs["counts"].tolist() == counts.tolist()


def binary_request(
    head: object, tail: bytes = np.full(784, 0.5, "<f4").tobytes()
) -> tuple[bytes, str]:
    """A binary request of `head` (a JSON document, or its text) and `tail`, and its
    Inference-Header-Content-Length."""
    text = head if isinstance(head, bytes) else json.dumps(head).encode()
    return text + tail, str(len(text))


def tensor(**fields: object) -> dict:
    """The model's input as a binary tensor of one image, with `fields` replaced (None
    removes one)."""
    entry = {
        "name": INPUT,
        "shape": SHAPE,
        "datatype": "FP32",
        "parameters": {"binary_data_size": 3136},
        **fields,
    }
    return {key: value for key, value in entry.items() if value is not None}


HALF = np.full(784, 0.5, "<f4")
# Binary requests the lane must decline or agree on, whatever the general path makes of them.
BINARY_LOOK_ALIKES = [
    binary_request({"inputs": [tensor()]}),
    binary_request({"inputs": [tensor()], "id": None, "parameters": None, "outputs": None}),
    binary_request({"inputs": [tensor()], "outputs": [], "parameters": {}}),
    binary_request({"inputs": [tensor(parameters={"binary_data_size": 3136.0})]}),
    binary_request({"inputs": [tensor(parameters={"binary_data_size": True})]}),
    binary_request({"inputs": [tensor(parameters={"binary_data_size": -3136})]}),
    binary_request({"inputs": [tensor(parameters={"binary_data_size": 2**63})]}),
    binary_request({"inputs": [tensor(parameters={"binary_data_size": 2**64})]}),
    binary_request({"inputs": [tensor(parameters={"binary_data_size": 3132})]}),
    binary_request({"inputs": [tensor(parameters={"binary_data_size": None})]}),
    binary_request({"inputs": [tensor(parameters={"binary_data_size": 3136, "x": 1})]}),
    binary_request({"inputs": [tensor(parameters=[])]}),
    binary_request({"inputs": [tensor(parameters={})]}),
    binary_request({"inputs": [tensor(data=[0.5] * 784)]}),
    binary_request({"inputs": [tensor(datatype="FP64")]}),
    binary_request({"inputs": [tensor(datatype=None)]}),
    binary_request({"inputs": [tensor(name="input3")]}),
    binary_request({"inputs": [tensor(name=[INPUT])]}),
    binary_request({"inputs": [tensor(shape=[-1, 1, 28, 28])]}),
    binary_request({"inputs": [tensor(shape=[0, 1, 28, 28])]}),
    binary_request({"inputs": [tensor(shape=[1.0, 1, 28, 28])]}),
    binary_request({"inputs": [tensor(shape=[True, 1, 28, 28])]}),
    binary_request({"inputs": [tensor(shape=[2**64, 1, 28, 28])]}),
    binary_request({"inputs": [tensor(shape=[1, 784])]}),
    binary_request({"inputs": [tensor(shape=[2, 1, 28, 28])]}),
    binary_request({"inputs": [tensor(shape=None)]}),
    binary_request({"inputs": [tensor(extra=1)]}),
    binary_request({"inputs": [tensor(), tensor()]}, HALF.tobytes() * 2),
    binary_request({"inputs": [tensor()]}, HALF.tobytes() + b"\0"),
    binary_request({"inputs": [tensor()]}, HALF.tobytes()[:-4]),
    binary_request({"inputs": [tensor()]}, np.full(784, np.nan, "<f4").tobytes()),
    binary_request({"inputs": [tensor()]}, np.array([np.inf, *[0.5] * 783], "<f4").tobytes()),
    binary_request({"inputs": []}),
    binary_request({"inputs": {"name": INPUT}}),
    binary_request({"inputs": [tensor()], "id": 7}),
    binary_request({"inputs": [tensor()], "id": "x" * 256}),
    binary_request({"inputs": [tensor()], "id": "x" * 257}),
    binary_request({"inputs": [tensor()], "id": "caf\u00e9 \\u00e9"}),
    binary_request(
        b'{"id": "\\ud800", "inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], '
        b'"datatype": "FP32", "parameters": {"binary_data_size": 3136}}]}'
    ),
    binary_request(
        b'{"inputs": [{"name": "Input\\u0033", "shape": [1, 1, 28, 28], '
        b'"datatype": "FP32", "parameters": {"binary_data_size": 3136}}]}'
    ),
    binary_request(
        b'{"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", '
        b'"parameters": {"binary_data_size": 3136}}], "inputs": []}'
    ),
    binary_request(
        b'{"inputs": [{"name": "Input3", "name": "x", "shape": [1, 1, 28, 28], '
        b'"datatype": "FP32", "parameters": {"binary_data_size": 3136}}]}'
    ),
    binary_request(b'\xef\xbb\xbf{"inputs": []}'),
    # a repeated key whose earlier value is not JSON: msgspec skips it unread, orjson refuses
    binary_request(
        b'{"id": "\xff", "id": "a", "inputs": [' + json.dumps(tensor()).encode() + b"]}"
    ),
    binary_request(
        b'{"id": 1e99999, "id": "a", "inputs": [' + json.dumps(tensor()).encode() + b"]}"
    ),
    binary_request(
        b'{"outputs": [{"name": "\xff"}], "outputs": [], "inputs": ['
        + json.dumps(tensor()).encode()
        + b"]}"
    ),
    binary_request(
        b'{"parameters": {"x": 1e400}, "parameters": {}, "inputs": ['
        + json.dumps(tensor()).encode()
        + b"]}"
    ),
    binary_request(
        b'{"inputs": [{"data": ["\xff"], "name": "Input3", "shape": [1, 1, 28, 28], '
        b'"datatype": "FP32", "parameters": {"binary_data_size": 3136}}]}'
    ),
    # nesting deeper than msgspec's recursion allows, and than orjson's 1,024 levels
    binary_request(
        b'{"inputs": ['
        + json.dumps(tensor()).encode()
        + b'], "outputs": '
        + b"[" * 1000
        + b"]" * 1000
        + b"}"
    ),
    binary_request(
        b'{"inputs": ['
        + json.dumps(tensor()).encode()
        + b'], "id": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}"
    ),
    binary_request(json.dumps({"inputs": [tensor()]}).encode() + b" x"),
    binary_request(json.dumps({"inputs": [tensor()]}).encode() + b"  "),
    binary_request({"inputs": [tensor()], "parameters": {"binary_data_output": 1}}),
    binary_request({"inputs": [tensor()], "parameters": {"binary_data_output": True}}),
    binary_request({"inputs": [tensor()], "parameters": {"binary_data_output": None}}),
    binary_request({"inputs": [tensor()], "parameters": {"other": True}}),
    binary_request({"inputs": [tensor()], "outputs": [{"name": OUTPUT}, {"name": OUTPUT}]}),
    binary_request({"inputs": [tensor()], "outputs": [{"name": "scores"}]}),
    binary_request({"inputs": [tensor()], "outputs": {"name": OUTPUT}}),
    binary_request(
        {"inputs": [tensor()], "outputs": [{"name": OUTPUT, "parameters": {"classification": 3}}]}
    ),
    binary_request(
        b'{"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", '
        b'"parameters": {"binary_data_size": 3136}}], "outputs": [{"name": '
        b'"Plus214_Output_0", "parameters": {"classification": 100000000000000000000}}]}'
    ),
]


@pytest.mark.parametrize("body, length", BINARY_LOOK_ALIKES)
def test_every_binary_request_gets_the_general_paths_answer(model, body, length):
    """Binary look-alikes, each beside the general path: the same request, or the same
    message."""
    assert same(decoded(model, body, NumberArrays(), length), decoded(model, body, None, length))


def test_the_plain_binary_look_alikes_are_taken_by_the_lane(model):
    """The lane is not declining everything: the first look-alikes (one image, with and
    without null or empty optional keys) are its own."""
    for body, length in BINARY_LOOK_ALIKES[:3]:
        assert taken_by_the_lane(model, body, length)
        assert isinstance(decoded(model, body, NumberArrays(), length), codec.InferRequest)


@st.composite
def generated_requests(draw) -> bytes:
    """A V2 JSON request for the model's input: 1 or 2 images of 8 generated numbers tiled
    (every form of JSON number text), flat or nested as its shape, sometimes with a
    shape, datatype or count that is wrong, an id, and an output asking for classes."""
    images = draw(st.integers(1, 2))
    numbers = [draw(NUMBER_TEXT) for _ in range(8)] * (98 * images)
    shape = draw(st.sampled_from([[images, 1, 28, 28], [images, 784], [images, 1, 28, 27]]))
    if draw(st.booleans()):
        data = "[" + ",".join(numbers) + "]"
    else:  # nested as [images, 784]
        data = (
            "["
            + ",".join(
                "[" + ",".join(numbers[i * 784 : (i + 1) * 784]) + "]" for i in range(images)
            )
            + "]"
        )
    datatype = draw(st.sampled_from(["FP32", "FP32", "FP64", "INT32"]))
    tensor = (
        f'{{"name":"{INPUT}","shape":{json.dumps(shape)},"datatype":"{datatype}","data":{data}}}'
    )
    extra = draw(
        st.sampled_from(
            [
                "",
                ',"id":"r-1"',
                f',"outputs":[{{"name":"{OUTPUT}","parameters":{{"classification":2}}}}]',
            ]
        )
    )
    return f'{{"inputs":[{tensor}]{extra}}}'.encode()


@pytest.mark.filterwarnings("error::RuntimeWarning")
@settings(max_examples=300, deadline=None)
@given(body=generated_requests())
def test_generated_requests_decode_as_the_general_path_without_a_warning(model, body):
    """Whatever numbers, shape and datatype a request holds, the lane's request is the
    general path's bit for bit (or its error word for word), and numpy reports nothing."""
    assert same(decoded(model, body, NumberArrays()), decoded(model, body, None))


# Each field of a generated binary request: its usual value first, then look-alikes
# (None leaves the key out).
_INTEGERS = [0, 1, 2, -1, 3136, 6272, 2**63 - 1, 2**63, 2**64, 1.0, True, "1", None]
_FIELDS = {
    "name": [INPUT, "input3", 3, [INPUT], None],
    "datatype": ["FP32", "FP64", "UINT8", None],
    "shape": [SHAPE, [2, 1, 28, 28], [1, 784], [0, 1, 28, 28], [-1, 1, 28, 28], None],
    "data": [None, [0.5] * 784, []],
}


def usually(draw, values: list) -> object:
    """The first of `values` four times in five, else any of them."""
    return values[0] if draw(st.integers(0, 4)) else draw(st.sampled_from(values))


@st.composite
def generated_binary_requests(draw) -> tuple[bytes, str]:
    """A binary request for the model's input: one or two images, each field usual or a
    look-alike (integers past 64 bits, floats and booleans for integers, wrong names,
    shapes and sizes, extra keys and parameters), a tail that fits or not, NaN or not."""
    images = draw(st.integers(1, 2))
    pixels = np.full(784 * images, 0.5, "<f4")
    if draw(st.integers(0, 9)) == 0:
        pixels[draw(st.integers(0, pixels.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    entry = {key: usually(draw, values) for key, values in _FIELDS.items()}
    if images == 2 and entry["shape"] == SHAPE:
        entry["shape"] = [2, 1, 28, 28]
    size = usually(draw, [pixels.nbytes, *_INTEGERS])
    entry["parameters"] = usually(
        draw, [{"binary_data_size": size}, {"binary_data_size": size, "other": 1}, {}, None, []]
    )
    if draw(st.integers(0, 9)) == 0:
        entry["extra"] = 1
    head: dict = {"inputs": [{key: value for key, value in entry.items() if value is not None}]}
    head["id"] = usually(draw, ["r-1", None, "x" * 257, 7])
    head["parameters"] = usually(
        draw, [None, {}, {"binary_data_output": True}, {"binary_data_output": 1}]
    )
    head["outputs"] = usually(
        draw,
        [
            [{"name": OUTPUT, "parameters": {"binary_data": True}}],
            None,
            [],
            [{"name": OUTPUT, "parameters": {"classification": 2}}],
            [{"name": OUTPUT, "parameters": {"classification": 2**64}}],
            [{"name": OUTPUT}, {"name": OUTPUT}],
            [{"name": "scores"}],
        ],
    )
    head = {key: value for key, value in head.items() if value is not None or draw(st.booleans())}
    tail = pixels.tobytes() + usually(draw, [b"", b"\0" * 4])
    return binary_request(head, tail)


@settings(max_examples=500, deadline=None)
@given(request=generated_binary_requests())
def test_generated_binary_requests_decode_as_the_general_path(model, request):
    """Whatever a binary request's header holds, the lane's request is the general path's
    bit for bit, or its error word for word."""
    body, length = request
    assert same(decoded(model, body, NumberArrays(), length), decoded(model, body, None, length))


DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    "path, body, headers",
    [
        ("/predict", b'{"data": ' + DEEP + b"}", {}),
        ("/v2/models/mnist-8/infer", b'{"inputs": ' + DEEP + b"}", {}),
        ("/v2/models/mnist-8/infer", b'{"inputs": [], "id": ' + b"[" * 900 + b"]" * 900 + b"}", {}),
        # within orjson's 1,024 levels: the general path reads it, and names it in its error
        (
            "/v2/models/mnist-8/infer",
            b'{"inputs": [{"name": "Input3", "datatype": ' + b"[" * 1000 + b"]" * 1000 + b"}]}",
            {},
        ),
        (
            "/v2/models/mnist-8/infer",
            b'{"inputs": [], "outputs": ' + DEEP + b"}" + HALF.tobytes(),
            {codec.BINARY_HEADER: str(len(b'{"inputs": [], "outputs": ' + DEEP + b"}"))},
        ),
    ],
    ids=["predict", "v2-json", "v2-json-id", "v2-json-datatype", "v2-binary"],
)
def test_nesting_past_the_interpreters_limit_is_a_400(client, path, body, headers):
    """Arrays nested thousands deep: one line naming the fault, never a 500 (msgspec and
    the standard library's json recurse, and raise RecursionError past Python's limit)."""
    result = client.simulate_post(
        path, body=body, headers={"Content-Type": "application/json", **headers}
    )
    assert result.status_code == 400, result.text
    assert result.json["error"]
