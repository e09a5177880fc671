"""The capture recorder's promises counted exactly: what its settings become, what triggers a
part without anyone waiting for it, what each metric and warning says, and a spooled part
another process took first. (tests/service/test_capture.py covers the flow around them.)"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.capture import CaptureRecorder, build_recorder
from service.capture.metrics import CaptureMetrics
from service.capture.recorder import ENCODE_SLICE_ROWS, SLICE_ROWS_PER_REQUEST
from service.capture.records import Part, decode_part
from service.capture.sinks import LocalSink
from service.capture.spool import Spool
from service.config import ConfigError, Settings
from tests.service.test_capture import (
    FlakySink,
    config,
    read_dir,
    record_predict,
    scores,
    send,
    value,
)


def wait_for_files(root: Path, count: int, timeout: float = 10.0) -> int:
    """Parts under `root` once there are `count` (polled, bounded): no one asks the recorder
    to hurry, so what made the part is the trigger under test."""
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        found = len(list(root.rglob("*.jsonl.gz")))
        if found >= count:
            return found
        time.sleep(0.02)
    return found


def hurry(recorder: CaptureRecorder) -> None:
    """Ask the encoder to close its parts now, as wait_idle does, without waiting."""
    recorder._hurry = True
    recorder._wake_encoder()


def wait_for_records(root: Path, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(read_dir(root)) < count:
        time.sleep(0.02)


def test_the_settings_become_the_recorders_config(tmp_path):
    settings = Settings(
        model_url="m.onnx",
        prediction_log_url=str(tmp_path / "out"),
        prediction_log_sample=25.0,
        prediction_log_inputs=True,
        prediction_log_spool_dir=tmp_path / "spool",
        app_env="staging",
        cache_dir=tmp_path,
        stop_timeout_seconds=60,
    )
    recorder = build_recorder(settings, CollectorRegistry())
    assert isinstance(recorder, CaptureRecorder)
    assert recorder.sink.url == str(tmp_path / "out")
    got = recorder.config
    assert (got.env, got.spool_dir, got.sample_percent, got.include_inputs) == (
        "staging",
        tmp_path / "spool",
        25.0,
        True,
    )
    assert got.close_seconds == settings.stop_budget.flush_seconds > 0
    # The metrics are the registry's: a scrape of the app shows them.
    assert value(recorder.metrics.sink_up) == 1


def test_an_unusable_capture_url_is_a_config_error_naming_it(tmp_path, monkeypatch):
    from service.capture import recorder as recorder_module
    from service.capture.sinks import SinkError

    def refuse(url):
        raise SinkError(f"PREDICTION_LOG_URL={url!r}: refused")

    monkeypatch.setattr(recorder_module, "open_sink", refuse)
    settings = Settings(model_url="m.onnx", prediction_log_url=str(tmp_path), cache_dir=tmp_path)
    with pytest.raises(ConfigError) as raised:
        build_recorder(settings, CollectorRegistry())
    assert str(raised.value) == f"PREDICTION_LOG_URL={str(tmp_path)!r}: refused"


@pytest.mark.parametrize(
    ("limits", "requests"),
    [
        pytest.param({"max_part_records": 10}, 5, id="by-records"),  # 5 requests of 2 rows
        # requests of 2 rows: all but the last make a slice encoded into the open part and 6
        # rows queued; the last makes the part's records between the two
        pytest.param(
            {"max_part_records": ENCODE_SLICE_ROWS + 8},
            (ENCODE_SLICE_ROWS + 8) // 2,
            id="by-records-open-and-queued",
        ),
        # 720 estimated bytes a request of 2 rows (240 a row + 12 a score): exactly the bound
        pytest.param({"max_part_bytes": 1_440}, 2, id="by-bytes"),
    ],
)
def test_a_full_queue_becomes_a_part_before_its_flush_time(tmp_path, limits, requests):
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60, **limits)
    )

    async def scenario():
        await recorder.start()
        send(recorder, requests - 1, rows=2)
        await asyncio.sleep(0.2)
        before = len(list((tmp_path / "out").rglob("*.jsonl.gz")))
        send(recorder, 1, rows=2, prefix="last")
        found = await asyncio.to_thread(wait_for_files, tmp_path / "out", 1)
        await recorder.close()
        return before, found >= 1

    assert asyncio.run(scenario()) == (0, True)
    assert len(read_dir(tmp_path / "out")) == 2 * requests


def test_a_slices_worth_of_records_is_encoded_as_it_comes_and_stored_at_the_flush(tmp_path):
    """Records are encoded a slice at a time as they come, not a flush interval's worth at
    once: once ENCODE_SLICE_ROWS rows are queued a slice of them leaves the queue for the
    open part (at exactly a slice's worth, not one more); fewer wait in the queue; the part
    is stored at its flush time (here: when hurried), not before."""
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60))

    async def scenario():
        await recorder.start()
        send(recorder, ENCODE_SLICE_ROWS - 1)
        await asyncio.sleep(0.05)
        below = len(recorder._queue)
        send(recorder, 1, prefix="slice")  # exactly a slice's worth
        for _ in range(200):
            if value(recorder.metrics.captured):
                break
            await asyncio.sleep(0.005)
        exact = (len(recorder._queue), value(recorder.metrics.captured))
        send(recorder, 3, prefix="more")
        await asyncio.sleep(0.05)
        encoded = (len(recorder._queue), value(recorder.metrics.captured))
        stored_before_flush = len(read_dir(tmp_path / "out"))
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return below, exact, encoded, stored_before_flush, idle

    assert asyncio.run(scenario()) == (
        ENCODE_SLICE_ROWS - 1,
        (0, ENCODE_SLICE_ROWS),
        (3, ENCODE_SLICE_ROWS),
        0,
        True,
    )
    assert len(read_dir(tmp_path / "out")) == ENCODE_SLICE_ROWS + 3
    assert value(recorder.metrics.queued) == 0


def test_a_slice_is_due_at_rows_in_proportion_to_the_requests_in_flight(tmp_path):
    """A slice leaves the queue once it holds SLICE_ROWS_PER_REQUEST rows for each request
    in progress as the answers came (not one fewer), at most ENCODE_SLICE_ROWS: a rise in
    the count counts at once, for the records already queued too; a fall counts from the
    next slice on; an answer whose server does not say asks for a whole slice; of more
    than a slice queued at once, one slice leaves and the rest wait. Every record is
    stored exactly once."""
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60))
    one = SLICE_ROWS_PER_REQUEST  # the rows one request in flight asks for
    whole = ENCODE_SLICE_ROWS

    async def settle(expected: float) -> tuple[int, float]:
        """Once `expected` records were captured (or, when nothing is to happen, after a
        short wait): (records still queued, records captured)."""
        for _ in range(200):
            if value(recorder.metrics.captured) >= expected:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        return len(recorder._queue), value(recorder.metrics.captured)

    async def unchanged() -> tuple[int, float]:
        await asyncio.sleep(0.05)
        return len(recorder._queue), value(recorder.metrics.captured)

    async def scenario():
        await recorder.start()
        seen = []
        send(recorder, one - 1, prefix="a", in_flight=1)
        seen.append(await unchanged())  # one row short of a lone request's slice
        send(recorder, 1, prefix="b", in_flight=1)
        seen.append(await settle(one))  # a slice of `one` rows
        send(recorder, 1, prefix="c", in_flight=2)  # asks for 2 * one
        send(recorder, 2 * one - 2, prefix="d", in_flight=1)
        seen.append(await unchanged())
        send(recorder, 1, prefix="e", in_flight=1)
        seen.append(await settle(3 * one))
        send(recorder, 1, prefix="f", in_flight=1000)  # asks for a whole slice
        send(recorder, ENCODE_SLICE_ROWS - 2, prefix="g", in_flight=1)
        seen.append(await unchanged())
        send(recorder, 1, prefix="h", in_flight=1)
        seen.append(await settle(3 * one + ENCODE_SLICE_ROWS))
        send(recorder, one, prefix="i", in_flight=1)  # the fall counts: `one` again
        seen.append(await settle(4 * one + ENCODE_SLICE_ROWS))
        record_predict(recorder, "j")  # no count: the server does not say
        send(recorder, one, prefix="k", in_flight=1)
        seen.append(await unchanged())
        # More than a slice queued at once: a slice leaves, the rest wait for the next
        send(recorder, whole - one + 4, prefix="l", in_flight=1000)
        seen.append(await settle(4 * one + 2 * whole))
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return seen, idle

    seen, idle = asyncio.run(scenario())
    assert seen == [
        (one - 1, 0),
        (0, one),
        (2 * one - 1, one),
        (0, 3 * one),
        (whole - 1, 3 * one),
        (0, 3 * one + whole),
        (0, 4 * one + whole),
        (one + 1, 4 * one + whole),
        (5, 4 * one + 2 * whole),
    ]
    assert idle
    stored = [record["request_id"] for record in read_dir(tmp_path / "out")]
    assert len(stored) == len(set(stored)) == 4 * one + 2 * whole + 5


def test_each_slices_hold_of_the_event_loop_is_observed_once(tmp_path):
    """Two slices' worth of rows queued at once are encoded as two slices, each observed once
    in prediction_capture_encode_seconds; the close's last slice (3 rows) is a third. Each
    holds the loop for the time observed: together no longer than the scenario took."""
    registry = CollectorRegistry()
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"),
        config(tmp_path, flush_seconds=60),
        CaptureMetrics(registry),
    )

    def observed(sample: str) -> float:
        return registry.get_sample_value(f"prediction_capture_encode_seconds_{sample}") or 0.0

    async def scenario():
        await recorder.start()
        send(recorder, 2 * ENCODE_SLICE_ROWS)
        for _ in range(200):
            if observed("count") == 2:
                break
            await asyncio.sleep(0.005)
        two = observed("count")
        send(recorder, 3, prefix="rest")
        await recorder.wait_idle(5)
        await recorder.close()
        return two

    started = time.perf_counter()
    assert asyncio.run(scenario()) == 2
    took = time.perf_counter() - started
    assert observed("count") == 3
    assert 0 < observed("sum") < took
    assert len(read_dir(tmp_path / "out")) == 2 * ENCODE_SLICE_ROWS + 3


def test_the_queue_gauge_counts_the_records_in_the_open_part(tmp_path):
    """Records one at a time, parts of a slice and 8 records: the first part's records close
    it; of the rest, a slice waits encoded in the open part and 6 records in the queue; once
    the first part is stored, the gauge counts all of them as waiting in memory. (The sink
    holds the first part until all records are in: the gauge is set as parts move, not on
    every record.)"""
    part = ENCODE_SLICE_ROWS + 8
    records = part + ENCODE_SLICE_ROWS + 6
    sink = FlakySink(tmp_path / "out")
    sink.release.clear()
    recorder = CaptureRecorder(sink, config(tmp_path, flush_seconds=60, max_part_records=part))

    async def scenario():
        await recorder.start()
        for i in range(records):  # one request at a time, the event loop turning between
            record_predict(recorder, f"r{i}")
            await asyncio.sleep(0)
        sink.release.set()
        for _ in range(2000):  # bounded: 10 s
            if value(recorder.metrics.written) == part:
                break
            await asyncio.sleep(0.005)
        waiting = (len(recorder._queue), recorder._open_rows, value(recorder.metrics.queued))
        await recorder.close()
        return waiting

    assert asyncio.run(scenario()) == (6, ENCODE_SLICE_ROWS, ENCODE_SLICE_ROWS + 6)
    assert len(read_dir(tmp_path / "out")) == records


def test_the_queue_gauge_follows_each_encoded_slice_before_any_part_is_full(tmp_path):
    """A slice's worth of records one at a time, parts of 1,000: the slice is encoded
    into the open part, no part fills, and the gauge already counts the slice."""
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60, max_part_records=1000)
    )

    async def scenario():
        await recorder.start()
        for i in range(ENCODE_SLICE_ROWS):
            record_predict(recorder, f"r{i}")
            await asyncio.sleep(0)
        for _ in range(2000):  # bounded: 10 s
            if recorder._open_rows == ENCODE_SLICE_ROWS:
                break
            await asyncio.sleep(0.005)
        waiting = (recorder._open_rows, value(recorder.metrics.queued))
        await recorder.close()
        return waiting

    assert asyncio.run(scenario()) == (ENCODE_SLICE_ROWS, ENCODE_SLICE_ROWS)
    assert len(read_dir(tmp_path / "out")) == ENCODE_SLICE_ROWS


def test_records_waiting_for_their_part_do_not_pile_up_as_python_objects(tmp_path):
    """Between flushes a busy service queues thousands of records; encoded as they come,
    they are bytes in the open part, not objects the garbage collector walks (a collection
    of the older generations stalls every request in flight)."""
    import gc

    records = 4_000
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60))

    async def scenario():
        await recorder.start()
        await asyncio.sleep(0)
        gc.collect()
        before = len(gc.get_objects())
        for i in range(records):  # one request at a time, the event loop turning between
            record_predict(recorder, f"r{i}")
            await asyncio.sleep(0)
        growth = len(gc.get_objects()) - before
        open_records = recorder._open_rows
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return growth, open_records, idle

    growth, open_records, idle = asyncio.run(scenario())
    assert open_records > records - 2 * ENCODE_SLICE_ROWS
    assert growth < 200  # a few slices' worth at most, not one object a record
    assert idle is True
    assert len(read_dir(tmp_path / "out")) == records


def test_every_counter_and_gauge_after_a_clean_run(tmp_path):
    draws = iter([0.1, 0.9] * 10)
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"),
        config(tmp_path, sample_percent=50, max_part_records=4),
        sampler=lambda: next(draws),
    )

    async def scenario():
        await recorder.start()
        send(recorder, 10, rows=3)  # 5 kept (15 records), 5 sampled out (15 records)
        assert await recorder.wait_idle(5)
        await recorder.close()

    asyncio.run(scenario())
    metrics = recorder.metrics
    assert value(metrics.captured) == 15
    assert value(metrics.sampled_out) == 15
    assert value(metrics.written) == 15
    parts = len(list((tmp_path / "out").rglob("*.jsonl.gz")))
    assert value(metrics.parts_uploaded) == parts >= 4  # at most 4 records a part
    assert (value(metrics.queued), value(metrics.spool_parts)) == (0, 0)
    assert (value(metrics.retries), value(metrics.spooled), value(metrics.dropped)) == (0, 0, 0)


def test_a_sample_draw_at_the_percentage_is_left_out():
    # `random()` < sample/100 keeps a record: exactly at the percentage it is left out.
    recorder = CaptureRecorder(
        FlakySink(Path("/nonexistent")),
        config(Path("/nonexistent"), sample_percent=50),
        sampler=iter([0.5, 0.499]).__next__,
    )
    send(recorder, 2)
    assert value(recorder.metrics.sampled_out) == 1
    assert [entry.request_id for entry in recorder._queue] == ["r1"]


class FailsFirst(FlakySink):
    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    def put(self, key: str, body: bytes) -> bool:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError(f"refused #{self.calls}")
        return self._local.put(key, body)


def test_each_failed_write_is_counted_and_named_with_its_attempt(tmp_path, caplog):
    sink = FailsFirst(tmp_path / "out", failures=2)
    recorder = CaptureRecorder(sink, config(tmp_path, upload_attempts=3))

    async def scenario():
        await recorder.start()
        send(recorder, 1)
        assert await recorder.wait_idle(5)
        await recorder.close()

    with caplog.at_level(logging.WARNING, "service.capture"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"prediction capture: writing to {sink.url} failed (attempt 1 of 3): refused #1",
        f"prediction capture: writing to {sink.url} failed (attempt 2 of 3): refused #2",
    ]
    # The third attempt stored it: nothing spooled, the sink never marked down.
    assert value(recorder.metrics.retries) == 2
    assert (value(recorder.metrics.spooled), value(recorder.metrics.sink_up)) == (0, 1)
    assert len(read_dir(tmp_path / "out")) == 1


def test_a_part_that_fails_every_attempt_is_spooled_after_exactly_those_attempts(tmp_path):
    sink = FailsFirst(tmp_path / "out", failures=2)
    recorder = CaptureRecorder(sink, config(tmp_path, upload_attempts=2))

    async def scenario():
        await recorder.start()
        send(recorder, 1)
        assert await recorder.wait_idle(5)
        await recorder.close()

    asyncio.run(scenario())
    # Two attempts failed and the part went to the spool; the spool's upload then took it.
    assert value(recorder.metrics.spooled) == 1
    assert value(recorder.metrics.retries) == 2
    assert sink.calls == 3
    assert len(read_dir(tmp_path / "out")) == 1


def test_a_start_reports_the_parts_a_previous_process_spooled(tmp_path, caplog):
    spool = Spool(tmp_path / "spool")
    from service.capture.records import PartNamer, Pending, encode_parts
    from tests.service.test_capture import INFO, scores

    namer = PartNamer()
    for i in range(3):
        (part,) = encode_parts(
            [Pending(time.time(), "/predict", f"old{i}", INFO, scores(1), None, 0.001)],
            "dev",
            namer,
        )
        spool.save(part)
    sink = FlakySink(tmp_path / "out")
    sink.release.clear()  # nothing is uploaded while the start is checked
    recorder = CaptureRecorder(sink, config(tmp_path))

    async def scenario():
        with caplog.at_level(logging.INFO, "service.capture"):
            await recorder.start()
            await recorder.start()  # a second start changes nothing
        spooled = value(recorder.metrics.spool_parts)
        sink.release.set()
        assert await recorder.wait_idle(5)
        await recorder.close()
        return spooled

    assert asyncio.run(scenario()) == 3
    started = [r.getMessage() for r in caplog.records if "spooled parts in" in r.getMessage()]
    assert started == [
        f"prediction capture: 3 spooled parts in {tmp_path / 'spool'} will be uploaded to "
        f"{sink.url}"
    ]
    assert sorted(r["id"] for r in read_dir(tmp_path / "out")) == ["old0", "old1", "old2"]
    assert value(recorder.metrics.written) == 3
    assert value(recorder.metrics.spool_parts) == 0


def test_a_spooled_part_another_process_uploaded_first_is_not_counted_again(tmp_path):
    spool = Spool(tmp_path / "spool")
    path = spool.save(Part("dev/2026/11/30/14/x.jsonl.gz", b"not read", 5))
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path))
    # Another process took the part between this one's scan and its upload.
    assert recorder._put_spooled(path.with_name("gone.jsonl.gz")) == 0

    async def scenario():
        await recorder.start()
        path.unlink()
        assert await recorder.wait_idle(5)
        await recorder.close()

    asyncio.run(scenario())
    assert (value(recorder.metrics.written), value(recorder.metrics.parts_uploaded)) == (0, 0)
    assert not list((tmp_path / "out").rglob("*"))


def test_a_close_past_its_time_says_how_many_parts_stay_spooled(tmp_path, caplog):
    sink = FlakySink(tmp_path / "out")
    sink.down = True
    recorder = CaptureRecorder(
        sink, config(tmp_path, close_seconds=0.3, max_part_records=2, upload_attempts=1)
    )

    async def scenario():
        await recorder.start()
        send(recorder, 6)
        await recorder.close()

    with caplog.at_level(logging.WARNING, "service.capture"):
        asyncio.run(scenario())
    late = [r.getMessage() for r in caplog.records if "did not take everything" in r.getMessage()]
    assert late == [
        f"prediction capture: the sink {sink.url} did not take everything within 0 s; "
        f"3 parts stay in the spool {tmp_path / 'spool'}, for the next start on the same storage"
    ]
    assert len(list((tmp_path / "spool").rglob("*.jsonl.gz"))) == 3
    assert value(recorder.metrics.spool_parts) == 3


def test_wait_idle_hurries_the_queue_instead_of_waiting_for_the_flush(tmp_path):
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60))

    async def scenario():
        await recorder.start()
        send(recorder, 3)
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return idle

    assert asyncio.run(scenario()) is True
    assert len(read_dir(tmp_path / "out")) == 3


def test_while_draining_the_spool_is_retried_at_least_every_second(tmp_path):
    """README, stop sequence: with the sink down, the flush retries every second."""
    recorder = CaptureRecorder(LocalSink(tmp_path), config(tmp_path, max_retry_seconds=5.0))
    assert recorder._retry_cap() == 5.0
    recorder._draining = True
    assert recorder._retry_cap() == 1.0
    quick = CaptureRecorder(LocalSink(tmp_path), config(tmp_path, max_retry_seconds=0.5))
    quick._draining = True
    assert quick._retry_cap() == 0.5


def test_the_sink_coming_back_is_said_once_with_the_spooled_parts_left(tmp_path, caplog):
    sink = FlakySink(tmp_path / "out")
    recorder = CaptureRecorder(sink, config(tmp_path))
    recorder._spooled.extend([tmp_path / "a", tmp_path / "b"])
    with caplog.at_level(logging.INFO, "service.capture"):
        recorder._mark_up()  # up already: nothing to say
        recorder._mark_down()
        recorder._mark_up()
        recorder._mark_up()
    back = [r.getMessage() for r in caplog.records if "answers again;" in r.getMessage()]
    assert back == [
        f"prediction capture: the sink {sink.url} answers again; uploading 2 spooled parts"
    ]
    assert value(recorder.metrics.sink_up) == 1


def pending(request_id: str, answered_at: float = 1_764_500_000.0):
    from service.capture.records import Pending
    from tests.service.test_capture import INFO, scores

    return Pending(answered_at, "/predict", request_id, INFO, scores(1), None, 0.001)


def test_parts_in_memory_fill_it_exactly_and_the_next_one_is_spooled(tmp_path):
    from service.capture.records import PartNamer, encode_parts

    (sample,) = encode_parts([pending("a")], "dev", PartNamer())
    size = len(sample.body)  # the same for "b": the body is gzip with mtime 0
    recorder = CaptureRecorder(FlakySink(tmp_path / "out"), config(tmp_path, max_memory_bytes=size))

    async def encode(request_id: str) -> None:
        recorder._queue.append(pending(request_id))
        recorder._queued_rows += 1
        await recorder._encode_queue()

    async def scenario():
        await encode("a")  # exactly the memory bound: kept in memory
        kept = ([p.records for p in recorder._pending], len(recorder._spooled))
        await encode("b")  # one byte more than the bound would hold: spooled
        return kept, [p.records for p in recorder._pending], len(recorder._spooled)

    assert asyncio.run(scenario()) == (([1], 0), [1], 1)
    assert value(recorder.metrics.spooled) == 1
    assert value(recorder.metrics.queued) == 1


def test_a_slice_that_cannot_be_encoded_loses_only_its_own_records(tmp_path, caplog):
    """The records encoded before a slice that fails are stored with their part; only
    the failing slice's records are counted lost."""
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60))

    async def scenario():
        await recorder.start()
        send(recorder, ENCODE_SLICE_ROWS)
        for _ in range(200):
            if not recorder._queue:
                break
            await asyncio.sleep(0.005)
        record_predict(recorder, "complex", scores(1).astype("complex64"))  # no JSON number
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return idle

    with caplog.at_level(logging.CRITICAL, "service.capture"):
        assert asyncio.run(scenario()) is True
    (lost,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert lost.getMessage() == "prediction capture LOST 1 records: encoding failed"
    assert len(read_dir(tmp_path / "out")) == ENCODE_SLICE_ROWS
    assert value(recorder.metrics.dropped) == 1
    assert value(recorder.metrics.written) == ENCODE_SLICE_ROWS


def test_the_slices_after_one_that_cannot_be_encoded_are_stored_at_the_close(tmp_path):
    """A record that cannot be encoded, then three slices' worth, then an immediate
    close: the failing slice is lost and every slice after it is encoded in the same
    pass and stored through the sink before the upload ends, none left to the spool."""
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60))

    async def scenario():
        await recorder.start()
        record_predict(recorder, "complex", scores(1).astype("complex64"))  # no JSON number
        send(recorder, 3 * ENCODE_SLICE_ROWS)
        await recorder.close()

    asyncio.run(scenario())
    kept = 3 * ENCODE_SLICE_ROWS + 1 - ENCODE_SLICE_ROWS  # the failing slice: 1 bad, 31 good
    assert len(read_dir(tmp_path / "out")) == kept
    assert value(recorder.metrics.written) == kept
    assert value(recorder.metrics.dropped) == ENCODE_SLICE_ROWS
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []


