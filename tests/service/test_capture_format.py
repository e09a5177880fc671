"""The capture's records and part format, compared whole: every field of every record of a
batch as the README's *Prediction capture* lists them, the part's bytes (gzip, RFC 1952)
and key layout, and the names the readers and the compactor tell apart."""

from __future__ import annotations

import gzip
import itertools
import os
import re
import socket
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.capture import partformat
from service.capture import records as capture_records
from service.capture.records import (
    PartNamer,
    PartsBuilder,
    Pending,
    build_records,
    encode_parts,
    iso_time,
    lines_of,
    new_id,
    quoted_new_ids,
    record_lines,
)
from service.model import ModelInfo

MODEL = ModelInfo("mnist-8", "3f2a9c1b0d4e", "ab" * 32)
MODEL_FIELDS = {"name": "mnist-8", "version": "3f2a9c1b0d4e", "sha256": "ab" * 32}
ANSWERED = 1_764_500_000.5  # 2025-11-30T10:53:20.500Z
TIME = "2025-11-30T10:53:20.500Z"


def batch_scores(rows: int) -> np.ndarray:
    """Rows of distinct values (exact in binary), row r's highest at column 3r+1 mod 10."""
    values = np.arange(rows * 10, dtype=np.float32).reshape(rows, 10) / 4
    for row in range(rows):
        values[row, (3 * row + 1) % 10] = 100.0 + row
    return values


def expected_record(request_id: str, row: int, rows: int, env: str, route: str) -> dict:
    scores = batch_scores(rows)[row].tolist()
    return {
        "id": request_id if rows == 1 else f"{request_id}-{row}",
        "request_id": request_id,
        "row": row,
        "time": TIME,
        "env": env,
        "route": route,
        "model": MODEL_FIELDS,
        "prediction": (3 * row + 1) % 10,
        "scores": scores,
        "latency_ms": 12.5,
    }


def decoded(lines: list[bytes]) -> list[dict]:
    return [orjson.loads(line) for line in lines]


# -- records --------------------------------------------------------------------------


def test_every_field_of_every_row_of_a_batch_is_that_rows():
    entry = Pending(ANSWERED, "/v2/infer", "req-9", MODEL, batch_scores(3), None, 0.0125)
    expected = [expected_record("req-9", row, 3, "staging", "/v2/infer") for row in range(3)]
    assert decoded(list(record_lines(entry, "staging"))) == expected
    assert decoded(lines_of([entry], "staging")) == expected
    # The dicts themselves (numpy scores compared as lists).
    records = list(build_records(entry, "staging"))
    assert [{**r, "scores": r["scores"].tolist()} for r in records] == expected


def test_a_batch_with_inputs_carries_each_rows_inputs_and_shape_beside_every_other_field():
    inputs = np.arange(3 * 1 * 2 * 2, dtype=np.float32).reshape(3, 1, 2, 2) / 2
    entry = Pending(ANSWERED, "/predict", "req-9", MODEL, batch_scores(3), inputs, 0.0125)
    expected = [
        {
            **expected_record("req-9", row, 3, "prod", "/predict"),
            "inputs": inputs[row].reshape(-1).tolist(),
            "input_shape": [1, 2, 2],
        }
        for row in range(3)
    ]
    assert decoded(list(record_lines(entry, "prod"))) == expected
    assert decoded(lines_of([entry], "prod")) == expected


def test_single_images_encoded_together_keep_every_field_their_own():
    entries = [
        Pending(ANSWERED, route, f"one-{i}", MODEL, batch_scores(i + 1)[i : i + 1], None, 0.0125)
        for i, route in enumerate(["/predict", "/v2/infer", "/predict"])
    ]
    expected = []
    for i, route in enumerate(["/predict", "/v2/infer", "/predict"]):
        record = expected_record(f"one-{i}", 0, 1, "dev", route)
        record["scores"] = batch_scores(i + 1)[i].tolist()
        record["prediction"] = (3 * i + 1) % 10
        expected.append(record)
    assert decoded(lines_of(entries, "dev")) == expected


