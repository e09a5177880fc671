"""Request and response bodies: the `/predict` JSON contract and the Open
Inference Protocol (KServe V2) JSON tensors with Triton's binary tensor extension.

Pure functions over bytes, numpy arrays and the model's signature; every
malformed body becomes an `InvalidInput` that says what was expected.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
import numpy as np
import orjson

from service.classification import UNRANKED_DATATYPES, row_classes, top_classes
from service.errors import InvalidInput
from service.jsonnumbers import NumberArrays
from service.model import ORT_TYPES, ModelInfo, TensorSpec, shape_words

BINARY_HEADER = "Inference-Header-Content-Length"

# The longest request id taken, in characters: the V2 request's `id`, /predict's
# X-Request-Id (`checked_request_id`).
MAX_REQUEST_ID_CHARS = 256

DATATYPES: dict[str, np.dtype] = {datatype: dtype for dtype, datatype in ORT_TYPES.values()}
FLOAT_KINDS = "f"


def parse_json(body: bytes) -> object:
    """The body's JSON value (orjson); InvalidInput for an empty body or JSON text orjson
    refuses, worded by `json_syntax_error`."""
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"the request body is not valid JSON: {json_syntax_error(body, exc)}"
        ) from None


# Number-like text JSON does not have (RFC 8259 section 6), where orjson stops: NaN and
# infinities as Python, JavaScript and numpy write them; a leading plus sign or no digit
# before the decimal point (groups: the sign, the point, the rest).
_NOT_FINITE = re.compile(r"-?(?:nan|inf(?:inity)?)\b", re.IGNORECASE)
_MISFORMED_NUMBER = re.compile(r"(\+|-?(?=\.))(\.?)([0-9][0-9.eE+-]*)")
_UTF8_ONLY = "the body must be UTF-8 (RFC 8259 section 8.1), and its byte at offset"


def json_syntax_error(body: bytes, exc: orjson.JSONDecodeError) -> str:
    """What is wrong with JSON text orjson refused, and the fix where clients often err: a
    body not in UTF-8 (RFC 8259 section 8.1), with the offset of its first byte that is
    not; NaN or Infinity; `.5` or `+1` (section 6). Otherwise orjson's own words."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"{_UTF8_ONLY} {bad.start} (0x{body[bad.start]:02X}) is not valid UTF-8 there; "
            "send the body UTF-8 encoded"
        )
    if text[exc.pos : exc.pos + 1] == "\0":  # never in JSON text; every other byte of UTF-16
        return (
            f"{_UTF8_ONLY} {len(text[: exc.pos].encode())} is a NUL (0x00), as in UTF-16 or "
            "UTF-32 text; send the body UTF-8 encoded"
        )
    # orjson stops after a minus sign; the number starts at the sign.
    at = exc.pos - 1 if exc.pos > 0 and text[exc.pos - 1] == "-" else exc.pos
    place = f"at line {exc.lineno} column {exc.colno - (exc.pos - at)} (char {at})"
    if found := _NOT_FINITE.match(text, at):
        return (
            f"{found.group()} {place} is not a JSON number: JSON has only finite numbers, no "
            "NaN or Infinity (RFC 8259 section 6); send finite numbers"
        )
    if found := _MISFORMED_NUMBER.match(text, at):
        sign, point, rest = found.groups()
        fixed = ("-" if sign == "-" else "") + ("0." if point else "") + rest
        return (
            f"{found.group()!r} {place} is not a JSON number: JSON numbers have a digit before "
            f"the decimal point and no leading plus sign (RFC 8259 section 6); write {fixed}"
        )
    return str(exc)


# What a parsed JSON value is, in JSON's words (RFC 8259, section 3), for messages.
JSON_KINDS: dict[type, str] = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    dict: "an object",
    list: "an array",
}


def json_kind(value: object) -> str:
    """`value` (as orjson or msgspec parse JSON) named as JSON names it: "null", "a string"."""
    return JSON_KINDS.get(type(value), type(value).__name__)