def test_records_that_cannot_be_encoded_are_counted_lost_and_logged_with_the_cause(
    tmp_path, monkeypatch, caplog
):
    from service.capture.records import PartsBuilder

    def broken(*args):
        raise ValueError("cannot encode")

    monkeypatch.setattr(PartsBuilder, "add", broken)
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path))

    async def scenario():
        await recorder.start()
        send(recorder, 3, rows=2)
        await recorder.close()

    with caplog.at_level(logging.CRITICAL, "service.capture"):
        asyncio.run(scenario())
    (lost,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert lost.getMessage() == "prediction capture LOST 6 records: encoding failed"
    assert lost.exc_info is not None and str(lost.exc_info[1]) == "cannot encode"
    assert value(recorder.metrics.dropped) == 6
    assert value(recorder.metrics.captured) == 6


def test_a_part_holds_about_max_part_bytes_of_json(tmp_path):
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60, max_part_bytes=1_000)
    )
    send(recorder, 10)  # queued before the start: one batch, encoded at close

    async def scenario():
        await recorder.start()
        await recorder.close()

    asyncio.run(scenario())
    parts = list((tmp_path / "out").rglob("*.jsonl.gz"))
    assert len(parts) >= 3
    assert len(read_dir(tmp_path / "out")) == 10


