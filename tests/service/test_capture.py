"""Prediction capture without the network: records, parts, batching, sampling, spooling."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from falcon import testing

from service.app import create_app
from service.capture import CaptureConfig, CaptureRecorder, build_recorder, partformat
from service.capture.records import (
    PartNamer,
    PartsBuilder,
    Pending,
    build_records,
    decode_part,
    encode_parts,
    lines_of,
    record_lines,
    take_slice,
)
from service.capture.sinks import LocalSink, open_sink
from service.config import ConfigError, Settings
from service.model import ModelInfo

INFO = ModelInfo("mnist-8", "1", "ab" * 32)
KEY = re.compile(
    r"^dev/\d{4}/\d{2}/\d{2}/\d{2}/\d{8}T\d{6}\.\d{3}Z-[A-Za-z0-9.-]+-\d+-[0-9a-f]{8}-\d{6}\.jsonl\.gz$"
)


def scores(rows: int) -> np.ndarray:
    values = np.zeros((rows, 10), dtype=np.float32)
    values[np.arange(rows), np.arange(rows) % 10] = 5.0
    return values


def read_dir(root: Path) -> list[dict]:
    return [
        record for path in root.rglob("*.jsonl.gz") for record in decode_part(path.read_bytes())
    ]


class FlakySink:
    """A sink that fails while `down` is set and can be held (to fill memory)."""

    def __init__(self, root: Path) -> None:
        self._local = LocalSink(root)
        self.url = f"flaky:{root}"
        self.down = False
        self.release = threading.Event()
        self.release.set()
        self.calls = 0

    def put(self, key: str, body: bytes) -> bool:
        self.calls += 1
        self.release.wait(10)
        if self.down:
            raise ConnectionError("the sink is down")
        return self._local.put(key, body)


def config(tmp_path: Path, **overrides) -> CaptureConfig:
    values = dict(
        env="dev",
        spool_dir=tmp_path / "spool",
        flush_seconds=0.05,
        retry_seconds=0.01,
        max_retry_seconds=0.05,
        close_seconds=2.0,
    )
    return CaptureConfig(**{**values, **overrides})


def send(
    recorder: CaptureRecorder,
    requests: int,
    rows: int = 1,
    prefix: str = "r",
    in_flight: int = 0,
) -> None:
    for i in range(requests):
        recorder.record(
            route="/v2/infer",
            request_id=f"{prefix}{i}",
            model=INFO,
            scores=scores(rows),
            inputs=np.full((rows, 1, 2, 2), i, dtype=np.float32),
            latency_seconds=0.002,
            in_flight=in_flight,
        )


def value(metric) -> float:
    return metric._value.get()


def record_predict(recorder: CaptureRecorder, request_id: str, row_scores=None) -> None:
    """One `/predict` of a single image, as the route records it (scores of one row)."""
    recorder.record(
        route="/predict",
        request_id=request_id,
        model=INFO,
        scores=scores(1) if row_scores is None else row_scores,
        inputs=None,
        latency_seconds=0.001,
    )


# -- records and parts ------------------------------------------------------------


def test_each_batch_row_is_a_record_with_the_request_id_suffixed():
    entry = Pending(0.5, "/v2/infer", "abc", INFO, scores(3), None, 0.0042)
    records = list(build_records(entry, "dev"))
    assert [r["id"] for r in records] == ["abc-0", "abc-1", "abc-2"]
    assert [r["prediction"] for r in records] == [0, 1, 2]
    assert [list(r["scores"]) for r in records] == scores(3).tolist()
    first = records[0]
    assert first["request_id"] == "abc" and first["row"] == 0
    assert first["time"] == "1970-01-01T00:00:00.500Z"
    assert first["env"] == "dev" and first["route"] == "/v2/infer"
    assert first["model"] == {"name": "mnist-8", "version": "1", "sha256": "ab" * 32}
    assert first["latency_ms"] == 4.2
    assert "inputs" not in first


def test_scores_of_any_rank_are_one_row_of_scores_per_example():
    """A model whose output is [batch, 1, classes] (V2 records the first output as the
    model gives it): each row's scores flattened and its class their argmax."""
    ranked = np.zeros((2, 1, 10), np.float32)
    ranked[0, 0, 3] = ranked[1, 0, 7] = 1.0
    records = list(build_records(Pending(0, "/v2/infer", "r", INFO, ranked, None, 0), "dev"))
    assert [r["prediction"] for r in records] == [3, 7]
    assert [list(r["scores"]) for r in records] == ranked.reshape(2, 10).tolist()


