"""Records and parts: what one prediction looks like on disk, and how a batch is encoded.

One record per batch row, one JSON object per line:

    id           the request's id (V2 `id`, or the `X-Request-Id` header of /predict,
                 else a generated uuid4), suffixed `-<row>` for the rows of a batch
    request_id   the request's id without the row suffix
    row          the row's index in its request's batch (0 for a single example)
    time         UTC time the prediction was answered, ISO 8601 with milliseconds
    env          the environment (APP_ENV)
    route        "/predict" or "/v2/infer"
    model        {"name", "version", "sha256"} of the model that answered
    prediction   the class: argmax of the row's scores; null when they hold a NaN (the
                 model's arithmetic overflowed: the row has no class)
    scores       the row's raw model output (the first output, flattened)
    latency_ms   the whole request's latency in milliseconds
    inputs       the row's input tensor, flattened (only with PREDICTION_LOG_INPUTS)
    input_shape  the row's input shape (only with inputs)
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson

from service.capture.partformat import SUFFIX as PART_SUFFIX
from service.capture.partformat import GzipMember, hour_prefix
from service.capture.partformat import decode as decode_part
from service.capture.partformat import encode as encode_part
from service.classification import row_classes
from service.model import ModelInfo

__all__ = [
    "PART_SUFFIX",
    "Part",
    "PartNamer",
    "PartsBuilder",
    "Pending",
    "decode_part",
    "encode_part",
    "encode_parts",
    "lines_of",
]
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(slots=True, init=False)
class Pending:
    """One answered request, as the request path hands it over (no work done yet)."""

    answered_at: float
    route: str
    request_id: str | None
    model: ModelInfo
    scores: np.ndarray
    inputs: np.ndarray | None
    latency_seconds: float
    # Records this request makes (its batch rows).
    rows: int = field(init=False)
    # Roughly the JSON size of its records, in bytes (for batching by bytes).
    estimated_bytes: int = field(init=False)

    def __init__(
        self,
        answered_at: float,
        route: str,
        request_id: str | None,
        model: ModelInfo,
        scores: np.ndarray,
        inputs: np.ndarray | None,
        latency_seconds: float,
    ) -> None:
        # One frame: made on the request path for every answered request.
        self.answered_at = answered_at
        self.route = route
        self.request_id = request_id
        self.model = model
        self.scores = scores
        self.inputs = inputs
        self.latency_seconds = latency_seconds
        try:
            rows = len(scores)  # one attribute-free call (ndim and shape cost 40 ns each)
        except TypeError:  # a 0-d array: one row
            rows = 1
        self.rows = rows
        size = 240 * rows + 12 * scores.size
        self.estimated_bytes = size if inputs is None else size + 8 * inputs.size


@dataclass(frozen=True, slots=True)
class Part:
    """A whole gzip JSON Lines object: `key` is relative to the sink's prefix."""

    key: str
    body: bytes
    records: int


def iso_time(timestamp: float) -> str:
    """`timestamp` (seconds since the epoch) as UTC ISO 8601 with milliseconds, truncated."""
    return _iso_milliseconds(int(timestamp * 1000))


def _iso_milliseconds(milliseconds: int) -> str:
    return f"{_second(milliseconds // 1000)}.{milliseconds % 1000:03d}Z"


@functools.lru_cache(maxsize=16)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def latency_milliseconds(seconds: float) -> float:
    """Seconds -> milliseconds rounded to the microsecond, half to even: as numpy's `rint`
    rounds the same product, so a column of latencies rounds to the same values."""
    return round(seconds * 1e6) / 1000


def new_id() -> str:
    """A random (version 4) UUID string (RFC 9562 section 5.4)."""
    return quoted_new_ids(1)[0][1:-1].decode("ascii")


def quoted_new_ids(count: int) -> list[bytes]:
    """`count` random (version 4) UUIDs (RFC 9562 section 5.4), each as its JSON string
    (`b'"xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"'`), never the same one twice.

    They are made _ID_BLOCK at a time in one numpy pass and handed out from that stock: a
    run of single-image records needs one per record, and making one in Python costs about
    1.1 us (`uuid.uuid4()` more), against about 0.14 in a block. The block is made by the
    encoder slice that empties the stock, on the event loop, so it is kept small: with
    slices of 32 records, 1,024 ids made a slice hold the loop three to five times as long
    as the others, once every 32 slices, which at 16 concurrent requests is one request in
    64 (bench/README.md, "Ids in small blocks"). Thread-safe; a forked child empties the
    stock it inherited (os.register_at_fork), so two processes never share ids.
    """
    with _id_lock:
        if count > len(_id_stock):
            _id_stock.extend(_quoted_uuids(max(_ID_BLOCK, count)))
        start = len(_id_stock) - count
        taken = _id_stock[start:]
        del _id_stock[start:]
    return taken