def test_a_load_that_answers_more_rows_a_turn_than_a_slice_keeps_the_queue_to_a_parts_worth(
    tmp_path,
):
    """Each turn of the event loop answers two requests of 256 rows: one slice a turn would
    leave a request more queued every turn, for as long as the load lasts. Past a part's
    worth (`max_part_bytes` of JSON by the queue's estimate) the encoder keeps the loop
    until the queue is back under, so the queue never holds more than that plus one turn's
    records, and every record still arrives once."""
    rows, turns, bound = 256, 100, 200_000
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60, max_part_bytes=bound)
    )

    async def scenario():
        await recorder.start()
        turn_bytes = peak = 0
        for turn in range(turns):
            before = recorder._queued_bytes
            send(recorder, 2, rows=rows, prefix=f"t{turn}-")
            turn_bytes = max(turn_bytes, recorder._queued_bytes - before)
            peak = max(peak, recorder._queued_bytes)
            await asyncio.sleep(0)
        idle = await recorder.wait_idle(10)
        await recorder.close()
        return turn_bytes, peak, idle

    turn_bytes, peak, idle = asyncio.run(scenario())
    assert turn_bytes == 2 * (240 * rows + 12 * rows * 10)  # the estimate of two requests
    assert peak <= bound + turn_bytes
    assert idle is True
    records = read_dir(tmp_path / "out")
    assert len(records) == len({record["id"] for record in records}) == 2 * turns * rows