def test_a_single_row_keeps_its_id_and_no_id_gets_a_uuid():
    (given,) = build_records(Pending(0, "/predict", "req-7", INFO, scores(1), None, 0), "dev")
    assert given["id"] == "req-7"
    (generated,) = build_records(Pending(0, "/predict", None, INFO, scores(1), None, 0), "dev")
    assert re.fullmatch(r"[0-9a-f-]{36}", generated["id"])
    rows = list(build_records(Pending(0, "/predict", None, INFO, scores(2), None, 0), "dev"))
    assert rows[0]["id"] != rows[1]["id"] and rows[0]["request_id"] == rows[1]["request_id"]


@pytest.mark.parametrize(
    ("request_id", "rows", "route", "latency"),
    [
        ("req-7", 1, "/predict", 0.0),
        ('quote "and" back\\slash \u00e9\u2028', 1, "/v2/infer", 0.0123456),
        ("batch", 3, "/v2/infer", 1.5),
        ("wide", 1, "/predict", 12.0),
    ],
)
def test_the_fast_lines_are_exactly_what_orjson_writes_for_the_records(
    request_id, rows, route, latency
):
    entry = Pending(1234.5678, route, request_id, INFO, scores(rows), None, latency)
    expected = b"".join(
        orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
        for r in build_records(entry, "prod")
    )
    lines = b"".join(record_lines(entry, "prod"))
    assert lines == expected
    assert [json.loads(line)["scores"] for line in lines.splitlines()] == scores(rows).tolist()


def test_parts_are_gzip_json_lines_split_by_utc_hour_under_the_key_layout():
    entries = [
        Pending(3600 * 10 + 5, "/predict", "a", INFO, scores(2), np.ones((2, 1, 2, 2)), 0.001),
        Pending(3600 * 11 + 5, "/predict", "b", INFO, scores(1), None, 0.001),
    ]
    parts = encode_parts(entries, "dev", PartNamer())
    assert [p.key[:18] for p in parts] == ["dev/1970/01/01/10/", "dev/1970/01/01/11/"]
    assert all(KEY.match(p.key) for p in parts)
    lines = gzip.decompress(parts[0].body).decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a-0", "a-1"]
    assert json.loads(lines[0])["inputs"] == [1.0] * 4
    assert json.loads(lines[0])["input_shape"] == [1, 2, 2]
    assert [p.records for p in parts] == [2, 1]


def _mixed_entries() -> list[Pending]:
    """Single images of two routes, models and dtypes, ids that need escaping, 3-d scores,
    and among them a batch and a request with inputs."""
    other = ModelInfo("other", "2", "cd" * 32)
    rng = np.random.default_rng(3)
    entries = []
    for i in range(300):
        route = "/predict" if i % 3 else "/v2/infer"
        request_id = None if i % 4 else f'req "{i}" \u00e9\\'
        values = rng.standard_normal((1, 10)).astype(np.float32) * 10.0 ** (i % 7 - 3)
        entries.append(
            Pending(
                3600 * 5 + i * 0.37,
                route,
                request_id,
                INFO if i % 5 else other,
                values,
                None,
                i * 1.1e-5,
            )
        )
    entries[7] = Pending(3600 * 5 + 7, "/predict", "b", INFO, scores(3), None, 0.002)
    entries[9] = Pending(3600 * 5 + 9, "/predict", "c", INFO, scores(1), np.ones((1, 4)), 0.002)
    entries[11] = Pending(
        3600 * 5 + 11, "/predict", "d", INFO, scores(1).reshape(1, 1, 10), None, 0.002
    )
    entries[13] = Pending(
        3600 * 5 + 13, "/predict", "e", INFO, scores(1).astype(np.float64), None, 0.002
    )
    return entries