def _quoted_uuids(count: int) -> list[bytes]:
    # os.urandom, as uuid.uuid4() uses: one call for the whole block. The hex digits come
    # from bytes.hex() and go into their groups by slices, where a gather of 32 nibbles a
    # row by a digit table took twice as long (215 against 110 us for 1,024 ids).
    raw = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
    raw[:, 6] = raw[:, 6] & 0x0F | 0x40  # version 4
    raw[:, 8] = raw[:, 8] & 0x3F | 0x80  # variant 10 (RFC 9562 section 4.1)
    digits = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype=np.uint8)
    digits = digits.reshape(count, 32)
    text = np.empty((count, _QUOTED_UUID.size), dtype=np.uint8)
    text[:] = _QUOTED_UUID
    for at, start, length in _UUID_GROUPS:
        text[:, at : at + length] = digits[:, start : start + length]
    return text.view(f"S{_QUOTED_UUID.size}").ravel().tolist()


def _forget_ids_after_fork() -> None:
    global _id_lock
    _id_lock = threading.Lock()
    _id_stock.clear()


_ID_BLOCK = 256
_id_stock: list[bytes] = []
_id_lock = threading.Lock()
os.register_at_fork(after_in_child=_forget_ids_after_fork)
# A quoted UUID: `"`, 32 hex digits in groups 8-4-4-4-12 split by `-`, `"`; each group as
# (where it starts in the text, where it starts in the digits, its length).
_QUOTED_UUID = np.frombuffer(b'"00000000-0000-0000-0000-000000000000"', dtype=np.uint8)
_UUID_GROUPS = ((1, 0, 8), (10, 8, 4), (15, 12, 4), (20, 16, 4), (25, 20, 12))


@functools.lru_cache(maxsize=8)
def _model_fields(model: ModelInfo) -> dict:
    return {"name": model.name, "version": model.version, "sha256": model.sha256}


def _rows(entry: Pending) -> tuple[int, np.ndarray, list[int | None], str]:
    """Row count, scores as [rows, classes], each row's class (`row_classes`), and the
    request's id."""
    rows = entry.rows
    scores = entry.scores
    if scores.ndim != 2 or not scores.flags.c_contiguous:
        scores = np.ascontiguousarray(scores).reshape(rows, -1)
    return rows, scores, row_classes(scores), entry.request_id or new_id()


def _class_text(label: int | None) -> bytes:
    """A class as JSON: its number, or null for a row without one."""
    return b"null" if label is None else b"%d" % label


def build_records(entry: Pending, env: str) -> Iterator[dict]:
    """The records of one request, one per batch row."""
    rows, scores, classes, request_id = _rows(entry)
    model = _model_fields(entry.model)
    answered = iso_time(entry.answered_at)
    latency_ms = latency_milliseconds(entry.latency_seconds)
    inputs = None
    if entry.inputs is not None:
        inputs = np.ascontiguousarray(entry.inputs).reshape(rows, -1)
        input_shape = list(entry.inputs.shape[1:])
    for row in range(rows):
        record = {
            "id": request_id if rows == 1 else f"{request_id}-{row}",
            "request_id": request_id,
            "row": row,
            "time": answered,
            "env": env,
            "route": entry.route,
            "model": model,
            "prediction": classes[row],
            "scores": scores[row],
            "latency_ms": latency_ms,
        }
        if inputs is not None:
            record["inputs"] = inputs[row]
            record["input_shape"] = input_shape
        yield record