def test_wait_idle_is_false_while_the_queue_is_being_encoded(tmp_path, monkeypatch):
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60))
    encode = recorder._encode

    async def scenario():
        hold = asyncio.Event()

        async def held(piece):  # the slice is taken from the queue, its encoding held
            await hold.wait()
            return await encode(piece)

        monkeypatch.setattr(recorder, "_encode", held)
        await recorder.start()
        send(recorder, 4)
        hurry(recorder)
        for _ in range(500):
            if not recorder._queue:
                break
            await asyncio.sleep(0.01)
        busy = await recorder.wait_idle(0.1)
        hold.set()
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return busy, idle

    assert asyncio.run(scenario()) == (False, True)
    assert sum(1 for _ in (tmp_path / "out").rglob("*.jsonl.gz")) == 1


def test_a_part_leaves_the_bytes_count_of_the_queue_at_zero(tmp_path):
    # 360 estimated bytes a one-row request: with a bound of 361, two trigger a part and the
    # third alone must not.
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60, max_part_bytes=361)
    )

    async def scenario():
        await recorder.start()
        send(recorder, 1, prefix="a")
        send(recorder, 1, prefix="b")
        await asyncio.to_thread(wait_for_records, tmp_path / "out", 2)
        send(recorder, 1, prefix="c")
        await asyncio.sleep(0.3)
        after_third = len(read_dir(tmp_path / "out"))
        await recorder.close()
        return after_third

    assert asyncio.run(scenario()) == 2


