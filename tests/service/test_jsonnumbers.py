"""The fast lane for /predict's numbers: the general path's arrays bit for bit, or nothing.

The lane (service.jsonnumbers) must give exactly the array the general path
(service.codec without it) gives for every body it takes, and decline every body the
general path refuses, so that every bad input still gets the general path's message.
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
from tests.service.test_predict import BAD_BODIES

F32 = np.dtype(np.float32)


@pytest.fixture(scope="module")
def all_test_images(reference_files: dict[str, Path]) -> np.ndarray:
    """The whole MNIST test set (10,000 images) as the service's input: float32 [N, 784]."""
    from pipeline.datasets import read_idx_images

    images = read_idx_images(reference_files["images"])
    return images.reshape(len(images), -1).astype(np.float32)


def general(body: bytes, dtype: np.dtype = F32) -> np.ndarray | str:
    """What the general path makes of `body`: its array, or its error message."""
    try:
        return codec.predict_data(body, dtype)
    except InvalidInput as exc:
        return exc.message


def fast(body: bytes, dtype: np.dtype = F32) -> np.ndarray | str:
    """What /predict makes of `body` with the lane in front."""
    try:
        return codec.predict_data(body, dtype, NumberArrays())
    except InvalidInput as exc:
        return exc.message


def same(a: np.ndarray | str, b: np.ndarray | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["pixels", "scaled-0-1"])
def test_every_mnist_test_image_decodes_as_the_general_path_and_answers_as_onnxruntime(
    all_test_images, model, mnist8_path, scale
):
    """Each of the 10,000 images as its own flat body: the lane takes it, the array is
    the general path's bit for bit, and the model's classes on it are raw onnxruntime's
    on the original float32 pixels."""
    import onnxruntime as ort

    images = (all_test_images / np.float32(scale)).astype(np.float32)
    lane = NumberArrays()
    decoded = np.empty_like(images)
    for i, image in enumerate(images):
        body = orjson.dumps({"data": image.tolist()})
        taken = lane.decode(body, F32)
        assert taken is not None, f"image {i}: the lane declined a plain body"
        assert same(taken, general(body)), f"image {i}: the lane and the general path differ"
        decoded[i] = taken
    assert decoded.tobytes() == images.tobytes()

    raw = ort.InferenceSession(str(mnist8_path), providers=["CPUExecutionProvider"])
    name = raw.get_inputs()[0].name
    expected = [int(raw.run(None, {name: row.reshape(1, 1, 28, 28)})[0].argmax()) for row in images]
    scores = model.scores(decoded.reshape(-1, 1, 28, 28))
    assert scores.reshape(len(images), -1).argmax(axis=1).tolist() == expected


def test_rows_of_images_decode_as_the_general_path(all_test_images):
    lane = NumberArrays()
    for start in range(0, 1000, 100):
        rows = all_test_images[start : start + 100] / np.float32(255)
        body = orjson.dumps({"data": rows.tolist()})
        taken = lane.decode(body, F32)
        assert taken is not None and taken.shape == (100, 784)
        assert same(taken, general(body))


def test_numbers_of_every_form_round_as_the_general_path():
    """Long decimals, exponents, integers up to 64 bits, -0 and float32's edges: one
    rounding from the nearest double, as np.array() of Python floats does."""
    rng = np.random.default_rng(7)
    forms = [
        (rng.standard_normal(784) * 10.0 ** rng.integers(-45, 38, 784)).tolist(),
        rng.integers(-(2**63), 2**63 - 1, 784, dtype=np.int64).tolist(),
        [0.1, -0.0, 0, 1e-46, 1.401298464324817e-45, 3.4028234e38, 2**64 - 1, -(2**63)],
    ]
    lane = NumberArrays()
    for values in forms:
        for body in (orjson.dumps({"data": values}), json.dumps({"data": values}).encode()):
            taken = lane.decode(body, F32)
            assert taken is not None
            assert same(taken, general(body))
        double = orjson.dumps({"data": values})
        assert same(
            lane.decode(double, np.dtype(np.float64)), general(double, np.dtype(np.float64))
        )


# A JSON number's text by RFC 8259 section 6's grammar (long mantissas, every exponent
# form), doubles' and float32s' shortest texts, integers past 64 bits, and the edges.
NUMBER_TEXT = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        [
            "3.4028235e38",
            "3.4028235677973366e38",
            "3.4028235677973367e38",
            "7e-46",
            "-0",
            "1.401298464324817e-45",
            "2.5e-324",
            "1e-400",
            "1e154",
            "1e200",
        ]
    ),
)
SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n  "])