def record_lines(entry: Pending, env: str) -> Iterator[bytes]:
    """The JSON lines of `build_records(entry, env)`, byte for byte as orjson writes them.

    The fixed fields are encoded once per request and the rows' scores in one call,
    instead of one dict and one `dumps` per row: capture runs beside the request path
    on the same core, so its microseconds per record are the service's.
    """
    if entry.inputs is not None:  # rare, and large anyway: the plain path
        for record in build_records(entry, env):
            yield orjson.dumps(record, option=_DUMPS_OPTIONS)
        return
    rows, scores, classes, request_id = _rows(entry)
    quoted_id = orjson.dumps(request_id)
    middle = b"".join(
        (
            b',"time":',
            orjson.dumps(iso_time(entry.answered_at)),
            b',"env":',
            orjson.dumps(env),
            b',"route":',
            orjson.dumps(entry.route),
            b',"model":',
            _model_json(entry.model),
            b',"prediction":',
        )
    )
    latency = b',"latency_ms":' + orjson.dumps(latency_milliseconds(entry.latency_seconds)) + b"}\n"
    if rows == 1:
        yield b"".join(
            (
                b'{"id":',
                quoted_id,
                b',"request_id":',
                quoted_id,
                b',"row":0',
                middle,
                _class_text(classes[0]),
                b',"scores":',
                orjson.dumps(scores[0], option=orjson.OPT_SERIALIZE_NUMPY),
                latency,
            )
        )
        return
    for row in range(rows):
        yield b"".join(
            (
                b'{"id":',
                orjson.dumps(f"{request_id}-{row}"),
                b',"request_id":',
                quoted_id,
                b',"row":',
                str(row).encode(),
                middle,
                _class_text(classes[row]),
                b',"scores":',
                orjson.dumps(scores[row], option=orjson.OPT_SERIALIZE_NUMPY),
                latency,
            )
        )


@functools.lru_cache(maxsize=8)
def _model_json(model: ModelInfo) -> bytes:
    return orjson.dumps(_model_fields(model))


class PartNamer:
    """Part names unique across processes and hosts: `<UTC time>-<host>-<pid>-<random>-<seq>`."""

    def __init__(self) -> None:
        host = _UNSAFE.sub("-", socket.gethostname())[:40].strip("-") or "host"
        self._origin = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sequence = itertools.count(1)

    def __call__(self, env: str, timestamp: float) -> str:
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        name = f"{stamp}-{self._origin}-{next(self._sequence):06d}{PART_SUFFIX}"
        return f"{hour_prefix(env, timestamp)}/{name}"


def lines_of(entries: Sequence[Pending], env: str) -> list[bytes]:
    """The JSON lines of `entries`, in order, byte for byte those of `record_lines`
    (`_text_of`'s text, a line each)."""
    text, _ = _text_of(entries, env)
    # Its only line breaks are the lines' ends (`_cut`).
    return text.splitlines(keepends=True)


def _text_of(entries: Sequence[Pending], env: str) -> tuple[bytes, int]:
    """The JSON lines of `entries` as one text, and how many lines it holds.

    A run of single-row requests without inputs, whose scores share one shape and dtype
    (every /predict of one image), is encoded a column at a time (`_single_row_text`);
    anything else a request at a time (`record_lines`).
    """
    columns = _single_row_columns(entries)
    if columns is not None:
        return _single_row_text(columns, env), len(entries)
    lines = [line for entry in entries for line in record_lines(entry, env)]
    return b"".join(lines), len(lines)


class _SingleRows(NamedTuple):
    answered_at: tuple[float, ...]  # seconds since the epoch
    request_ids: tuple[str | None, ...]
    routes: tuple[str, ...]
    models: tuple[ModelInfo, ...]
    scores: np.ndarray  # [requests, values], the scores of all of them
    latency_seconds: tuple[float, ...]


def _single_row_columns(entries: Sequence[Pending]) -> _SingleRows | None:
    """`entries` as columns when every one is a single row without inputs and their
    scores concatenate without a cast (one shape, one dtype); None otherwise."""
    count = len(entries)
    if not count:
        return None
    rows, answered, request_ids, routes, models, scores, inputs, latencies = zip(
        *map(_COLUMNS, entries), strict=True
    )
    if rows.count(1) != count or any(map(operator.is_not, inputs, itertools.repeat(None))):
        return None
    try:  # "no" casting: scores of another dtype would be written as that dtype's numbers
        matrix = np.concatenate(scores, dtype=scores[0].dtype, casting="no")
    except (ValueError, TypeError):  # scalar outputs, or other shapes or dtypes
        return None
    return _SingleRows(
        answered,
        request_ids,
        routes,
        models,
        matrix.reshape(count, -1),
        latencies,
    )