def test_a_given_answer_time_is_the_records_time(tmp_path):
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path))
    from tests.service.test_capture import INFO, scores

    recorder.record(
        route="/predict",
        request_id="t",
        model=INFO,
        scores=scores(1),
        inputs=None,
        latency_seconds=0.001,
        answered_at=1_764_500_000.25,
    )

    async def scenario():
        await recorder.start()
        await recorder.close()

    asyncio.run(scenario())
    (record,) = read_dir(tmp_path / "out")
    assert record["time"] == "2025-11-30T10:53:20.250Z"


def test_the_background_tasks_are_named_for_a_task_dump(tmp_path):
    recorder = CaptureRecorder(LocalSink(tmp_path / "out"), config(tmp_path))

    async def scenario():
        await recorder.start()
        names = {task.get_name() for task in asyncio.all_tasks()}
        await recorder.close()
        return names

    assert {"capture-batch", "capture-upload"} <= asyncio.run(scenario())


def test_uploaded_parts_free_their_memory_so_a_healthy_sink_never_spools(tmp_path):
    from service.capture.records import PartNamer, encode_parts

    (sample,) = encode_parts([pending("r0")], "dev", PartNamer())
    bound = len(sample.body) * 3 // 2  # room for one part, not two
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"), config(tmp_path, max_memory_bytes=bound)
    )

    async def scenario():
        await recorder.start()
        for i in range(4):
            send(recorder, 1, prefix=f"r{i}-")
            assert await recorder.wait_idle(5)
        await recorder.close()

    asyncio.run(scenario())
    assert value(recorder.metrics.spooled) == 0
    assert recorder._pending_bytes == 0
    assert len(read_dir(tmp_path / "out")) == 4