def test_lines_of_many_requests_are_byte_for_byte_those_of_each_request():
    """The encoding of a run of single images together (one argmax, one dumps) writes
    exactly what record_lines writes for each: uuids aside, generated per record."""
    entries = _mixed_entries()
    expected = [line for entry in entries for line in record_lines(entry, "prod")]
    got = lines_of(entries, "prod")
    named = [i for i, e in enumerate(entries) if e.request_id is not None]
    for dtype in (np.float32, np.float64):
        singles = [
            e for e in entries if e.request_id is not None and e.inputs is None and e.rows == 1
        ]
        singles = [replace(e, scores=e.scores.astype(dtype)) for e in singles]
        assert lines_of(singles, "prod") == [
            line for entry in singles for line in record_lines(entry, "prod")
        ]
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        left, right = orjson.loads(a), orjson.loads(b)
        if left["request_id"] != right["request_id"]:  # a generated id, one per record
            left["id"] = left["request_id"] = right["id"] = right["request_id"] = None
        assert left == right
    assert named


def test_parts_built_a_slice_at_a_time_are_those_built_at_once():
    """Same records in the same parts, split at the same record and byte limits,
    whatever the slices; the gzip member is gzip.compress's."""
    entries = [e for e in _mixed_entries() if e.request_id is not None]
    at_once = encode_parts(entries, "dev", PartNamer(), max_records=20, max_bytes=3000)
    builder = PartsBuilder("dev", PartNamer(), max_records=20, max_bytes=3000)
    sliced = []
    for start in range(0, len(entries), 7):
        sliced += builder.add(entries[start : start + 7])
    sliced += builder.finish()
    assert [p.records for p in sliced] == [p.records for p in at_once]
    # The same records in each part; the bytes may differ (ISA-L's deflate depends on the cut).
    assert [partformat.decompress(p.body) for p in sliced] == [
        partformat.decompress(p.body) for p in at_once
    ]
    assert [p.key[:18] for p in sliced] == [p.key[:18] for p in at_once]
    lines = [line for entry in entries for line in record_lines(entry, "dev")]
    everything = b"".join(partformat.decompress(p.body) for p in at_once)
    assert everything == b"".join(lines)
    assert all(p.records <= 20 for p in at_once) and len(at_once) > 5
    data = b"".join(lines)
    assert gzip.decompress(partformat.encode([data[:100], data[100:]])) == data


def test_the_recorder_encodes_between_requests_a_slice_at_a_time(tmp_path):
    """A backlog of records is encoded a slice at a time with the event loop's other work
    in between: between two turns of another task at most ENCODE_SLICE_ROWS records leave
    the queue. Parts fill meanwhile (100 records each); every record is counted once, in
    the queue, the open part, a part in memory or the sink, and stored once."""
    from service.capture import recorder as recorder_module

    slice_rows = recorder_module.ENCODE_SLICE_ROWS
    recorder = CaptureRecorder(
        LocalSink(tmp_path), CaptureConfig("dev", tmp_path / "spool", max_part_records=100)
    )

    def accounted() -> tuple[int, int, int]:
        queue = recorder._queue
        in_memory = sum(part.records for part in recorder._pending)
        return (
            recorder._queued_rows - sum(entry.rows for entry in queue),
            recorder._queued_bytes - sum(entry.estimated_bytes for entry in queue),
            len(queue) + recorder._open_rows + in_memory + int(value(recorder.metrics.written)),
        )

    async def scenario() -> tuple[list[int], list[tuple[int, int, int]], int]:
        for i in range(1000):  # queued before the encoder starts: one backlog
            record_predict(recorder, f"r{i}")
        queued: list[int] = []
        books: list[tuple[int, int, int]] = []
        await recorder.start()
        while len(recorder._queue) >= slice_rows and len(queued) < 10_000:
            queued.append(len(recorder._queue))  # one sample a turn of the event loop
            books.append(accounted())
            await asyncio.sleep(0)
        left = len(recorder._queue)
        await recorder.close()
        return queued, books, left

    queued, books, left = asyncio.run(scenario())
    assert left < slice_rows
    steps = [before - after for before, after in itertools.pairwise(queued)]
    assert max(steps) == slice_rows  # a slice a turn, never more
    assert len(queued) >= 1000 // slice_rows - 1
    assert set(books) == {(0, 0, 1000)}
    assert sorted(r["id"] for r in read_dir(tmp_path)) == sorted(f"r{i}" for i in range(1000))