@st.composite
def number_bodies(draw) -> bytes:
    """`{"data": [...]}` of 1 to 6 numbers, flat or in 1 to 3 rows, with JSON's whitespace."""
    width, rows = draw(st.integers(1, 6)), draw(st.integers(0, 3))

    def row() -> str:
        return (
            "["
            + ",".join(draw(SPACE) + draw(NUMBER_TEXT) + draw(SPACE) for _ in range(width))
            + "]"
        )

    data = row() if rows == 0 else "[" + ",".join(draw(SPACE) + row() for _ in range(rows)) + "]"
    return ("{" + draw(SPACE) + '"data"' + draw(SPACE) + ":" + data + draw(SPACE) + "}").encode()


@pytest.mark.filterwarnings("error::RuntimeWarning")
@settings(max_examples=800, deadline=None)
@given(body=number_bodies(), dtype=st.sampled_from([F32, np.dtype(np.float64)]))
def test_generated_bodies_decode_as_the_general_path_without_a_warning(body, dtype):
    """Whatever numbers a body holds, the lane gives the general path's array bit for bit or
    declines, the route's answer is the general path's, and numpy reports nothing."""
    taken = NumberArrays().decode(body, dtype)
    assert taken is None or same(taken, general(body, dtype))
    assert same(fast(body, dtype), general(body, dtype))


# Bodies the lane must leave to the general path, whatever becomes of them there: the
# bad-input corpus (but its list of three numbers, which the lane takes and the route
# then refuses by its shape) and bodies that look almost like a plain list.
DECLINED = [
    *[param.values[0] for param in BAD_BODIES if param.id != "wrong-count"],
    b'{"data": [1, [2]]}',  # a flat list with a row in it: ragged
    b'{"data": [[[1, 2]], [[3, 4]]]}',  # nested deeper
    b'{"data": [[1, 2], [3, [4]]]}',
    b'{"data": [[1, 2], 3]}',
    b'{"data": [[1, 2], []]}',
    b'{"data": [1], "data": [2]}',  # a repeated key: the general path keeps the last
    b'{"data": [1], "model": "mnist-8"}',
    b'{"data": [1e400]}',  # beyond a double
    b'{"data": [-1e39]}',  # beyond float32
    b'{"data": [18446744073709551616]}',  # beyond 64 bits
    b'{"data": ["[", 1]}',
    b'{"d[ata": [1, 2]}',
    b'{"data": [1, 2]} trailing',
    b'{"data": [01, 2]}',
    b'{"data": [1, 2,]}',
    b'{"data": [+1]}',
    b'{"data": [.5]}',
    b'{"data": [1, 2]',
    b"\xff\xfe",
    b"null",
]


@pytest.mark.parametrize("body", DECLINED, ids=range(len(DECLINED)))
def test_the_lane_declines_what_is_not_a_plain_list_of_numbers(body):
    assert NumberArrays().decode(body, F32) is None