def numeric_array(values: object, what: str, dtype: np.dtype) -> np.ndarray:
    """A dense numeric array from nested JSON lists, or InvalidInput saying why not."""
    if not isinstance(values, list):
        raise InvalidInput(f"{what} must be a list of numbers, got {json_kind(values)}")
    if not values:
        raise InvalidInput(f"{what} is empty; send at least one example")
    try:
        raw = np.asarray(values)
    except ValueError:
        raise InvalidInput(
            f"{what} is ragged: nested lists must all have the same length"
        ) from None
    # numpy takes a boolean among numbers as 1 or 0 (np.asarray([True, 0.5]) is float64):
    # JSON's true and false are not numbers, so any one of them refuses the whole list.
    if raw.dtype.kind not in "iuf" or raw.size == 0 or _holds_boolean(values):
        raise InvalidInput(
            f"{what} must hold only numbers (no strings, booleans, nulls or empty lists)"
        )
    if np.issubdtype(dtype, np.integer):
        _check_integers(raw, what, dtype)
        return raw.astype(dtype)
    with np.errstate(over="ignore"):  # a number past the type's range becomes inf
        array = raw.astype(dtype, copy=False)
    if array.dtype.kind in FLOAT_KINDS and not np.isfinite(array).all():
        raise InvalidInput(f"{what} has numbers too large for {dtype.name} (or NaN/infinity)")
    return array


def _holds_boolean(values: list) -> bool:
    """Whether nested lists `values` hold a bool anywhere (a pass in C per list)."""
    kinds = set(map(type, values))
    return bool in kinds or (
        list in kinds and any(_holds_boolean(item) for item in values if type(item) is list)
    )


def _check_integers(raw: np.ndarray, what: str, dtype: np.dtype) -> None:
    """Refuse numbers an integer type cannot hold exactly: numpy's cast would truncate a
    fraction and wrap a number past the type's range (300 as uint8 is 44) without a word."""
    if not (raw == np.trunc(raw)).all():  # integers are their own trunc
        raise InvalidInput(f"{what} has numbers with a fraction; {dtype.name} holds whole numbers")
    limits = np.iinfo(dtype)
    low, high = int(raw.min()), int(raw.max())
    if low < limits.min or high > limits.max:
        raise InvalidInput(
            f"{what} has numbers out of range for {dtype.name} ({limits.min} to {limits.max})"
        )


# -- POST /predict -----------------------------------------------------------

# The usual bodies ({"data": [784 numbers]} or a list of such rows) of a float model go
# straight to an array (service.jsonnumbers); of other models, in one pass through typed
# msgspec decoders, which refuse strings, booleans, nulls and other keys on their own.
# Anything else takes the general path, which also words the error.


class _Flat(msgspec.Struct, forbid_unknown_fields=True):
    data: list[float]


class _Rows(msgspec.Struct, forbid_unknown_fields=True):
    data: list[list[float]]


_TYPED = (msgspec.json.Decoder(_Flat), msgspec.json.Decoder(_Rows))


def predict_data(body: bytes, dtype: np.dtype, numbers: NumberArrays | None = None) -> np.ndarray:
    """The numbers of a /predict body as an array of the model's type, shaped as `data`.

    `numbers`: the fast lane for float models (None: typed and general paths only); it
    gives the same array as the general path or declines. Raises InvalidInput saying
    what is wrong with the body.
    """
    if numbers is not None:
        array = numbers.decode(body, dtype)
        if array is not None:
            return array
    # Integer types take the general path, which refuses fractions and wrapped numbers.
    for decoder in _TYPED if dtype.kind in FLOAT_KINDS else ():
        try:
            values = decoder.decode(body).data
        except msgspec.ValidationError:
            continue
        except msgspec.DecodeError:
            break
        if not values or (isinstance(values[0], list) and not all(values)):
            break  # empty data or an empty row: the general path words the error
        try:
            with np.errstate(over="ignore"):
                array = np.array(values, dtype=dtype)
        except ValueError:  # ragged rows
            break
        if np.isfinite(array).all():
            return array
        break
    document = parse_json(body)
    if not isinstance(document, dict) or "data" not in document:
        has = ""
        if isinstance(document, dict):
            has = f"; it has {_names(list(document))}" if document else "; it has no key"
        raise InvalidInput(
            'the body must be a JSON object with the key "data": {"data": [numbers]}' + has
        )
    _only_keys(document, ("data",), "the body")
    return numeric_array(document["data"], '"data"', dtype)