def test_slices_are_cut_by_rows_so_a_large_request_never_shares_a_long_one():
    """The encoder's slices hold about ENCODE_SLICE_ROWS records, counted in rows: each
    ends once it reaches the count, whole requests in order, each once."""

    def pending(rows: int) -> Pending:
        return Pending(0.0, "/predict", None, INFO, scores(rows), None, 0.001)

    def slices(entries: list[Pending]) -> list[list[Pending]]:
        queue = deque(entries)
        taken = []
        while queue:
            taken.append(take_slice(queue, 32).entries)
        return taken

    singles = [pending(1) for _ in range(70)]
    assert [len(s) for s in slices(singles)] == [32, 32, 6]
    assert list(itertools.chain.from_iterable(slices(singles))) == singles
    mixed = [pending(1), pending(1), pending(256), pending(1), pending(40), pending(3)]
    assert [[e.rows for e in s] for s in slices(mixed)] == [[1, 1, 256], [1, 40], [3]]
    assert take_slice(deque(), 32) == ([], 0, 0)


def test_part_names_never_repeat_within_or_across_processes():
    first, second = PartNamer(), PartNamer()
    names = {first("dev", 0) for _ in range(1000)} | {second("dev", 0) for _ in range(1000)}
    assert len(names) == 2000


def test_the_local_sink_never_overwrites_a_part(tmp_path):
    sink = open_sink(f"file://{tmp_path}")
    assert sink.put("dev/x.jsonl.gz", b"first") is True
    assert sink.put("dev/x.jsonl.gz", b"second") is False
    assert (tmp_path / "dev/x.jsonl.gz").read_bytes() == b"first"
    assert [p.name for p in (tmp_path / "dev").iterdir()] == ["x.jsonl.gz"]


# -- the recorder ----------------------------------------------------------------------


def test_every_record_reaches_the_sink_in_batches_by_count(tmp_path):
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"), config(tmp_path, max_part_records=10, flush_seconds=30)
    )

    async def scenario():
        await recorder.start()
        send(recorder, 35)
        assert await recorder.wait_idle(5), "count-triggered batches did not flush"
        await recorder.close()

    asyncio.run(scenario())
    records = read_dir(tmp_path / "out")
    assert sorted(r["id"] for r in records) == sorted(f"r{i}" for i in range(35))
    assert len(list((tmp_path / "out").rglob("*.jsonl.gz"))) >= 3


def test_the_age_of_the_queue_triggers_a_part(tmp_path):
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=0.05))

    async def scenario():
        await recorder.start()
        send(recorder, 3)
        await asyncio.sleep(0.5)
        written = read_dir(tmp_path / "out")
        await recorder.close()
        return written

    assert len(asyncio.run(scenario())) == 3


def test_sampling_keeps_the_asked_percentage(tmp_path):
    draws = itertools.cycle([0.05, 0.25, 0.45, 0.65, 0.85])
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"),
        config(tmp_path, sample_percent=40),
        sampler=lambda: next(draws),
    )

    async def scenario():
        await recorder.start()
        send(recorder, 100)
        await recorder.close()

    asyncio.run(scenario())
    assert len(read_dir(tmp_path / "out")) == 40
    assert recorder.metrics.sampled_out._value.get() == 60


def test_inputs_are_captured_only_when_asked(tmp_path):
    for include in (False, True):
        out = tmp_path / str(include)
        recorder = CaptureRecorder(LocalSink(out), config(tmp_path, include_inputs=include))

        async def scenario(recorder=recorder):
            await recorder.start()
            send(recorder, 1)
            await recorder.close()

        asyncio.run(scenario())
        (record,) = read_dir(out)
        assert ("inputs" in record) is include