def test_a_row_whose_scores_hold_a_nan_has_a_null_prediction_on_every_path():
    """A NaN (or an infinity) is written null among the scores; a row holding a NaN has no
    class (null), one holding an infinity keeps its argmax: in a batch, and in a run of
    single images encoded a column at a time."""
    scores = batch_scores(3)
    scores[0, 5] = np.nan  # after its largest score: still no class
    scores[2, 0] = np.inf
    entry = Pending(ANSWERED, "/v2/infer", "req-9", MODEL, scores, None, 0.0125)
    expected = [expected_record("req-9", row, 3, "dev", "/v2/infer") for row in range(3)]
    expected[0]["prediction"], expected[0]["scores"][5] = None, None
    expected[2]["prediction"], expected[2]["scores"][0] = 0, None
    assert decoded(list(record_lines(entry, "dev"))) == expected
    assert decoded(lines_of([entry], "dev")) == expected
    singles = [
        Pending(ANSWERED, "/v2/infer", f"one-{row}", MODEL, scores[row : row + 1], None, 0.0125)
        for row in range(3)
    ]
    lines = decoded(lines_of(singles, "dev"))
    assert [line["prediction"] for line in lines] == [None, 4, 0]
    assert [line["scores"] for line in lines] == [record["scores"] for record in expected]


def test_single_images_of_other_models_and_routes_in_one_run_are_written_as_alone():
    """A run encoded together gives each request the lines it gets encoded alone, byte
    for byte, when the model or route changes inside the run (and back), and when a route
    is an equal string that is not the same object."""
    other = ModelInfo("mnist-12", "77", "cd" * 32)
    kinds = [
        ("/predict", MODEL),
        ("/v2/infer", MODEL),
        ("/predict", other),
        ("".join(["/pre", "dict"]), MODEL),
        ("/predict", MODEL),
    ]
    entries = [
        Pending(ANSWERED + i / 7, route, f"k{i}", model, batch_scores(1), None, 0.001 * i)
        for i, (route, model) in enumerate(kinds)
    ]
    assert lines_of(entries, "dev") == [
        line for entry in entries for line in record_lines(entry, "dev")
    ]


def test_a_run_of_given_and_generated_ids_and_other_dtypes_or_shapes_is_written_as_alone():
    """Single images encoded a column at a time keep each request's own id (given ones
    as given, the others generated and distinct), and a run whose scores differ in dtype
    or shape, or hold a scalar, gives each request the bytes it gets encoded alone."""
    entries = [
        Pending(ANSWERED + i / 3000, "/predict", request_id, MODEL, batch_scores(1), None, 0.0004)
        for i, request_id in enumerate(["given-0", None, "", "given-3", None])
    ]
    records = decoded(lines_of(entries, "dev"))
    assert [r["id"] for r in records][0::3] == ["given-0", "given-3"]
    generated = [records[i]["id"] for i in (1, 2, 4)]
    assert len(set(generated)) == 3 and all(uuid.UUID(g).version == 4 for g in generated)
    assert [r["request_id"] for r in records] == [r["id"] for r in records]
    assert [r["time"][-7:] for r in records] == [
        f"{int((ANSWERED + i / 3000) * 1000) % 60000 / 1000:06.3f}Z" for i in range(5)
    ]

    for odd in (
        batch_scores(1).astype(np.float64),
        batch_scores(1).reshape(1, 2, 5),
        np.float32(3.5) * np.ones((), dtype=np.float32),
    ):
        mixed = [
            Pending(ANSWERED, "/predict", f"m{i}", MODEL, scores, None, 0.001 * i)
            for i, scores in enumerate([batch_scores(1), odd, batch_scores(1)])
        ]
        assert lines_of(mixed, "dev") == [
            line for entry in mixed for line in record_lines(entry, "dev")
        ]