def test_parts_still_in_memory_at_the_end_of_close_go_to_the_spool(tmp_path):
    sink = FlakySink(tmp_path / "out")
    sink.release.clear()  # the first upload hangs past the close
    recorder = CaptureRecorder(sink, config(tmp_path, close_seconds=0.3, max_part_records=2))

    async def scenario():
        await recorder.start()
        send(recorder, 6)
        await recorder.close()

    asyncio.run(scenario())
    spooled = list((tmp_path / "spool").rglob("*.jsonl.gz"))
    sink.release.set()
    assert sum(len(decode_part(p.read_bytes())) for p in spooled) == 6
    assert recorder._pending_bytes == 0 and not recorder._pending


def test_a_spooled_part_gets_every_attempt_while_the_sink_is_up(tmp_path, caplog):
    from service.capture.records import PartNamer, encode_parts

    (part,) = encode_parts([pending("old")], "dev", PartNamer())
    Spool(tmp_path / "spool").save(part)
    sink = FailsFirst(tmp_path / "out", failures=1)
    recorder = CaptureRecorder(sink, config(tmp_path, upload_attempts=3))

    async def scenario():
        await recorder.start()
        assert await recorder.wait_idle(5)
        await recorder.close()

    with caplog.at_level(logging.INFO, "service.capture"):
        asyncio.run(scenario())
    # One failed write was retried at once: the sink was never taken for down.
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert (value(recorder.metrics.retries), value(recorder.metrics.written)) == (1, 1)