def _single_row_text(columns: _SingleRows, env: str) -> bytes:
    """The lines of single-row requests as one text, made a column at a time: each column
    (ids, times, classes, scores, latencies) for all of them in one numpy or orjson call,
    laid into one list of pieces a column at a time (a slice assignment each) and joined
    once, so no Python runs once per record and no line is an object of its own."""
    count = len(columns.routes)
    # [[a,b],[c,d]] -> "a,b", "c,d": each row as orjson writes it alone; the same for the
    # classes and the latencies, each as orjson writes the number alone.
    scores = orjson.dumps(columns.scores, option=orjson.OPT_SERIALIZE_NUMPY)
    rows = scores[2:-2].split(b"],[")
    if b"n" in scores:  # a NaN or an infinity (orjson writes either as null): row by row
        classes = list(map(_class_text, row_classes(columns.scores)))
    else:
        classes = _numbers_text(columns.scores.argmax(axis=1))
    latencies = np.array(columns.latency_seconds, dtype=np.float64)
    latency_text = _numbers_text(np.rint(latencies * 1e6) / 1000)  # = latency_milliseconds
    request_ids = columns.request_ids
    given = sum(map(bool, request_ids))
    if given:
        generated = iter(quoted_new_ids(count - given))
        ids = [orjson.dumps(given_id) if given_id else next(generated) for given_id in request_ids]
    else:
        ids = quoted_new_ids(count)
    # `"2025-11-30T10:00:00.123Z"` as `iso_time` writes it, quoted: the second's part from
    # a cache (`"2025-11-30T10:00:00.`), the milliseconds' from a table (`123Z"`).
    milliseconds = (np.array(columns.answered_at, dtype=np.float64) * 1000).astype(np.int64)
    routes, models = columns.routes, columns.models
    if routes.count(routes[0]) == count and models.count(models[0]) == count:
        fields = [_fixed_fields(env, routes[0], models[0])] * count
    else:
        fields = list(map(_fixed_fields, itertools.repeat(env), routes, models))
    pieces: list[bytes] = [b""] * (_LINE_PIECES * count)
    pieces[0::_LINE_PIECES] = [b'{"id":'] * count
    pieces[1::_LINE_PIECES] = ids
    pieces[2::_LINE_PIECES] = [b',"request_id":'] * count
    pieces[3::_LINE_PIECES] = ids
    pieces[4::_LINE_PIECES] = [b',"row":0,"time":'] * count
    pieces[5::_LINE_PIECES] = list(map(_quoted_second, (milliseconds // 1000).tolist()))
    pieces[6::_LINE_PIECES] = list(
        map(_MILLISECOND_SUFFIXES.__getitem__, (milliseconds % 1000).tolist())
    )
    pieces[7::_LINE_PIECES] = fields
    pieces[8::_LINE_PIECES] = classes
    pieces[9::_LINE_PIECES] = [b',"scores":['] * count
    pieces[10::_LINE_PIECES] = rows
    pieces[11::_LINE_PIECES] = [b'],"latency_ms":'] * count
    pieces[12::_LINE_PIECES] = latency_text
    pieces[13::_LINE_PIECES] = [b"}\n"] * count
    return b"".join(pieces)


# The pieces of one line in `_single_row_text`.
_LINE_PIECES = 14


@functools.lru_cache(maxsize=16)
def _quoted_second(second: int) -> bytes:
    """`"2025-11-30T10:00:00.`: a time's JSON string up to its milliseconds."""
    return orjson.dumps(_second(second))[:-1] + b"."


_MILLISECOND_SUFFIXES = [b'%03dZ"' % millisecond for millisecond in range(1000)]


def _numbers_text(values: np.ndarray) -> list[bytes]:
    """A 1-D array -> each value as orjson writes it alone (`[1.5, 2.0]` -> `b"1.5", b"2.0"`)."""
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


_COLUMNS = operator.attrgetter(
    "rows", "answered_at", "request_id", "route", "model", "scores", "inputs", "latency_seconds"
)


@functools.lru_cache(maxsize=16)
def _fixed_fields(env: str, route: str, model: ModelInfo) -> bytes:
    """`,"env":..,"route":..,"model":{..},"prediction":` for one environment, route, model."""
    return b"".join(
        (
            b',"env":',
            orjson.dumps(env),
            b',"route":',
            orjson.dumps(route),
            b',"model":',
            _model_json(model),
            b',"prediction":',
        )
    )


class Slice(NamedTuple):
    """Whole requests taken from the queue to be encoded in one turn of the event loop."""

    entries: list[Pending]
    rows: int
    estimated_bytes: int


def take_slice(queue: deque[Pending], rows: int) -> Slice:
    """Whole requests popped from the left of `queue`, in order, until they hold `rows`
    rows or more or the queue is empty: a slice holds at most `rows - 1` plus its last
    request's rows (a request larger than `rows` ends the slice it starts or joins)."""
    piece: list[Pending] = []
    held = size = 0
    while queue and held < rows:
        entry = queue.popleft()
        piece.append(entry)
        held += entry.rows
        size += entry.estimated_bytes
    return Slice(piece, held, size)


def _text_by_hour(entries: Sequence[Pending], env: str) -> list[tuple[int, bytes, int]]:
    """(UTC hour since the epoch, the JSON lines of its run of `entries` as one text, how
    many lines) for each run of one hour, in order: a run of single images in one hour,
    the common case, is taken apart into columns once, for its hour and its text."""
    if not entries:
        return []
    columns = _single_row_columns(entries)
    if columns is not None:
        # Python's min and max of a slice's few dozen times: three numpy calls on so small an
        # array cost about 15,000 instructions a slice more.
        first = int(min(columns.answered_at) // 3600)
        if first == int(max(columns.answered_at) // 3600):
            return [(first, _single_row_text(columns, env), len(entries))]
    runs = itertools.groupby(entries, key=lambda entry: int(entry.answered_at // 3600))
    return [(hour, *_text_of(list(run), env)) for hour, run in runs]


class PartsBuilder:
    """Encodes requests into gzip JSON Lines parts a slice at a time: one or more parts
    per UTC hour the requests fall in, each holding at most `max_records` records and
    about `max_bytes` of JSON (a part closes once it reaches either).

    `add` does a slice's work and returns the parts it filled, so the recorder can let
    requests run between slices and store a full part at once; `finish` closes every
    open part, ordered by hour.
    """

    def __init__(
        self,
        env: str,
        namer: PartNamer,
        max_records: int = 10_000,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._env = env
        self._namer = namer
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._open: dict[
            int, tuple[GzipMember, list[int]]
        ] = {}  # hour -> (member, [records, bytes])

    def add(self, entries: Sequence[Pending]) -> list[Part]:
        """Encode and compress `entries` (in the order they were answered); the parts they
        filled, closed. Every line is made before any is compressed: when encoding raises,
        no part holds any of them."""
        encoded = _text_by_hour(entries, self._env)
        filled: list[Part] = []
        for hour, text, lines in encoded:
            self._write(hour, text, lines, filled)
        return filled

    def finish(self) -> list[Part]:
        """Close every open part: those with records, ordered by hour."""
        closed = (self._close(hour) for hour in sorted(self._open))
        return [part for part in closed if part is not None]

    def _write(self, hour: int, text: bytes, lines: int, filled: list[Part]) -> None:
        """`text`, `lines` whole JSON lines, into the hour's open part, closing each part it
        fills and going on in the next."""
        start = 0
        while lines:
            member, counts = self._member(hour)
            room = self._max_records - counts[0]
            space = self._max_bytes - counts[1]  # the JSON that fills the part
            if lines <= room and len(text) - start < space:  # all of it fits: the usual case
                end, taken = len(text), lines
            else:
                end, taken = _cut(text, start, room, space)
            member.add(text if end - start == len(text) else text[start:end])
            counts[0] += taken
            counts[1] += end - start
            lines -= taken
            start = end
            if counts[0] >= self._max_records or counts[1] >= self._max_bytes:
                filled.append(self._close(hour))

    def _member(self, hour: int) -> tuple[GzipMember, list[int]]:
        if hour not in self._open:
            self._open[hour] = (GzipMember(), [0, 0])
        return self._open[hour]

    def _close(self, hour: int) -> Part | None:
        member, (records, _) = self._open.pop(hour)
        if not records:
            return None
        return Part(self._namer(self._env, hour * 3600), member.finish(), records)


def _cut(text: bytes, start: int, room: int, space: int) -> tuple[int, int]:
    """Where a part that has room for `room` more lines and `space` more bytes (its last
    line may reach past them) stops taking the lines of `text` from `start`: (the end,
    in `text`, of the last line it takes, how many it takes). A line's only newline is
    its end: JSON escapes every control character in a string (RFC 8259, section 7)."""
    end = start
    taken = 0
    while taken < room:
        end = text.index(b"\n", end) + 1
        taken += 1
        if end - start >= space:
            break
    return end, taken


def encode_parts(
    entries: Iterable[Pending],
    env: str,
    namer: PartNamer,
    max_records: int = 10_000,
    max_bytes: int = 8 * 1024 * 1024,
) -> list[Part]:
    """Encode requests into gzip JSON Lines parts at once (see `PartsBuilder`)."""
    builder = PartsBuilder(env, namer, max_records, max_bytes)
    filled = builder.add(list(entries))
    return sorted(filled + builder.finish(), key=_hour_of)


def _hour_of(part: Part) -> str:
    return part.key.rsplit("/", 1)[0]