def test_a_down_sink_spools_and_the_spool_uploads_when_it_returns(tmp_path, caplog):
    sink = FlakySink(tmp_path / "out")
    recorder = CaptureRecorder(sink, config(tmp_path))

    async def scenario():
        await recorder.start()
        sink.down = True
        send(recorder, 20, rows=2)
        await asyncio.sleep(0.4)
        spooled = list((tmp_path / "spool").rglob("*.jsonl.gz"))
        up_while_down = recorder.metrics.sink_up._value.get()
        sink.down = False
        assert await recorder.wait_idle(5)
        await recorder.close()
        return spooled, up_while_down

    with caplog.at_level(logging.INFO, "service.capture"):
        spooled, up_while_down = asyncio.run(scenario())
    assert (up_while_down, recorder.metrics.sink_up._value.get()) == (0, 1)
    # Said once for the outage, however many uploads failed during it.
    down = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert down == [
        f"prediction capture: the sink {sink.url} is unreachable; spooling parts to "
        f"{tmp_path / 'spool'} until it answers again"
    ]
    assert spooled, "nothing was spooled while the sink was down"
    assert len(read_dir(tmp_path / "out")) == 40
    assert not list((tmp_path / "spool").rglob("*.jsonl.gz"))
    metrics = recorder.metrics
    assert metrics.retries._value.get() > 0 and metrics.spooled._value.get() > 0
    assert metrics.written._value.get() == 40 and metrics.dropped._value.get() == 0
    assert "unreachable" in caplog.text and "answers again" in caplog.text


def test_close_leaves_what_it_cannot_upload_spooled_for_the_next_process(tmp_path):
    sink = FlakySink(tmp_path / "out")
    sink.down = True
    first = CaptureRecorder(sink, config(tmp_path, close_seconds=0.3))

    async def shut_down_while_down():
        await first.start()
        send(first, 7)
        await first.close()

    asyncio.run(shut_down_while_down())
    assert not read_dir(tmp_path / "out")
    assert sum(len(decode_part(p.read_bytes())) for p in (tmp_path / "spool").rglob("*.gz")) == 7

    second = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path))

    async def next_start():
        await second.start()
        assert await second.wait_idle(5)
        await second.close()

    asyncio.run(next_start())
    assert sorted(r["id"] for r in read_dir(tmp_path / "out")) == sorted(f"r{i}" for i in range(7))


def test_a_close_that_ends_while_a_part_is_being_spooled_still_leaves_it_spooled(tmp_path):
    """The close's deadline passes while the upload loop writes a part to the spool: the
    part is spooled all the same, once, before close returns."""
    sink = FlakySink(tmp_path / "out")
    sink.down = True
    recorder = CaptureRecorder(sink, config(tmp_path, close_seconds=0.1, upload_attempts=1))
    save = recorder._spool.save

    def slow_save(part):
        time.sleep(0.5)  # a slow disk: the close's deadline passes meanwhile
        return save(part)

    recorder._spool.save = slow_save

    async def shut_down_while_down():
        await recorder.start()
        send(recorder, 7)
        await recorder.close()

    asyncio.run(shut_down_while_down())
    parts = list((tmp_path / "spool").rglob("*.gz"))
    assert [len(decode_part(p.read_bytes())) for p in parts] == [7]


def test_full_memory_spills_to_the_spool_instead_of_dropping(tmp_path):
    sink = FlakySink(tmp_path / "out")
    sink.release.clear()  # the sink hangs: parts pile up in memory
    recorder = CaptureRecorder(sink, config(tmp_path, max_memory_bytes=2_000))

    async def scenario():
        await recorder.start()
        for batch in range(10):
            send(recorder, 10, prefix=f"b{batch}-")
            await asyncio.sleep(0.08)
        spooled = recorder.metrics.spooled._value.get()
        sink.release.set()
        assert await recorder.wait_idle(5)
        await recorder.close()
        return spooled

    assert asyncio.run(scenario()) > 0
    assert len({r["id"] for r in read_dir(tmp_path / "out")}) == 100
    assert recorder.metrics.dropped._value.get() == 0


def test_records_are_dropped_only_when_the_disk_fails_too_and_that_is_loud(tmp_path, caplog):
    (tmp_path / "spool").write_text("a file where the spool directory should be")
    sink = FlakySink(tmp_path / "out")
    sink.down = True
    recorder = CaptureRecorder(sink, config(tmp_path, close_seconds=0.2))

    async def scenario():
        await recorder.start()
        send(recorder, 5)
        await recorder.close()

    with caplog.at_level(logging.CRITICAL, "service.capture"):
        asyncio.run(scenario())
    assert recorder.metrics.dropped._value.get() == 5
    lost = [r.getMessage() for r in caplog.records if "LOST" in r.getMessage()]
    assert len(lost) == 1
    assert lost[0].startswith(
        f"prediction capture LOST 5 records: the sink {sink.url} is down and the spool "
        f"{tmp_path / 'spool'} cannot be written ("
    )
    assert lost[0].endswith("); free the disk or fix its permissions")
    assert "Not a directory" in lost[0]  # the OS's reason, named