async def _until(condition, polls: int = 500) -> bool:
    """Whether `condition()` holds within `polls` polls 10 ms apart."""
    for _ in range(polls):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def test_a_second_outage_after_the_spool_drained_is_spooled_and_drained_again(tmp_path):
    """The spool's probe delay starts over once the spool drains: a later outage is
    probed and uploaded like the first (the upload loop does not stop)."""
    sink = FlakySink(tmp_path / "out")
    recorder = CaptureRecorder(sink, config(tmp_path))

    async def scenario():
        await recorder.start()
        drained = []
        for outage, prefix in ((1, "a"), (2, "b")):
            sink.down = True
            calls = sink.calls
            send(recorder, 1, prefix=prefix)
            # Its part failed every attempt and went to the spool, and a probe failed too.
            spooled = await _until(
                lambda n=outage, c=calls: (
                    value(recorder.metrics.spooled) == n and sink.calls >= c + 4
                )
            )
            sink.down = False
            drained.append((spooled, await recorder.wait_idle(5)))
        await recorder.close()
        return drained

    assert asyncio.run(scenario()) == [(True, True), (True, True)]
    assert sorted(r["id"] for r in read_dir(tmp_path / "out")) == ["a0", "b0"]
    assert value(recorder.metrics.parts_uploaded) == 2
    assert value(recorder.metrics.written) == 2
    assert value(recorder.metrics.spool_parts) == 0
    assert value(recorder.metrics.sink_up) == 1


def test_the_queue_gauge_counts_a_batch_being_encoded_while_a_part_uploads(tmp_path, monkeypatch):
    """A part stored while the next batch is encoded leaves the queue gauge at that
    batch's rows: they are in memory, neither queued nor in a part yet."""
    sink = FlakySink(tmp_path / "out")
    sink.release.clear()  # the first part's write waits
    recorder = CaptureRecorder(sink, config(tmp_path, flush_seconds=60))
    encode = recorder._encode

    async def scenario():
        hold = asyncio.Event()

        async def held(piece):  # the second slice (3 requests) is held mid-encoding
            if len(piece.entries) == 3:
                await hold.wait()
            return await encode(piece)

        monkeypatch.setattr(recorder, "_encode", held)
        await recorder.start()
        send(recorder, 1, prefix="a")
        hurry(recorder)
        writing = await _until(lambda: sink.calls == 1)
        send(recorder, 3, prefix="b")
        hurry(recorder)
        encoding = await _until(lambda: value(recorder.metrics.captured) == 4)
        sink.release.set()
        stored = await _until(lambda: value(recorder.metrics.written) == 1)
        during = value(recorder.metrics.queued)
        hold.set()
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return writing, encoding, stored, during, idle

    assert asyncio.run(scenario()) == (True, True, True, 3, True)
    assert value(recorder.metrics.queued) == 0
    assert value(recorder.metrics.written) == 4