def test_times_in_a_column_are_those_of_a_record_alone_across_seconds_and_milliseconds():
    """A run's times are made from a second's cached text and a millisecond's: the same
    bytes as `iso_time` alone, at a second's first and last millisecond, across seconds
    and minutes, and for times between two milliseconds (truncated, not rounded)."""
    second = ANSWERED - 0.5  # 10:53:20.000
    offsets = [0, 0.0005, 0.001, 0.12345678, 0.9989, 0.999, 0.9995, 1 - 1e-9, 1, 39.999, 40]
    entries = [
        Pending(second + offset, "/predict", f"t{i}", MODEL, batch_scores(1), None, 0.001)
        for i, offset in enumerate(offsets)
    ]
    assert lines_of(entries, "dev") == [
        line for entry in entries for line in record_lines(entry, "dev")
    ]
    assert [r["time"] for r in decoded(lines_of(entries, "dev"))] == [
        iso_time(entry.answered_at) for entry in entries
    ]


def test_records_without_a_request_id_get_distinct_version_4_ids_past_a_block():
    """Ids are made in blocks of 1,024; 2,500 anonymous records span three blocks."""
    entries = [
        Pending(ANSWERED, "/predict", None, MODEL, batch_scores(1), None, 0) for _ in range(2500)
    ]
    records = decoded(lines_of(entries, "dev"))
    ids = [record["id"] for record in records]
    assert len(set(ids)) == len(ids) == 2500
    for record in records:
        parsed = uuid.UUID(record["id"])
        assert str(parsed) == record["id"] == record["request_id"]
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_ids_are_handed_out_as_many_as_asked_and_every_random_digit_varies():
    """Exactly `count` ids a call, never one twice; over 2,500 ids each of the 30 random
    hex digits takes all 16 values, the version digit is always 4 and the variant digit
    takes each of 8, 9, a and b (RFC 9562 section 4.1, 5.4): no random bit is fixed or
    copied from another."""
    batches = [quoted_new_ids(count) for count in (1, 3, 1024, 1472)]
    assert [len(batch) for batch in batches] == [1, 3, 1024, 1472]
    texts = [quoted[1:-1].decode() for batch in batches[2:] for quoted in batch]
    assert len(set(texts)) == 2496
    digits = [text.replace("-", "") for text in texts]
    for position in range(32):
        seen = {digit[position] for digit in digits}
        if position == 12:
            assert seen == {"4"}
        elif position == 16:
            assert seen == set("89ab")
        else:
            assert len(seen) == 16, position
    for first, second in itertools.combinations(range(32), 2):  # no digit copies another
        assert any(digit[first] != digit[second] for digit in digits), (first, second)


def test_the_id_stock_is_refilled_a_slice_sized_block_at_a_time(monkeypatch):
    """The slice that empties the id stock makes the next block on the event loop: a block
    is 256 ids (about 35 us), not the 1,024 whose making held the loop three to five times
    a slice's length once every 32 slices; a call asking for more than the stock holds
    makes exactly that many."""
    made = []
    make = capture_records._quoted_uuids

    def counted(count: int) -> list[bytes]:
        made.append(count)
        return make(count)

    monkeypatch.setattr(capture_records, "_quoted_uuids", counted)
    monkeypatch.setattr(capture_records, "_id_stock", [])
    singles = [quoted_new_ids(1) for _ in range(257)]
    many = quoted_new_ids(600)
    assert made == [256, 256, 600]
    assert len({quoted for batch in [*singles, many] for quoted in batch}) == 857


def test_a_request_with_a_scalar_output_is_one_record():
    entry = Pending(ANSWERED, "/predict", "s", MODEL, np.float32(3.5) * np.ones(()), None, 0)
    assert entry.rows == 1