# -- settings and the app ------------------------------------------------------------


def test_settings_refuse_an_unknown_capture_url(tmp_path):
    with pytest.raises(ConfigError, match="PREDICTION_LOG_URL='ftp://x'"):
        Settings(model_url="m.onnx", prediction_log_url="ftp://x")
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        Settings(model_url="m.onnx", prediction_log_url="s3://")
    env = {"MODEL_URL": "m.onnx", "PREDICTION_LOG_SPOOL_DIR": str(tmp_path)}
    assert Settings.from_env(env).prediction_log_spool_dir == tmp_path


def test_capture_can_be_switched_off(tmp_path):
    from prometheus_client import CollectorRegistry

    from service.capture import NullRecorder

    off = Settings(model_url="m.onnx", prediction_log_url="off", cache_dir=tmp_path)
    assert isinstance(build_recorder(off, CollectorRegistry()), NullRecorder)
    on = Settings(model_url="m.onnx", prediction_log_url=str(tmp_path), cache_dir=tmp_path)
    recorder = build_recorder(on, CollectorRegistry())
    assert recorder.config.spool_dir == tmp_path / "prediction-spool"


def test_the_app_captures_by_default_and_counts_on_metrics(settings, model, tmp_path):
    local = Settings(
        model_url=settings.model_url,
        model_sha256=settings.model_sha256,
        cache_dir=tmp_path / "cache",
        prediction_log_url=str(tmp_path / "predictions"),
        app_env="dev",
    )
    client = testing.TestClient(create_app(local, model=model))
    assert client.simulate_post("/predict", json={"data": [0] * 784}).status_code == 200
    infer = {
        "id": "v2-1",
        "inputs": [
            {"name": "Input3", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": [0] * 1568}
        ],
    }
    response = client.simulate_post(f"/v2/models/{model.info.name}/infer", json=infer)
    assert response.status_code == 200
    records = read_dir(tmp_path / "predictions" / "dev")
    assert sorted(r["route"] for r in records) == ["/predict", "/v2/infer", "/v2/infer"]
    assert {r["id"] for r in records if r["route"] == "/v2/infer"} == {"v2-1-0", "v2-1-1"}
    assert all(r["model"]["sha256"] == model.info.sha256 for r in records)
    text = client.simulate_get("/metrics").text
    assert "prediction_capture_records_written_total 3.0" in text
    assert "prediction_capture_records_dropped_total 0.0" in text
    # Each app counts on its own registry: a second one in this process starts from zero.
    other = testing.TestClient(create_app(local, model=model))
    assert "prediction_capture_records_written_total 0.0" in other.simulate_get("/metrics").text


def test_removing_a_spooled_part_tidies_its_empty_directories_only(tmp_path):
    from service.capture.spool import Spool

    spool = Spool(tmp_path / "spool")
    first = tmp_path / "spool" / "dev" / "2026" / "01" / "a.jsonl.gz"
    second = tmp_path / "spool" / "dev" / "2026" / "02" / "b.jsonl.gz"
    for path in (first, second):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"part")
    spool.remove(first)
    # 01/ went with its part; 2026/ and dev/ still hold 02/; the spool directory stays.
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "spool").rglob("*")) == [
        "spool/dev",
        "spool/dev/2026",
        "spool/dev/2026/02",
        "spool/dev/2026/02/b.jsonl.gz",
    ]
    spool.remove(second)
    spool.remove(second)  # already gone (another process took it): no error
    assert (tmp_path / "spool").is_dir() and not list((tmp_path / "spool").iterdir())


def test_wait_idle_says_false_while_a_part_is_still_on_its_way(tmp_path):
    sink = FlakySink(tmp_path / "out")
    sink.release.clear()  # the upload hangs until released
    recorder = CaptureRecorder(sink, config(tmp_path))

    async def scenario():
        await recorder.start()
        send(recorder, 3)
        busy = await recorder.wait_idle(0.2)
        sink.release.set()
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return busy, idle

    assert asyncio.run(scenario()) == (False, True)
    assert len(read_dir(tmp_path / "out")) == 3