def test_the_sink_and_the_spool_are_served_by_their_own_named_threads(tmp_path, monkeypatch):
    """A thread dump names the capture's two worker threads: writes to the sink on
    `capture-upload`, the spool's disk work on `capture-disk`."""
    import threading

    seen: dict[str, set[str]] = {"sink": set(), "disk": set()}
    scan = Spool.scan

    def scan_on(spool):
        seen["disk"].add(threading.current_thread().name)
        return scan(spool)

    monkeypatch.setattr(Spool, "scan", scan_on)

    class Watched(LocalSink):
        def put(self, key: str, body: bytes) -> bool:
            seen["sink"].add(threading.current_thread().name)
            return super().put(key, body)

    recorder = CaptureRecorder(Watched(tmp_path / "out"), config(tmp_path))

    async def scenario():
        await recorder.start()
        send(recorder, 2)
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return idle

    assert asyncio.run(scenario()) is True
    assert seen == {"sink": {"capture-upload"}, "disk": {"capture-disk"}}


def test_a_new_recorders_queue_counts_its_bytes_from_zero(tmp_path):
    """A one-row request is estimated at 360 bytes: with a bound of 361 the first request
    of a new recorder does not make a part due, the second does."""
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"), config(tmp_path, flush_seconds=60, max_part_bytes=361)
    )

    async def scenario():
        await recorder.start()
        send(recorder, 1, prefix="a")
        after_one = recorder._part_due()
        send(recorder, 1, prefix="b")
        after_two = recorder._part_due()
        idle = await recorder.wait_idle(5)
        await recorder.close()
        return after_one, after_two, idle

    assert asyncio.run(scenario()) == (False, True, True)
    assert sorted(r["id"] for r in read_dir(tmp_path / "out")) == ["a0", "b0"]


def test_a_failing_write_is_retried_after_doubling_waits_and_not_after_the_last(
    tmp_path, monkeypatch
):
    """`upload_attempts` tries, `retry_seconds` before the second, twice that before the
    third, and no wait after the last one: the schedule, read off the waits asked for."""
    from service.capture import recorder as recorder_module

    sink = FlakySink(tmp_path / "out")
    sink.down = True
    recorder = CaptureRecorder(sink, config(tmp_path, upload_attempts=4, retry_seconds=0.5))
    waits: list[float] = []

    async def recorded_sleep(seconds: float) -> None:
        waits.append(seconds)

    async def scenario() -> object:
        monkeypatch.setattr(recorder_module.asyncio, "sleep", recorded_sleep)
        try:
            part = Part("dev/2026/01/01/00/x.jsonl.gz", b"body", 1)
            return await recorder._upload_with_retries(recorder._put_part, part, attempts=4)
        finally:
            monkeypatch.undo()

    assert asyncio.run(scenario()) is False
    assert waits == [0.5, 1.0, 2.0]
    assert sink.calls == 4
    assert value(recorder.metrics.retries) == 4


def test_the_drained_hook_runs_once_a_parts_worth_is_stored_and_nothing_waits(tmp_path):
    """Called when the queue is empty and everything encoded is stored, after at least
    `max_part_records` records went out since the last call; not before."""
    calls: list[int] = []
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"),
        config(tmp_path, max_part_records=10),
        when_drained=lambda: calls.append(len(read_dir(tmp_path / "out"))),
    )

    async def scenario():
        await recorder.start()
        send(recorder, 3, rows=3)  # 9 records: below a part's worth
        assert await recorder.wait_idle(5)
        await asyncio.sleep(0.1)
        assert calls == []
        send(recorder, 1, rows=3, prefix="more")  # 12 records stored in all
        assert await recorder.wait_idle(5)
        await asyncio.sleep(0.1)
        await recorder.close()

    asyncio.run(scenario())
    assert calls == [12]  # once, with every record already in the sink


def test_the_recorder_the_settings_build_gives_freed_memory_back_when_drained(tmp_path):
    from service.memory import release_free_memory

    settings = Settings(
        model_url="m.onnx", prediction_log_url=str(tmp_path / "out"), cache_dir=tmp_path
    )
    recorder = build_recorder(settings, CollectorRegistry())
    assert recorder._when_drained is release_free_memory


def test_drained_means_nothing_queued_or_encoding_and_a_parts_worth_stored_since_the_last_call(
    tmp_path,
):
    calls: list[int] = []
    recorder = CaptureRecorder(
        LocalSink(tmp_path / "out"),
        config(tmp_path, max_part_records=10),
        when_drained=lambda: calls.append(1),
    )
    recorder._count_uploaded(10)
    send(recorder, 1)  # queued, not yet encoded
    recorder._drained()
    queued = len(calls)
    recorder._queue.clear()
    recorder._encoding_rows = 1  # being encoded
    recorder._drained()
    encoding = len(calls)
    recorder._encoding_rows = 0
    recorder._drained()  # 10 stored, nothing waiting: the call
    recorder._count_uploaded(9)
    recorder._drained()  # 9 since that call: not yet
    below = len(calls)
    recorder._count_uploaded(1)
    recorder._drained()
    assert (queued, encoding, below, len(calls)) == (0, 0, 1, 2)