def encode_predict(scores: np.ndarray, single: bool, model: ModelInfo) -> dict:
    """The /predict answer: the argmax class of each row of `scores` ([batch, classes]
    or [batch, 1, classes]); `single` (one example sent, not a list) answers
    {"prediction": k}, otherwise {"predictions": [k, ...]}, with the model's name and
    version. Which one follows the shape of the request's data alone (README, "One
    example or a list").

    Raises InvalidInput naming the first row whose scores hold a NaN: it has no class
    (`row_classes`).
    """
    classes = row_classes(scores.reshape(scores.shape[0], -1))
    if None in classes:
        row = classes.index(None)
        raise InvalidInput(
            f"the model's scores for {'this example' if single else f'data[{row}]'} "
            "are NaN (not a number), so it has no class: the model's arithmetic overflowed "
            "on its numbers (far outside the range it was trained on, say); check the "
            "input's scale, or the model if every input does this"
        )
    if single:
        return {"prediction": classes[0], "model": model.name, "version": model.version}
    return {"predictions": classes, "model": model.name, "version": model.version}


# -- Open Inference Protocol ------------------------------------------------

# What each level of an inference request may hold (Open Inference Protocol, "Inference
# Request JSON Object"), and the parameters this server implements there: the protocol
# defines none of its own ("Parameters": a server may implement server-specific ones),
# so any other parameter is a feature this server does not have and is refused by name
# rather than silently ignored. Triton's binary tensor extension defines
# binary_data_output, binary_data_size and binary_data; its classification extension
# defines classification.
REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")
OUTPUT_KEYS = ("name", "parameters")
REQUEST_PARAMETERS = ("binary_data_output",)
INPUT_PARAMETERS = ("binary_data_size",)
OUTPUT_PARAMETERS = ("binary_data", "classification")
CLASSIFICATION = "classification"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]
    # Output name -> how many top classes to answer instead of the scores.
    classifications: dict[str, int] = field(default_factory=dict)


def split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes | memoryview]:
    """Split a body into its JSON header and binary tail (Triton's extension); the tail
    is a view of the body, not a copy (800 kB for 256 MNIST images)."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(f"{BINARY_HEADER} must be an integer, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise InvalidInput(f"{BINARY_HEADER} is {length} but the body has {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def _only_keys(entry: dict, allowed: Sequence[str], where: str) -> None:
    unknown = [key for key in entry if key not in allowed]
    if unknown:
        raise InvalidInput(
            f"{where} has {_names(unknown)}, which this server does not read; it reads "
            f"{_names(allowed)}"
        )


def _parameters(params: object, where: str, implemented: Sequence[str]) -> dict:
    """An object's `parameters` value (None when it has none), checked to hold only the
    `implemented` ones."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where} 'parameters' must be an object")
    unknown = [key for key in params if key not in implemented]
    if unknown:
        raise InvalidInput(
            f"{where} parameter {_names(unknown)} is not implemented by this server, which "
            f"implements only {_names(implemented)} there; remove it"
        )
    return params


def _flag(params: dict, name: str, where: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} parameter '{name}' must be true or false")
    return value


def _names(keys: Sequence[str]) -> str:
    return ", ".join(repr(key) for key in keys)