def test_a_forked_child_never_hands_out_its_parents_ids():
    """The id stock is the process's: a child forked after ids were made empties the stock
    it inherited (os.register_at_fork), so it cannot repeat the parent's next ids."""
    new_id()  # the parent holds a stock now
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's side
        os.write(writer, " ".join(new_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        childs = pipe.read().decode().split()
    os.waitpid(child, 0)
    parents = [new_id() for _ in range(5)]
    assert len(childs) == 5 and not set(childs) & set(parents)


def test_latency_is_in_milliseconds_rounded_to_the_microsecond_on_every_path():
    latencies = [0.0123456, 0.0004444, 1.23456789]
    singles = [
        Pending(ANSWERED, "/predict", f"s{i}", MODEL, batch_scores(1), None, seconds)
        for i, seconds in enumerate(latencies)
    ]
    expected = [12.346, 0.444, 1234.568]
    assert [r["latency_ms"] for r in decoded(lines_of(singles, "dev"))] == expected
    assert [
        r["latency_ms"] for entry in singles for r in decoded(list(record_lines(entry, "dev")))
    ] == expected
    batch = Pending(ANSWERED, "/predict", "b", MODEL, batch_scores(2), None, 0.0123456)
    assert [r["latency_ms"] for r in decoded(lines_of([batch], "dev"))] == [12.346, 12.346]


def test_a_part_filled_over_several_slices_stops_at_max_records():
    entries = [
        Pending(ANSWERED, "/predict", f"r{i}", MODEL, batch_scores(1), None, 0.001)
        for i in range(7)
    ]
    builder = PartsBuilder("dev", PartNamer(), max_records=5, max_bytes=1 << 20)
    assert builder.add(entries[:3]) == []
    (filled,) = builder.add(entries[3:])  # the first part fills here, and is handed out
    parts = [filled, *builder.finish()]
    assert [p.records for p in parts] == [5, 2]
    ids = [[r["id"] for r in partformat.decode(p.body)] for p in parts]
    assert ids == [["r0", "r1", "r2", "r3", "r4"], ["r5", "r6"]]


def test_a_part_closes_once_its_json_reaches_max_bytes():
    entries = [
        Pending(ANSWERED, "/predict", f"r{i}", MODEL, batch_scores(1), None, 0.001)
        for i in range(5)
    ]
    lines = lines_of(entries, "dev")
    size = len(lines[0])
    assert all(len(line) == size for line in lines)
    for max_bytes, records in ((2 * size, [2, 2, 1]), (2 * size + 1, [3, 2])):
        parts = encode_parts(entries, "dev", PartNamer(), max_bytes=max_bytes)
        assert [p.records for p in parts] == records
        assert b"".join(partformat.decompress(p.body) for p in parts) == b"".join(lines)


@pytest.mark.parametrize(
    ("max_records", "max_lines_of_bytes"),
    [(4, None), (2, None), (None, 2.5), (None, 1), (3, 2.5), (2, 0.5)],
)
def test_parts_cut_at_their_bounds_hold_every_line_once_in_order(max_records, max_lines_of_bytes):
    """Slices of single images and of a batch added one at a time, into parts bounded by
    records, by JSON bytes (in lines of a single image's size), or both, the last slice
    filling several parts: the parts' text is every line once, in order, and each part
    closed before the end is full, by its records or by its bytes, its last line the one
    that reached the bound."""
    singles = [
        Pending(ANSWERED, "/predict", f"r{i}", MODEL, batch_scores(1), None, 0.001)
        for i in range(20)
    ]
    batch = Pending(ANSWERED, "/v2/infer", "batch", MODEL, batch_scores(3), None, 0.002)
    slices = [singles[:3], [batch, *singles[3:5]], singles[5:]]
    line = len(lines_of(singles[:1], "dev")[0])
    records_bound = max_records or 10_000
    bytes_bound = int(max_lines_of_bytes * line) if max_lines_of_bytes else 1 << 20
    builder = PartsBuilder("dev", PartNamer(), max_records=records_bound, max_bytes=bytes_bound)
    parts = [part for piece in slices for part in builder.add(piece)] + builder.finish()
    texts = [partformat.decompress(part.body) for part in parts]
    expected = [line for piece in slices for line in lines_of(piece, "dev")]
    assert b"".join(texts) == b"".join(expected)
    assert [part.records for part in parts] == [text.count(b"\n") for text in texts]
    assert sum(part.records for part in parts) == 23
    for part, text in zip(parts[:-1], texts[:-1], strict=True):
        last = len(text.splitlines(keepends=True)[-1])
        assert part.records == records_bound or len(text) - last < bytes_bound <= len(text)
    assert all(0 < part.records <= records_bound for part in parts)


def test_parts_come_out_ordered_by_hour_whatever_the_order_of_their_records():
    late = Pending(ANSWERED + 3600, "/predict", "late", MODEL, batch_scores(1), None, 0.001)
    early = Pending(ANSWERED, "/predict", "early", MODEL, batch_scores(1), None, 0.001)
    parts = encode_parts([late, early], "dev", PartNamer())
    assert [p.key[:18] for p in parts] == ["dev/2025/11/30/10/", "dev/2025/11/30/11/"]
    assert [partformat.decode(p.body)[0]["id"] for p in parts] == ["early", "late"]


def test_a_slice_that_cannot_be_encoded_leaves_no_record_of_it_in_any_part():
    """Every line of a slice is made before any is compressed: a slice whose second hour
    cannot be encoded (complex scores: no JSON number) adds nothing, and the parts before
    it are whole."""
    builder = PartsBuilder("dev", PartNamer())
    kept = Pending(ANSWERED, "/predict", "kept", MODEL, batch_scores(1), None, 0.001)
    assert builder.add([kept]) == []
    good = Pending(ANSWERED, "/predict", "first-hour", MODEL, batch_scores(1), None, 0.001)
    bad_scores = batch_scores(1).astype(np.complex64)
    bad = Pending(ANSWERED + 3600, "/predict", "next-hour", MODEL, bad_scores, None, 0.001)
    with pytest.raises(TypeError):
        builder.add([good, bad])
    (part,) = builder.finish()
    assert [r["id"] for r in partformat.decode(part.body)] == ["kept"]


def test_parts_come_out_ordered_by_hour_when_a_later_hours_part_fills_first():
    late = [
        Pending(ANSWERED + 3600, "/predict", f"late-{i}", MODEL, batch_scores(1), None, 0.001)
        for i in range(2)
    ]
    early = Pending(ANSWERED, "/predict", "early", MODEL, batch_scores(1), None, 0.001)
    parts = encode_parts([*late, early], "dev", PartNamer(), max_records=2)
    assert [p.key[:18] for p in parts] == ["dev/2025/11/30/10/", "dev/2025/11/30/11/"]
    assert [p.records for p in parts] == [1, 2]


def test_no_requests_make_no_lines_and_no_parts():
    assert lines_of([], "dev") == []
    assert encode_parts([], "dev", PartNamer()) == []


def test_a_part_is_named_by_its_records_hour_and_the_utc_time_it_was_made(monkeypatch):
    monkeypatch.setenv("TZ", "XYZ-05:30")
    time.tzset()
    monkeypatch.setattr(time, "time", lambda: 1_764_510_123.987)  # 13:42:03.987 UTC
    try:
        namer = PartNamer()
        first, second = namer("dev", ANSWERED), namer("prod", ANSWERED + 7200)
    finally:
        monkeypatch.undo()
        time.tzset()
    pattern = r"20251130T134203\.987Z-[A-Za-z0-9.-]+-(\d+)-[0-9a-f]{8}-(\d{6})\.jsonl\.gz"
    assert first.startswith("dev/2025/11/30/10/")
    assert second.startswith("prod/2025/11/30/12/")
    found = [re.fullmatch(pattern, key.split("/")[-1]) for key in (first, second)]
    assert [m.group(2) for m in found] == ["000001", "000002"]
    assert {int(m.group(1)) for m in found} == {os.getpid()}


@pytest.mark.parametrize(
    ("hostname", "host"),
    [
        ("web_01.example.com", "web-01.example.com"),  # outside [A-Za-z0-9.-]: "-"
        ("-edge-", "edge"),
        ("XX" + "a" * 43 + "_", "XX" + "a" * 38),  # 40 characters at most
        ("__", "host"),  # nothing left
    ],
)
def test_a_part_name_carries_the_host_name_made_safe_for_a_key(monkeypatch, hostname, host):
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    name = PartNamer()("dev", ANSWERED).split("/")[-1]
    pattern = rf"\d{{8}}T\d{{6}}\.\d{{3}}Z-(.+)-{os.getpid()}-[0-9a-f]{{8}}-000001\.jsonl\.gz"
    assert re.fullmatch(pattern, name).group(1) == host


def test_scores_not_contiguous_in_memory_are_written_as_their_values():
    """A strided or column-major batch (a view the model's output may be) gives the same
    lines as its contiguous copy."""
    values = batch_scores(3)
    for view in (np.asfortranarray(values), np.concatenate([values, values], axis=1)[:, :10]):
        assert not view.flags.c_contiguous
        entry = Pending(ANSWERED, "/predict", "req-9", MODEL, view, None, 0.0125)
        copy = Pending(ANSWERED, "/predict", "req-9", MODEL, values.copy(), None, 0.0125)
        assert list(record_lines(entry, "dev")) == list(record_lines(copy, "dev"))
        assert decoded(list(record_lines(entry, "dev"))) == [
            expected_record("req-9", row, 3, "dev", "/predict") for row in range(3)
        ]


def test_a_generated_id_is_a_random_version_4_uuid():
    ids = [new_id() for _ in range(200)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
    anonymous = Pending(ANSWERED, "/predict", None, MODEL, batch_scores(1), None, 0)
    (record,) = decoded(list(record_lines(anonymous, "dev")))
    assert uuid.UUID(record["id"]).version == 4 and record["request_id"] == record["id"]


def test_the_queue_counts_a_request_at_its_estimated_json_size():
    """The estimate the queue's byte bound (max_part_bytes) adds up: 240 bytes a row, 12 a
    score and 8 an input value; the JSON written is of that order."""
    alone = Pending(ANSWERED, "/predict", "r", MODEL, batch_scores(1), None, 0.001)
    assert (alone.rows, alone.estimated_bytes) == (1, 240 + 12 * 10)
    inputs = np.zeros((3, 1, 28, 28), dtype=np.float32)
    batch = Pending(ANSWERED, "/predict", "r", MODEL, batch_scores(3), inputs, 0.001)
    assert (batch.rows, batch.estimated_bytes) == (3, 240 * 3 + 12 * 30 + 8 * 3 * 784)
    written = sum(len(line) for line in record_lines(batch, "dev"))
    assert batch.estimated_bytes / 2 < written < batch.estimated_bytes * 2


def test_a_part_holds_at_most_ten_thousand_records_by_default():
    entries = [
        Pending(ANSWERED, "/predict", f"r{i}", MODEL, batch_scores(1), None, 0.001)
        for i in range(10_001)
    ]
    parts = encode_parts(entries, "dev", PartNamer())
    assert [part.records for part in parts] == [10_000, 1]
    builder = PartsBuilder("dev", PartNamer())
    assert [part.records for part in builder.add(entries)] == [10_000]
    assert [part.records for part in builder.finish()] == [1]
    assert [partformat.count(part.body) for part in parts] == [10_000, 1]


# -- the part format ------------------------------------------------------------------


def test_a_part_is_one_deterministic_gzip_member_of_json_lines():
    lines = [b'{"a":1}\n', b'{"b":[2,3]}\n']
    body = partformat.encode(lines)
    # RFC 1952: magic 1f 8b, CM 8 (deflate), no flags, MTIME 0; then the data.
    assert body[:4] == b"\x1f\x8b\x08\x00" and body[4:8] == b"\x00\x00\x00\x00"
    assert body == partformat.encode(lines)
    assert gzip.decompress(body) == b"".join(lines)
    assert partformat.decode(body) == [{"a": 1}, {"b": [2, 3]}]
    assert partformat.lines(body) == lines
    assert partformat.count(body) == 2


def test_a_member_writes_a_deflate_block_out_at_least_every_192_kib_of_records():
    """ISA-L writes a block out in the call that fills its token buffer, the longest call of
    a part's compression: the buffer is sized (GZIP_MEM_LEVEL) so that a block holds about
    140 KiB of these single-image records (ISA-L's default buffer: about 500 KiB)."""
    rng = np.random.default_rng(7)
    member = partformat.GzipMember()
    since_block, longest, blocks = 0, 0, 0
    for piece in range(24):  # slices of 64 records, about 28 KiB of JSON each
        scores = rng.standard_normal((64, 1, 10)).astype(np.float32)
        entries = [
            Pending(ANSWERED + piece, "/predict", None, MODEL, row, None, 0.0125) for row in scores
        ]
        data = b"".join(lines_of(entries, "dev"))
        since_block += len(data)
        if member.add(data):
            longest, since_block, blocks = max(longest, since_block), 0, blocks + 1
    assert blocks >= 3
    assert longest <= 192 * 1024
    assert partformat.count(member.finish()) == 24 * 64


def test_merged_members_read_as_every_record_in_order():
    first = partformat.encode([b'{"n":1}\n', b'{"n":2}\n'])
    big = partformat.encode(
        [orjson.dumps({"n": n, "pad": "x" * 200}) + b"\n" for n in range(3, 800)]
    )
    merged = partformat.merge([first, big, first])
    assert merged == first + big + first
    numbers = [record["n"] for record in partformat.decode(merged)]
    assert numbers == [1, 2, *range(3, 800), 1, 2]
    assert partformat.count(merged) == len(numbers)
    assert partformat.decompress(merged) == gzip.decompress(merged)


def test_a_member_larger_than_a_read_is_read_whole():
    """Members of incompressible records, each spanning several of the reader's chunks."""
    rng = np.random.default_rng(5)
    records = [{"n": n, "pad": rng.bytes(600).hex()} for n in range(400)]
    body = partformat.encode(orjson.dumps(r) + b"\n" for r in records)
    assert len(body) > 3 * (1 << 16)
    merged = partformat.merge([body, body])
    assert partformat.decompress(merged) == gzip.decompress(merged)
    assert partformat.decode(merged) == records + records
    assert partformat.count(merged) == 800


def test_lines_are_cut_at_newlines_only():
    lines = [b'{"id":"a b\\tc","route":"/predict"}\n', b'{"id":"\xc2\xa0 "}\n']
    body = partformat.encode(lines)
    assert partformat.lines(body) == lines
    assert partformat.decode(body) == [{"id": "a b\tc", "route": "/predict"}, {"id": "\u00a0 "}]
    assert partformat.count(body) == 2


def test_an_empty_object_holds_no_records():
    assert partformat.decompress(b"") == b""
    assert (partformat.decode(b""), partformat.count(b""), partformat.lines(b"")) == ([], 0, [])


CUT_SHORT = "Compressed file ended before the end-of-stream marker was reached"


def test_a_body_that_is_not_gzip_or_cut_short_is_refused_with_the_cause():
    body = partformat.encode([b'{"n":1}\n'])
    not_gzip = r"^not gzip: Error -4 Invalid gzip/zlib wrapper found$"  # ISA-L's words
    with pytest.raises(gzip.BadGzipFile, match=not_gzip):
        partformat.decode(b"plain text, not gzip")
    # zlib's own wrapper (RFC 1950) is not gzip either, first or after a gzip member.
    for other in (zlib.compress(b'{"n":1}\n'), body + zlib.compress(b'{"n":2}\n')):
        with pytest.raises(gzip.BadGzipFile, match=r"^not gzip: "):
            partformat.decode(other)
    for cut in (body[:-6], body[:12], body + body[:12]):
        with pytest.raises(EOFError, match=f"^{CUT_SHORT}$"):
            partformat.decode(cut)
        with pytest.raises(EOFError, match=f"^{CUT_SHORT}$"):
            partformat.count(cut)


def test_the_hour_directory_is_the_utc_hour_whatever_the_hosts_time_zone(monkeypatch):
    monkeypatch.setenv("TZ", "XYZ-05:30")  # POSIX: 5 h 30 ahead of UTC
    time.tzset()
    try:
        hour = datetime(2025, 11, 30, 23, tzinfo=UTC)
        assert partformat.hour_key("dev", hour) == "dev/2025/11/30/23"
        east = hour.astimezone(timezone(timedelta(hours=9)))
        assert partformat.hour_key("dev", east) == "dev/2025/11/30/23"
        assert partformat.hour_prefix("dev", hour.timestamp() + 3599) == "dev/2025/11/30/23"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_the_hour_pattern_reads_the_four_digit_fields_of_the_layout():
    pattern = partformat._hour_pattern()
    assert re.fullmatch(pattern, "2025/11/30/07").groups() == ("2025", "11", "30", "07")
    for other in ("2025/11/30/7", "25/11/30/07", "2025-11-30-07", "2025/11/30"):
        assert re.fullmatch(pattern, other) is None
    assert partformat.projection_format() == "yyyy/MM/dd/HH"


def test_a_key_splits_into_its_utc_hour_and_name():
    hour = datetime(2025, 11, 30, 7, tzinfo=UTC)
    assert partformat.split_key("root/dev/2025/11/30/07/p.jsonl.gz") == (hour, "p.jsonl.gz")
    assert partformat.split_key("dev/2025/11/30/07/p.jsonl.gz") == (hour, "p.jsonl.gz")
    for other in ("dev/2025/11/30/p.jsonl.gz", "dev/2025/11/30/07/", "dev/2025/11/30/07"):
        assert partformat.split_key(other) is None


@pytest.mark.parametrize(
    ("name", "data", "compacted", "manifest"),
    [
        ("20251130T075959.123Z-host-7-0a1b2c3d-000001.jsonl.gz", True, False, False),
        ("compacted-0002-ab12-00.jsonl.gz", True, True, False),
        ("_compacted-0002.json", False, False, True),
        ("_compacted-0002.jsonl.gz", False, False, False),  # underscore: Athena skips it
        (".part.jsonl.gz", False, False, False),  # a hidden (temporary) file
        ("part.jsonl", False, False, False),
        ("part.json", False, False, False),
        ("compacted-0002.json", False, False, False),
        ("manifest.json", False, False, False),
    ],
)
def test_names_tell_parts_merged_objects_and_manifests_apart(name, data, compacted, manifest):
    assert partformat.is_data(name) is data
    assert partformat.is_compacted(name) is compacted
    assert partformat.is_manifest(name) is manifest


def test_merged_object_and_manifest_names_follow_the_layout():
    assert partformat.compacted_name(2, "ab12", 3) == "compacted-0002-ab12-03.jsonl.gz"
    assert partformat.manifest_name(12) == "_compacted-0012.json"
    assert partformat.manifest_generation("_compacted-0012.json") == 12


_SCORE = st.one_of(
    st.floats(width=32),  # NaN and the infinities included
    st.sampled_from([0.0, -0.0, 1e-45, -3.4028235e38, 3.4028235e38]),
)


@st.composite
def single_image_runs(draw) -> list[Pending]:
    """1 to 12 single-row requests of one model and route: generated scores (NaN, the
    infinities, -0, float32's edges), client ids (any text, or none), answer times across
    second and hour bounds, latencies from 0 to a minute."""
    count = draw(st.integers(1, 12))
    start = draw(st.floats(1_700_000_000, 1_800_000_000))
    entries = []
    for _ in range(count):
        scores = np.array([draw(st.lists(_SCORE, min_size=10, max_size=10))], dtype=np.float32)
        request_id = draw(st.one_of(st.none(), st.text(min_size=1, max_size=20)))
        answered = start + draw(st.floats(0, 7200))
        latency = draw(st.floats(0, 60))
        entries.append(Pending(answered, "/v2/infer", request_id, MODEL, scores, None, latency))
    return entries


@settings(max_examples=200, deadline=None)
@given(entries=single_image_runs())
def test_a_run_encoded_a_column_at_a_time_reads_as_each_record_encoded_alone(entries):
    """The column path (`lines_of` of a run of single images) and each request's own
    record (`build_records`, one orjson call) read back the same, field for field; a
    generated id is random, so only its presence is compared."""
    together = decoded(lines_of(entries, "dev"))
    alone = [
        orjson.loads(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))
        for entry in entries
        for record in build_records(entry, "dev")
    ]
    for line, record, entry in zip(together, alone, entries, strict=True):
        if entry.request_id is None:
            assert uuid.UUID(line.pop("id")).version == 4
            assert line.pop("request_id") and record.pop("id") and record.pop("request_id")
        assert line == record