@pytest.mark.parametrize("body", [p.values[0] for p in BAD_BODIES] + DECLINED)
def test_every_bad_body_gets_the_general_paths_answer_word_for_word(body):
    assert same(fast(body), general(body))


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_the_route_refuses_the_corpus_with_the_general_paths_message(client, body, message):
    """Through POST /predict (the lane in front): each bad body is 400 with the message
    the general path words for it."""
    result = client.simulate_post(
        "/predict", body=body, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 400
    expected = general(body)
    if isinstance(expected, str):  # refused while decoding (else by its shape, later)
        assert result.json["error"] == expected
    assert message in result.json["error"]


def test_float32s_largest_number_is_taken_and_one_beyond_it_is_not():
    """The range check is exact at float32's edge: its largest number stays in the lane;
    a double beyond it, in either sign, goes to the general path."""
    largest = float(np.finfo(np.float32).max)
    lane = NumberArrays()
    for body in (orjson.dumps({"data": [largest]}), orjson.dumps({"data": [[-largest]]})):
        taken = lane.decode(body, F32)
        assert taken is not None
        assert same(taken, general(body))
    beyond = orjson.dumps({"data": [0.0, float(np.nextafter(largest, np.inf)) * 2]})
    assert lane.decode(beyond, F32) is None
    assert same(lane.decode(beyond, np.dtype(np.float64)), general(beyond, np.dtype(np.float64)))


def test_a_flat_lists_brackets_are_not_counted_byte_by_byte():
    """`bytes.count` reads every byte of the body (a seventh of the lane's cost on a
    784-number body): a flat list is told without it, rows still count theirs."""

    class Body(bytes):
        counts = 0

        def count(self, *args) -> int:
            Body.counts += 1
            return super().count(*args)

    lane = NumberArrays()
    assert lane.decode(Body(b'{"data": [1, 2.5, 3]}'), F32).tolist() == [1, 2.5, 3]
    assert Body.counts == 0
    assert lane.decode(Body(b'{"data": [[1, 2], [3, 4]]}'), F32).shape == (2, 2)
    assert lane.decode(Body(b'{"data": [[1, 2]]}'), F32).shape == (1, 2)
    assert lane.decode(Body(b'{"data": [1, [2]]}'), F32) is None
    assert Body.counts == 3


def test_rows_of_one_number_keep_their_shape():
    """[[1], [2]] is two rows of one (the route then refuses shape [2, 1]), not [1, 2]."""
    body = b'{"data": [[1], [2]]}'
    assert NumberArrays().decode(body, F32).shape == (2, 1)
    assert same(fast(body), general(body))


def test_the_lane_is_reusable_after_a_body_it_declined():
    lane = NumberArrays()
    for body in DECLINED:
        lane.decode(body, F32)
    assert lane.decode(b'{"data": [0.5, 2]}', F32).tolist() == [0.5, 2.0]


def test_integer_models_decode_on_the_general_path():
    """The lane serves float32 and float64 only; an int64 model's numbers still decode."""
    body = b'{"data": [1, 2, 3]}'
    assert NumberArrays().decode(body, np.dtype(np.int64)) is None
    assert same(fast(body, np.dtype(np.int64)), general(body, np.dtype(np.int64)))


class Lane:
    """A stand-in fast lane that answers every body with one array."""

    def __init__(self, array: np.ndarray | None) -> None:
        self.array = array

    def decode(self, body: bytes, dtype: np.dtype) -> np.ndarray | None:
        return self.array


def test_the_lanes_array_is_the_answer_and_a_decline_falls_through():
    taken = np.zeros(3, F32)
    assert codec.predict_data(b'{"data": [1, 2]}', F32, Lane(taken)) is taken
    assert codec.predict_data(b'{"data": [1, 2]}', F32, Lane(None)).tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        (b'{"data": [0.5, 2, 3]}', (3,)),
        (b'{"data": [[0.5, 2], [3, 4]]}', (2, 2)),
        (b'{"data": [[1], [2], [3]]}', (3, 1)),
    ],
)
def test_well_formed_float_bodies_decode_in_one_typed_pass(monkeypatch, body, shape):
    """Without the lane, a flat list or equal rows of numbers decode through msgspec's
    typed decoders, never reaching the general path's second parse (bench/README.md,
    "one-pass typed decoding of the body")."""

    def second_parse(body: bytes) -> object:
        raise AssertionError("the general path parsed a well-formed body")

    monkeypatch.setattr(codec, "parse_json", second_parse)
    array = codec.predict_data(body, F32)
    assert array.dtype == F32 and array.shape == shape
    assert (
        array.reshape(-1).tolist() == np.array(orjson.loads(body)["data"], F32).reshape(-1).tolist()
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [1e39, 0]}',
        b'{"data": [1e200, 0]}',  # its square overflows a double
        b'{"data": [[1e308], [-1e308]]}',
    ],
)
def test_numbers_past_float32_are_refused_without_a_warning_on_every_path(body):
    """The lane, the typed decoders and the general path each meet a number beyond
    float32: the answer is the general path's 400, and numpy's overflow on the way (in the
    cast, or in the lane's sum of squares) is expected, not reported."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lane in (NumberArrays(), None):
            with pytest.raises(InvalidInput) as refused:
                codec.predict_data(body, F32, lane)
            assert refused.value.message == (
                '"data" has numbers too large for float32 (or NaN/infinity)'
            )
        # A V2 tensor's data: the same lane, bounded at 2**53.
        assert NumberArrays().decode_array(body[len(b'{"data": ') : -1], F32) is None
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


@pytest.mark.parametrize(
    ("body", "dtype", "message"),
    [
        (b'{"data": [300, 1]}', "uint8", '"data" has numbers out of range for uint8 (0 to 255)'),
        (b'{"data": [[-1], [1]]}', "uint8", '"data" has numbers out of range for uint8 (0 to 255)'),
        (
            b'{"data": [1e30]}',
            "int64",
            '"data" has numbers out of range for int64 (-9223372036854775808 to '
            "9223372036854775807)",
        ),
        (
            b'{"data": [9223372036854775808]}',
            "int64",
            '"data" has numbers out of range for int64 (-9223372036854775808 to '
            "9223372036854775807)",
        ),
        (
            b'{"data": [1.5, 2]}',
            "int32",
            '"data" has numbers with a fraction; int32 holds whole numbers',
        ),
    ],
)
def test_an_integer_models_numbers_must_fit_its_type(body, dtype, message):
    """/predict on an integer model: a number the type cannot hold is a 400 naming the
    range, not a wrapped or truncated input (nor a 500 from numpy's OverflowError)."""
    with pytest.raises(InvalidInput) as refused:
        codec.predict_data(body, np.dtype(dtype), NumberArrays())
    assert refused.value.message == message


def test_an_integer_models_range_ends_are_accepted():
    assert codec.predict_data(b'{"data": [0, 255.0]}', np.dtype("uint8")).tolist() == [0, 255]
    limits = b'{"data": [-9223372036854775808, 9223372036854775807]}'
    decoded = codec.predict_data(limits, np.dtype("int64"), NumberArrays())
    assert decoded.dtype == np.int64
    assert decoded.tolist() == [-9223372036854775808, 9223372036854775807]