def _shape(entry: dict, where: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"{where} 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], where: str) -> None:
    """InvalidInput unless `shape` is the input's: each dimension the graph's, or any size
    where the graph has -1, and any number of rows (at least 1) where the graph fixes
    the batch at 1 (served row by row, or through the batch-capable copy)."""
    expected = spec.shape
    batch_any = expected[0] == 1
    if len(shape) == len(expected) and shape[0] != 0:
        for i, (got, want) in enumerate(zip(shape, expected, strict=True)):
            if got != want and want != -1 and not (i == 0 and batch_any):
                break
        else:
            return
    # Worded as the model's metadata shows the shape: -1 where any number of rows is served.
    served = (-1, *expected[1:]) if batch_any else expected
    raise InvalidInput(f"{where} has shape {list(shape)}; the model expects {shape_words(served)}")


def decode_infer(
    body: bytes,
    header_length: str | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    numbers: NumberArrays | None = None,
) -> InferRequest:
    """An inference request (JSON, or JSON header + binary tail) checked against the model.

    Open Inference Protocol, "Inference Request JSON Object"; Triton's binary tensor
    extension for `header_length` (the Inference-Header-Content-Length header) and the
    tail. Each input becomes an array of the model's dtype in the request's shape.
    Raises InvalidInput naming the first thing wrong: a malformed body, a key or a
    parameter this server does not implement, an unknown tensor, a wrong datatype or
    shape, binary sizes that do not add up.

    `numbers`: the fast lane (`_lane_request`), which reads the request's structure in
    msgspec's typed decoder and each float input's JSON `data` straight into numpy; it
    gives the request the general path gives, or declines. Every error is the general
    path's.
    """
    head, tail = split_binary(body, header_length)
    if numbers is not None:
        request = _lane_request(head, tail, inputs, outputs, numbers, header_length is not None)
        if request is not None:
            return request
    try:
        document = _request_document(head)
    except InvalidInput:
        if header_length is None:
            _refuse_unannounced_binary(body)
        raise
    return _infer_request(document, inputs, outputs, tail)


def _refuse_unannounced_binary(body: bytes) -> None:
    """Raise InvalidInput naming Inference-Header-Content-Length when `body` is a JSON
    object followed by more bytes, as a binary request is, but came without the header
    (Triton's binary tensor data extension: it must be given when binary data follows)."""
    # Latin-1 maps each byte to one character, so the end found is a byte offset; the
    # bytes of UTF-8 text inside strings only become other characters there.
    try:
        header, length = json.JSONDecoder().raw_decode(body.decode("latin-1"))
    except (ValueError, RecursionError):  # not JSON, or nested past Python's limit
        return
    rest = len(body) - length
    if isinstance(header, dict) and body[length:].strip():
        raise InvalidInput(
            f"the body has {rest} bytes after a {length}-byte JSON header but no "
            f"{BINARY_HEADER} header, which a request with binary data must carry (Triton's "
            f"binary tensor data extension): send the JSON header's length in bytes, "
            f"{length} here"
        )


def _infer_request(
    document: dict,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    tail: bytes | memoryview,
) -> InferRequest:
    binary_default = _binary_default(document.get("parameters"))
    arrays = _decode_inputs(document["inputs"], inputs, tail)
    names, binary, classifications = _requested_outputs(
        document.get("outputs"), outputs, binary_default
    )
    return InferRequest(document.get("id"), arrays, names, binary, classifications)


def _binary_default(params: object) -> bool:
    """The request's `binary_data_output` parameter (false when not given)."""
    request_params = _parameters(params, "the request's", REQUEST_PARAMETERS)
    return _flag(request_params, "binary_data_output", "the request's", False)


def _request_document(head: bytes) -> dict:
    """The request's JSON object, its keys, `id` and `inputs` checked."""
    return _checked_document(parse_json(head))


# A shape's dimensions and a binary size: whole numbers, never negative.
_LANE_COUNT = Annotated[int, msgspec.Meta(ge=0)]


class _LaneInputParameters(msgspec.Struct, forbid_unknown_fields=True):
    binary_data_size: _LANE_COUNT | None = None


class _LaneInput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    shape: list[_LANE_COUNT]
    datatype: str
    parameters: _LaneInputParameters | None = None
    data: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class _LaneRequest(msgspec.Struct, forbid_unknown_fields=True):
    inputs: list[_LaneInput]
    id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    parameters: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    outputs: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_LANE = msgspec.json.Decoder(_LaneRequest)


def _lane_request(
    head: bytes,
    tail: bytes | memoryview,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    numbers: NumberArrays,
    binary_header: bool,
) -> InferRequest | None:
    """The request the general path (`_request_document`, `_infer_request`) makes of
    `head` and `tail`, or None where it might differ or refuse; `binary_header`: `head`
    is a binary request's JSON header.

    msgspec's typed decoder checks in C what the general path checks a key at a time in
    Python: the keys each object may hold, that the inputs are objects with a string
    `name` and `datatype`, a `shape` of non-negative integers and `parameters` of at most
    `binary_data_size`. The rules with the model in them (its inputs' names, datatypes
    and shapes, the binary sizes, the finite numbers) are the general path's own helpers,
    whose refusal declines here. orjson reads `id`, `parameters` and `outputs`, as the
    general path reads them: strings are compared with the model's names or read by
    orjson. A float input's JSON `data` is read by `NumberArrays.decode_array`, which
    declines anything not certain to be `np.asarray`'s array.

    A key given twice keeps its last value, as in orjson, but msgspec skips the earlier
    value of a key read as text (`id`, `parameters`, `outputs`, `data`) without checking
    that it is valid JSON. A binary request's header (a few hundred bytes) is therefore
    parsed whole by orjson first, so its lane takes only what the general path takes. A
    JSON body is not (its numbers are the lane's whole point): one that repeats such a
    key after a value that is not valid JSON (invalid UTF-8, a number past a double) is
    answered with the last value where the general path refuses it (README, Request
    parameters and headers). msgspec's recursion on nesting deeper than Python's limit
    declines too.

    Decoding a single-image V2 JSON request took 30 us in the app's process against 36 us
    through the general path (bench/README.md: "One lane for V2 requests").
    """
    try:
        if binary_header:
            orjson.loads(head)
        request = _LANE.decode(head)
        request_id, params, requested = (
            None if raw is msgspec.UNSET else orjson.loads(memoryview(raw))
            for raw in (request.id, request.parameters, request.outputs)
        )
    except (msgspec.MsgspecError, orjson.JSONDecodeError, RecursionError):
        return None
    if not (request_id is None or isinstance(request_id, str)) or not request.inputs:
        return None
    specs = {spec.name: spec for spec in inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    # The helpers' refusals decline (the general path words them), so their `where` is
    # the input's name alone.
    try:
        checked_request_id(request_id, "'id'")
        binary_default = _binary_default(params)
        for entry in request.inputs:
            spec = specs.get(entry.name)
            if spec is None or entry.name in arrays or entry.datatype != spec.datatype:
                return None
            shape = tuple(entry.shape)
            _check_shape(spec, shape, entry.name)
            size = None if entry.parameters is None else entry.parameters.binary_data_size
            has_data = entry.data is not msgspec.UNSET
            if size is None:
                if not has_data:
                    return None
                data = numbers.decode_array(bytes(entry.data), spec.dtype)
                if data is None:
                    return None
                array = _json_tensor(data, spec, shape, entry.name)
            else:
                array = _binary_tensor(spec, shape, entry.name, size, has_data, tail, offset)
                offset += size
            arrays[spec.name] = array.reshape(shape)
        _complete_inputs(arrays, specs, offset, tail)
        names, binary, classifications = _requested_outputs(requested, outputs, binary_default)
    except InvalidInput:
        return None
    return InferRequest(request_id, arrays, names, binary, classifications)


def checked_request_id(request_id: str | None, name: str) -> str | None:
    """`request_id` (None: the request has none) when it holds at most
    MAX_REQUEST_ID_CHARS characters; InvalidInput naming `name` (the `id` key or the
    X-Request-Id header) otherwise.

    Every record capture makes of the request carries its id twice (`id` and
    `request_id`), once for each row of its batch, so without a bound a client would set
    how much memory and storage one request's records take: a 1 MB `id` on a V2 binary
    request of 256 images (1.85 MB, under MAX_BODY_BYTES) took the service's peak resident
    memory from 97 to 1,077 MiB, past the dev task's 1,024 MiB. The Open Inference Protocol gives
    `id` no length ("Inference Request JSON Object"); SageMaker bounds the id it adds to
    captured data at 64 characters (InvokeEndpoint, InferenceId); 256 holds a UUID (36), a
    W3C traceparent (55), an X-Ray trace header (74) or a composite id of a client's own,
    and keeps a record within 2.6 times the size capture's queue estimates for it (906
    bytes against records.Pending's 360 for ten scores; 1.3 times with a UUID).
    """
    if request_id is not None and len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidInput(
            f"{name} is {len(request_id)} characters long; this server takes request ids of "
            f"at most {MAX_REQUEST_ID_CHARS} characters (every captured record of the "
            "request carries it): send a shorter one, e.g. a UUID"
        )
    return request_id


def _checked_document(document: object) -> dict:
    """A request document with its keys, `id` and `inputs` checked."""
    if not isinstance(document, dict):
        raise InvalidInput("the inference request must be a JSON object with 'inputs'")
    _only_keys(document, REQUEST_KEYS, "the inference request")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    checked_request_id(request_id, "'id'")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    return document


def _decode_inputs(
    raw_inputs: list, inputs: Sequence[TensorSpec], tail: bytes | memoryview
) -> dict[str, np.ndarray]:
    """Every input by name; binary ones take their bytes from `tail` in order."""
    specs = {spec.name: spec for spec in inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for position, entry in enumerate(raw_inputs):
        spec, where = _input_spec(entry, position, specs, arrays)
        shape = _shape(entry, where)
        _check_shape(spec, shape, where)
        params = _parameters(entry.get("parameters"), where, INPUT_PARAMETERS)
        size = params.get("binary_data_size")
        if size is None:
            array = _json_tensor(entry.get("data", _ABSENT), spec, shape, where)
        else:
            array = _binary_tensor(spec, shape, where, size, "data" in entry, tail, offset)
            offset += size
        arrays[spec.name] = array.reshape(shape)
    _complete_inputs(arrays, specs, offset, tail)
    return arrays


def _complete_inputs(
    arrays: Mapping[str, np.ndarray],
    specs: Mapping[str, TensorSpec],
    offset: int,
    tail: bytes | memoryview,
) -> None:
    """Every binary byte declared (`offset` of them read), every input given, one batch
    size for all; InvalidInput otherwise."""
    if offset != len(tail):
        raise InvalidInput(
            f"the body has {len(tail) - offset} bytes of binary data that no input declares"
        )
    missing = [name for name in specs if name not in arrays]
    if missing:
        raise InvalidInput(f"missing inputs {missing}; the model needs {list(specs)}")
    if len({a.shape[0] for a in arrays.values()}) > 1:
        raise InvalidInput("all inputs must have the same batch size")


def _input_spec(
    entry: object, position: int, specs: Mapping[str, TensorSpec], seen: Mapping[str, object]
) -> tuple[TensorSpec, str]:
    """The model input an entry names, its keys and datatype checked; and how to name it."""
    if not isinstance(entry, dict):
        raise InvalidInput(f"inputs[{position}] must be an object")
    name = entry.get("name")
    if not isinstance(name, str):  # also keeps a list or an object out of the lookup below
        raise InvalidInput(
            f"inputs[{position}] 'name' must be a string naming one of the model's inputs "
            f"{list(specs)}"
        )
    where = f"input {name!r}"
    if name not in specs:
        raise InvalidInput(f"{where} is not an input of the model; its inputs are {list(specs)}")
    if name in seen:
        raise InvalidInput(f"{where} is given twice")
    _only_keys(entry, INPUT_KEYS, where)
    spec = specs[name]
    datatype = entry.get("datatype")
    if datatype != spec.datatype:
        # Anything but a string is named by its JSON kind: an array's repr could be a
        # thousand levels deep (orjson's limit), past the interpreter's recursion limit.
        shown = repr(datatype) if isinstance(datatype, str) else json_kind(datatype)
        has = f"datatype {shown}" if "datatype" in entry else "no 'datatype'"
        raise InvalidInput(f"{where} has {has}; the model expects {spec.datatype}")
    return spec, where


# An input without `data` (`_json_tensor`).
_ABSENT = object()


def _json_tensor(data: object, spec: TensorSpec, shape: tuple[int, ...], where: str) -> np.ndarray:
    """An input given as JSON `data` (flat or nested, row-major; _ABSENT when the input
    has none), as a flat array; `data` may already be one (`_lane_request`)."""
    if data is _ABSENT:
        raise InvalidInput(f"{where} has neither 'data' nor 'binary_data_size'")
    array = (
        data
        if isinstance(data, np.ndarray)
        else numeric_array(data, f"{where} data", spec.dtype).reshape(-1)
    )
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInput(f"{where} has {array.size} values; shape {list(shape)} needs {count}")
    return array


def _binary_tensor(
    spec: TensorSpec,
    shape: tuple[int, ...],
    where: str,
    size: object,
    has_data: bool,
    tail: bytes | memoryview,
    offset: int,
) -> np.ndarray:
    """An input's `size` bytes at `offset` of the binary tail: little-endian values of
    the input's datatype, row-major (Triton's binary tensor extension); `has_data`: the
    input also has JSON `data`, which is refused."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{where} 'binary_data_size' must be a non-negative integer")
    if has_data:
        raise InvalidInput(f"{where} has both 'data' and 'binary_data_size'; send one")
    count = math.prod(shape)
    if size != count * spec.dtype.itemsize:
        raise InvalidInput(
            f"{where} declares {size} bytes; shape {list(shape)} of {spec.datatype} "
            f"needs {count * spec.dtype.itemsize}"
        )
    if offset + size > len(tail):
        raise InvalidInput(f"{where} declares more binary data than the body holds")
    array = np.frombuffer(tail, dtype=spec.dtype.newbyteorder("<"), count=count, offset=offset)
    if spec.dtype.kind in FLOAT_KINDS and not np.isfinite(array).all():
        raise InvalidInput(f"{where} holds NaN or infinity")
    return array


def _requested_outputs(
    requested: object, outputs: Sequence[TensorSpec], binary_default: bool
) -> tuple[tuple[str, ...], frozenset[str], dict[str, int]]:
    """Which outputs to answer, which of them in binary, and which as classifications.

    No `outputs`, or an empty list, means every output with the request's defaults:
    the protocol says an absent list returns all outputs, and Triton answers an
    empty one the same way.
    """
    if requested is None or requested == []:
        names = tuple(spec.name for spec in outputs)
        return names, frozenset(names) if binary_default else frozenset(), {}
    if not isinstance(requested, list):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    specs = {spec.name: spec for spec in outputs}
    chosen: list[str] = []
    binary: set[str] = set()
    classifications: dict[str, int] = {}
    for position, entry in enumerate(requested):
        if not isinstance(entry, dict):
            raise InvalidInput(f"outputs[{position}] must be an object with a 'name'")
        name = entry.get("name")
        if not isinstance(name, str):
            raise InvalidInput(
                f"outputs[{position}] 'name' must be a string naming one of the model's "
                f"outputs {list(specs)}"
            )
        where = f"output {name!r}"
        if name not in specs:
            raise InvalidInput(
                f"{where} is not an output of the model; its outputs are {list(specs)}"
            )
        if name in chosen:
            raise InvalidInput(f"{where} is requested twice")
        _only_keys(entry, OUTPUT_KEYS, where)
        params = _parameters(entry.get("parameters"), where, OUTPUT_PARAMETERS)
        chosen.append(name)
        if _flag(params, "binary_data", where, binary_default):
            binary.add(name)
        count = params.get(CLASSIFICATION, 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidInput(
                f"{where} parameter 'classification' must be a whole number of classes "
                "(0 answers the scores)"
            )
        if count:
            if specs[name].datatype in UNRANKED_DATATYPES:
                raise InvalidInput(
                    f"{where} is {specs[name].datatype}, whose values cannot rank classes"
                )
            classifications[name] = count
    return tuple(chosen), frozenset(binary), classifications


def encode_infer(
    model_name: str,
    model_version: str,
    request: InferRequest,
    results: dict[str, np.ndarray],
    specs: Sequence[TensorSpec],
    labels: Mapping[str, Sequence[str]] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary outputs follow it.

    An output requested as a classification becomes a BYTES tensor [batch, k] of
    "<score>:<index>[:<label>]" strings (`labels` by output name); in binary form each
    element is its UTF-8 bytes after a 4-byte little-endian length (Triton's binary
    tensor extension, "BYTES" serialization).
    """
    datatypes = {spec.name: spec.datatype for spec in specs}
    outputs, blobs = [], []
    for name in request.outputs:
        array = results[name]
        datatype = datatypes[name]
        count = request.classifications.get(name)
        if count:
            array = top_classes(array, count, (labels or {}).get(name, ()))
            datatype = "BYTES"
        entry: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in request.binary_outputs:
            blob = _tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    document: dict = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        document["id"] = request.id
    head = orjson.dumps(document)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _tensor_bytes(array: np.ndarray) -> bytes:
    if array.dtype == object:  # BYTES: each element's length, then its bytes
        encoded = [str(item).encode() for item in array.reshape(-1)]
        return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
