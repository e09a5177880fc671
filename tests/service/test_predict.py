"""POST /predict: the simple contract, its extensions, and every bad input."""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pytest
from falcon import testing

from service import codec
from service.app import create_app
from service.batching import Batcher
from service.classification import row_classes
from service.errors import InvalidInput
from service.http import REQUESTS_IN_FLIGHT
from tests.service.conftest import ListRecorder

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


ONLY_NUMBERS = '"data" must hold only numbers (no strings, booleans, nulls or empty lists)'
NOT_JSON = "the request body is not valid JSON: "
NOT_AN_OBJECT = 'the body must be a JSON object with the key "data": {"data": [numbers]}'
# Each bad body with the whole message the client reads: a changed or lost word fails.
BAD_BODIES = [
    pytest.param(
        b'{"data": [1, 2, 3]}',
        "data has shape [3]; expected one example shaped [784] or [28, 28], or a list of "
        "examples shaped [-1, 784], [-1, 28, 28] or [-1, 1, 28, 28], where -1 is any number "
        "of rows (at least 1)",
        id="wrong-count",
    ),
    pytest.param(json.dumps({"data": ["a"] * 784}).encode(), ONLY_NUMBERS, id="strings"),
    pytest.param(json.dumps({"data": [None] * 784}).encode(), ONLY_NUMBERS, id="nulls"),
    pytest.param(json.dumps({"data": [True] * 784}).encode(), ONLY_NUMBERS, id="booleans"),
    pytest.param(
        json.dumps({"data": [True] + [0] * 783}).encode(), ONLY_NUMBERS, id="boolean-among-ints"
    ),
    pytest.param(
        json.dumps({"data": [0.5] * 783 + [False]}).encode(),
        ONLY_NUMBERS,
        id="boolean-among-floats",
    ),
    pytest.param(
        json.dumps({"data": [[0] * 784, [0] * 783 + [True]]}).encode(),
        ONLY_NUMBERS,
        id="boolean-in-a-row",
    ),
    pytest.param(
        json.dumps({"data": [[[0] * 28] * 27 + [[0] * 27 + [True]]]}).encode(),
        ONLY_NUMBERS,
        id="boolean-in-a-28x28-image",
    ),
    pytest.param(
        b'{"data": [NaN' + b", 0" * 783 + b"]}",
        NOT_JSON + "NaN at line 1 column 11 (char 10) is not a JSON number: JSON has only "
        "finite numbers, no NaN or Infinity (RFC 8259 section 6); send finite numbers",
        id="nan",
    ),
    pytest.param(
        b'{"data": [Infinity' + b", 0" * 783 + b"]}",
        NOT_JSON + "Infinity at line 1 column 11 (char 10) is not a JSON number: JSON has only "
        "finite numbers, no NaN or Infinity (RFC 8259 section 6); send finite numbers",
        id="infinity",
    ),
    pytest.param(
        b'{"data": [1e39' + b", 0" * 783 + b"]}",
        '"data" has numbers too large for float32 (or NaN/infinity)',
        id="overflow",
    ),
    pytest.param(
        b'{"data": [[1, 2], [3]]}',
        '"data" is ragged: nested lists must all have the same length',
        id="ragged",
    ),
    pytest.param(b'{"data": []}', '"data" is empty; send at least one example', id="empty-data"),
    pytest.param(b'{"data": [[]]}', ONLY_NUMBERS, id="empty-rows"),
    pytest.param(b"", "the request body is empty; send a JSON object", id="empty-body"),
    pytest.param(
        b'{"data": [1, 2',
        NOT_JSON + "unexpected end of data: line 1 column 15 (char 14)",
        id="malformed",
    ),
    pytest.param(b"[1, 2, 3]", NOT_AN_OBJECT, id="not-an-object"),
    pytest.param(b'{"pixels": []}', NOT_AN_OBJECT + "; it has 'pixels'", id="no-data"),
    pytest.param(b"{}", NOT_AN_OBJECT + "; it has no key", id="empty-object"),
    pytest.param(b'{"data": 7}', '"data" must be a list of numbers, got a number', id="scalar"),
    pytest.param(
        b'{"data": {"a": 1}}', '"data" must be a list of numbers, got an object', id="object"
    ),
    pytest.param(b'{"data": "abc"}', '"data" must be a list of numbers, got a string', id="string"),
    pytest.param(b'{"data": null}', '"data" must be a list of numbers, got null', id="null"),
    pytest.param(
        b'{"data": [0], "model": "mnist-8"}',
        "the body has 'model', which this server does not read; it reads 'data'",
        id="other-key",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_bad_input_is_400_with_a_json_reason(client, body, message):
    result = client.simulate_post(
        "/predict", body=body, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 400
    assert result.headers["content-type"] == "application/json"
    assert result.json == {"error": message}


# -- JSON syntax errors: the problem and its fix, the same words on both routes ---------------


@pytest.mark.parametrize(
    "body, token",
    [(b"-Infinity", "-Infinity"), (b"NaN-", "NaN")],
    ids=["minus-at-the-start", "minus-at-the-end"],
)
def test_a_non_finite_number_at_the_bodys_first_byte_is_placed_there(body, token):
    """The number starts at the body's first byte, whatever the body's last one is: the
    minus sign orjson stops after is looked for only before the error's position."""
    with pytest.raises(InvalidInput) as refused:
        codec.parse_json(body)
    assert refused.value.message == (
        f"the request body is not valid JSON: {token} at line 1 column 1 (char 0)" + NOT_FINITE
    )


PREDICT_PREFIX = b'{"data": ['
V2_PREFIX = b'{"inputs": [{"name": "Input3", "datatype": "FP32", "shape": [1, 784], "data": ['
NOT_FINITE = (
    " is not a JSON number: JSON has only finite numbers, no NaN or Infinity (RFC 8259 "
    "section 6); send finite numbers"
)
NUMBER_FORM = (
    " is not a JSON number: JSON numbers have a digit before the decimal point and no "
    "leading plus sign (RFC 8259 section 6); write "
)
MUST_BE_UTF8 = "the body must be UTF-8 (RFC 8259 section 8.1), and its byte at offset "
# (the bad token, the message after "the request body is not valid JSON: " with the
# token's character offset as {at}, its column as {column} and the offset of its second
# byte as {after}).
SYNTAX_ERRORS = [
    pytest.param(b"NaN", "NaN at line 1 column {column} (char {at})" + NOT_FINITE, id="NaN"),
    pytest.param(
        b"Infinity", "Infinity at line 1 column {column} (char {at})" + NOT_FINITE, id="Infinity"
    ),
    pytest.param(
        b"-Infinity", "-Infinity at line 1 column {column} (char {at})" + NOT_FINITE, id="-Infinity"
    ),
    pytest.param(b"nan", "nan at line 1 column {column} (char {at})" + NOT_FINITE, id="nan"),
    pytest.param(
        b".5", "'.5' at line 1 column {column} (char {at})" + NUMBER_FORM + "0.5", id=".5"
    ),
    pytest.param(
        b"-.5", "'-.5' at line 1 column {column} (char {at})" + NUMBER_FORM + "-0.5", id="-.5"
    ),
    pytest.param(b"+1", "'+1' at line 1 column {column} (char {at})" + NUMBER_FORM + "1", id="+1"),
    pytest.param(
        b"+.25e3",
        "'+.25e3' at line 1 column {column} (char {at})" + NUMBER_FORM + "0.25e3",
        id="+.25e3",
    ),
    pytest.param(
        b"1\xff",
        MUST_BE_UTF8 + "{after} (0xFF) is not valid UTF-8 there; send the body UTF-8 encoded",
        id="0xFF",
    ),
    pytest.param(
        '"\u00e9"'.encode("latin-1"),
        MUST_BE_UTF8 + "{after} (0xE9) is not valid UTF-8 there; send the body UTF-8 encoded",
        id="latin-1",
    ),
]


@pytest.mark.parametrize("prefix", [PREDICT_PREFIX, V2_PREFIX], ids=["predict", "v2"])
@pytest.mark.parametrize(("token", "message"), SYNTAX_ERRORS)
def test_a_json_syntax_error_names_the_problem_and_the_fix(client, prefix, token, message):
    body = (
        prefix + token + b"".join([b", 0"] * 783) + (b"]}" if prefix == PREDICT_PREFIX else b"]}]}")
    )
    path = "/predict" if prefix == PREDICT_PREFIX else "/v2/models/mnist-8/infer"
    result = client.simulate_post(path, body=body, headers={"Content-Type": "application/json"})
    assert result.status_code == 400
    at = len(prefix)  # the token's first character; the bad byte of a non-UTF-8 one is next
    expected = message.format(at=at, column=at + 1, after=at + 1)
    assert result.json == {"error": NOT_JSON + expected}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
@pytest.mark.parametrize("path", ["/predict", "/v2/models/mnist-8/infer"])
def test_a_utf16_or_utf32_body_is_told_to_be_utf8(client, path, encoding):
    body = json.dumps({"data": [0] * 784}).encode(encoding)
    result = client.simulate_post(path, body=body, headers={"Content-Type": "application/json"})
    assert result.status_code == 400
    error = result.json["error"]
    assert error.startswith(NOT_JSON + MUST_BE_UTF8)
    assert error.endswith("; send the body UTF-8 encoded")
    if encoding == "utf-16-le":  # no byte order mark: valid UTF-8, but a NUL at offset 1
        assert error == (
            NOT_JSON + MUST_BE_UTF8 + "1 is a NUL (0x00), as in UTF-16 or UTF-32 text; send "
            "the body UTF-8 encoded"
        )


def test_a_repeated_key_counts_its_last_occurrence(client):
    """README, "Request parameters and headers": RFC 8259 section 4 leaves repeated names to
    the parser; every path here keeps the last one (simdjson's lane declines the body)."""
    body = b'{"data": ["x"], "data": ' + json.dumps([0] * 784).encode() + b"}"
    result = client.simulate_post(
        "/predict", body=body, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 200
    assert (
        result.json["prediction"]
        == client.simulate_post("/predict", json={"data": ZEROS}).json["prediction"]
    )
    refused = b'{"data": ' + json.dumps([0] * 784).encode() + b', "data": [1]}'
    assert (
        client.simulate_post("/predict", body=refused, headers={"Content-Type": "application/json"})
        .json["error"]
        .startswith("data has shape [1]")
    )


def test_wrong_content_type_is_415(client):
    result = client.simulate_post(
        "/predict", body=b"data=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert result.status_code == 415
    assert result.json == {
        "error": "Content-Type 'application/x-www-form-urlencoded' is not accepted here; "
        "send application/json"
    }


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


# -- Content-Type and its charset ---------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf8",
        'application/json; charset="utf-8"',
        "application/json;charset=UTF-8;q=1",
    ],
)
def test_json_in_utf8_is_accepted_however_the_charset_is_spelled(client, content_type):
    body = json.dumps({"data": ZEROS}).encode()
    result = client.simulate_post("/predict", body=body, content_type=content_type)
    assert result.json == {"prediction": 5, "model": "mnist-8", "version": "2f06e72de813"}


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("application/json; charset=latin-1", "latin-1"),
        ("application/json;format=flat;charset=latin1", "latin1"),
        ("application/json; charset=utf-8=x", "utf-8=x"),
        ("application/json; charset=X-MAC-ROMAN", "x-mac-roman"),
    ],
)
def test_a_charset_other_than_utf8_is_415_naming_it(client, content_type, charset):
    """Every parameter of the Content-Type is read, wherever the charset stands; its value
    is everything after the first `=`, quotes stripped, in lower case."""
    result = client.simulate_post("/predict", body=b'{"data": [0]}', content_type=content_type)
    assert result.status_code == 415
    assert result.json == {
        "error": f"charset {charset!r} is not accepted; JSON bodies are UTF-8 (RFC 8259)"
    }


# -- what the route hands on: the fast lane, the body budget, the recorder ---------------


def test_a_plain_body_is_decoded_by_the_fast_lane(settings, model, monkeypatch):
    """README, "The numbers go straight to an array": /predict hands the usual bodies to
    service.jsonnumbers, whose array is then the model's input."""
    from falcon import testing

    from service.app import create_app
    from service.jsonnumbers import NumberArrays

    taken: list[np.ndarray | None] = []
    decode = NumberArrays.decode

    def spy(self, body, dtype):
        taken.append(decode(self, body, dtype))
        return taken[-1]

    monkeypatch.setattr(NumberArrays, "decode", spy)
    client = testing.TestClient(create_app(settings, model=model))
    result = client.simulate_post("/predict", json={"data": [0] * 784})
    assert result.json["prediction"] == 5
    assert len(taken) == 1 and taken[0].dtype == np.float32 and taken[0].shape == (784,)


def _holds(client, monkeypatch) -> list[int]:
    """The sizes each /predict request reserves from the body budget."""
    budget = client.app._router.find("/predict")[0]._budget
    sizes: list[int] = []
    hold = budget.hold

    def recording(size: int):
        sizes.append(size)
        return hold(size)

    monkeypatch.setattr(budget, "hold", recording)
    return sizes


def test_a_request_holds_its_content_length_and_a_chunked_or_coded_one_the_body_limit(
    client, monkeypatch
):
    """service.admission: a body reserves its Content-Length (the limit at most); one
    without a length (chunked) reserves the whole limit, as it may be that long, and so
    does a content-coded one, as it may decode to that much (and so never passes the
    budget's read-ahead for small bodies)."""
    sizes = _holds(client, monkeypatch)
    body = json.dumps({"data": ZEROS}).encode()
    assert (
        client.simulate_post("/predict", body=body, content_type="application/json").json[
            "prediction"
        ]
        == 5
    )
    chunked = client.simulate_post(
        "/predict",
        body=body,
        extras={
            "headers": [
                (b"content-type", b"application/json"),
                (b"transfer-encoding", b"chunked"),
            ]
        },
    )
    assert chunked.json["prediction"] == 5
    over = client.simulate_post(
        "/predict", body=b" " * (256 * 1024 + 1), content_type="application/json"
    )
    assert over.status_code == 413
    packed = gzip.compress(body)
    coded = client.simulate_post(
        "/predict",
        body=packed,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert coded.json["prediction"] == 5
    assert sizes == [len(body), 256 * 1024, 256 * 1024, 256 * 1024]


def test_the_recorder_gets_the_request_its_answer_and_its_latency(recorded, mnist_test_set):
    client, records = recorded
    images = mnist_test_set[0][:3].reshape(3, -1)
    started = time.perf_counter()
    result = client.simulate_post(
        "/predict", json={"data": images.tolist()}, headers={"X-Request-Id": "trace-7"}
    )
    elapsed = time.perf_counter() - started
    (record,) = records
    assert record["route"] == "/predict" and record["request_id"] == "trace-7"
    assert record["model"].name == "mnist-8" and record["model"].version == "2f06e72de813"
    assert record["inputs"].shape == (3, 1, 28, 28) and record["inputs"].dtype == np.float32
    assert record["inputs"].reshape(3, -1).tolist() == images.astype(np.float32).tolist()
    assert record["scores"].reshape(3, 10).argmax(axis=1).tolist() == result.json["predictions"]
    assert 0 < record["latency_seconds"] <= elapsed


def test_an_x_request_id_over_256_characters_is_refused_before_the_model_runs(
    recorded, mnist_test_set
):
    client, records = recorded
    image = mnist_test_set[0][0].reshape(-1).tolist()
    taken = client.simulate_post(
        "/predict", json={"data": image}, headers={"X-Request-Id": "t" * 256}
    )
    refused = client.simulate_post(
        "/predict", json={"data": image}, headers={"X-Request-Id": "t" * 257}
    )
    assert taken.status_code == 200 and refused.status_code == 400
    assert refused.json == {
        "error": "X-Request-Id is 257 characters long; this server takes request ids of at "
        "most 256 characters (every captured record of the request carries it): send a "
        "shorter one, e.g. a UUID"
    }
    assert [record["request_id"] for record in records] == ["t" * 256]


def _in_flight(count: int) -> dict:
    """ASGI scope extras: the server's count of requests in progress (service.protocol)."""
    return {"extensions": {REQUESTS_IN_FLIGHT: {"count": lambda: count}}}


@pytest.mark.parametrize("path", ["/predict", "/v2/models/mnist-8/infer"])
@pytest.mark.parametrize(
    ("extras", "alone", "in_flight"),
    [(_in_flight(1), True, 1), (_in_flight(2), False, 2), ({}, False, 0)],
    ids=["alone", "with-others", "server-does-not-say"],
)
def test_the_servers_count_tells_the_batcher_and_the_recorder_the_requests_in_flight(
    settings, model, mnist_test_set, monkeypatch, path, extras, alone, in_flight
):
    """A request the server counts as its only one in progress goes to the batcher as
    alone (which runs it at once); any other count, or a server that does not count (0),
    is not alone. The recorder is told the count (capture's slices follow it)."""
    told: list[bool] = []
    submit = Batcher.submit

    async def spy(self, rows, alone=False):
        told.append(alone)
        return await submit(self, rows, alone)

    monkeypatch.setattr(Batcher, "submit", spy)
    recorder = ListRecorder()
    client = testing.TestClient(create_app(settings, model=model, recorder=recorder))
    pixels = mnist_test_set[0][0].reshape(-1).tolist()
    body = (
        {"data": pixels}
        if path == "/predict"
        else {
            "inputs": [
                {"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": pixels}
            ]
        }
    )
    answer = client.simulate_post(path, json=body, extras=extras)
    assert answer.status_code == 200
    assert told == [alone]
    assert [record["in_flight"] for record in recorder.records] == [in_flight]


def test_numbers_past_the_models_type_are_refused_without_a_numpy_warning(client):
    """1e39 overflows float32: refused with its message, and numpy's overflow is expected,
    not reported (no RuntimeWarning in the service's log for every such request)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = client.simulate_post("/predict", json={"data": [1e39] + [0] * 783})
    assert result.json == {"error": '"data" has numbers too large for float32 (or NaN/infinity)'}
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


FLOAT32_MAX = float(np.finfo(np.float32).max)


def test_an_example_whose_scores_are_nan_has_no_class_and_is_recorded_as_none(
    recorded, mnist_test_set, model
):
    """float32's largest numbers are a valid input, but mnist-8's arithmetic overflows on
    them (inf - inf) and every score is NaN: /predict answers 400 naming the example
    rather than argmax's 0, and the model's run is recorded all the same (the capture
    writes its class as null). V2 answers the raw scores."""
    client, records = recorded
    huge = [FLOAT32_MAX, -FLOAT32_MAX] * 392
    assert np.isnan(model.scores(np.array(huge, np.float32).reshape(1, 1, 28, 28))).all()
    message = (
        "the model's scores for {} are NaN (not a number), so it has no class: the model's "
        "arithmetic overflowed on its numbers (far outside the range it was trained on, "
        "say); check the input's scale, or the model if every input does this"
    )
    single = client.simulate_post("/predict", json={"data": huge})
    assert single.status_code == 400
    assert single.json == {"error": message.format("this example")}
    image = mnist_test_set[0][0].reshape(-1).tolist()
    listed = client.simulate_post("/predict", json={"data": [image, huge]})
    assert listed.status_code == 400
    assert listed.json == {"error": message.format("data[1]")}
    assert [record["route"] for record in records] == ["/predict", "/predict"]
    assert [row_classes(record["scores"].reshape(-1, 10)) for record in records] == [
        [None],
        [7, None],
    ]
    tensor = {"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": huge}
    v2 = client.simulate_post("/v2/models/mnist-8/infer", json={"inputs": [tensor]})
    assert v2.status_code == 200 and len(records) == 3


def test_a_row_holding_a_nan_has_no_class_and_one_holding_an_infinity_has_one():
    """row_classes rests on numpy's argmax returning a row's first NaN (as `max` propagates
    NaN), whatever larger numbers come before or after it; an integer output has a class
    in every row."""
    rows = np.array([[1.0, np.nan, 3.0, np.nan], [np.inf, 2.0, 9.0, 4.0], [1.0, 2.0, 0.0, 0.0]])
    assert rows.argmax(axis=1).tolist() == [1, 0, 1]
    assert row_classes(rows) == [None, 0, 1]
    assert row_classes(rows.astype(np.float32)) == [None, 0, 1]
    assert row_classes(np.array([[3, 1], [0, 7]], dtype=np.int64)) == [0, 1]
