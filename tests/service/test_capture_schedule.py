"""The recorder's waits, read off a virtual clock: when a down sink is written to again,
how long `close` gives the uploads, how long `wait_idle` waits and how often it looks.

The event loop runs on looptime's virtual clock, which jumps to the next timer whenever
nothing is ready to run, and the recorder's worker threads are replaced by jobs run on the
loop's own thread: no real time passes anywhere the clock cannot see, so every write's
time is exact. A recorder that waits without the clock moving (a wait of zero, over and
over) never lets virtual time reach the end of the scenario; a real-time watchdog stops
the loop then and the test fails saying so.

The clock moves in whole microseconds, so the recorder's retry waits here are binary
fractions (0.25, 0.5, 2 s): a probe time of 0.1 + 0.05 s is a hair past any microsecond,
and a clock that is not a real one would never quite reach it.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import looptime
import pytest

from service.capture import CaptureRecorder
from service.capture import recorder as recorder_module
from service.capture.records import decode_part
from service.capture.sinks import LocalSink
from service.capture.spool import Spool
from service.capture.worker import Worker
from tests.service.test_capture import config, read_dir, send

T = TypeVar("T")

# Real seconds a scenario may take: each takes milliseconds unless the recorder spins.
WATCHDOG_SECONDS = 10.0


class InlineWorker(Worker):
    """A Worker whose jobs run at once on the event loop's thread; the result still
    arrives through the loop, as a thread's does."""

    def run(self, function, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.complete(loop, future, function, args)
        return future


class ClockedSink:
    """A sink that notes the loop time of every write and refuses writes before `up_at`."""

    def __init__(self, root: Path, up_at: float = math.inf) -> None:
        self._local = LocalSink(root)
        self.url = f"clocked:{root}"
        self.up_at = up_at
        self.writes: list[float] = []

    def put(self, key: str, body: bytes) -> bool:
        now = asyncio.get_running_loop().time()
        self.writes.append(round(now, 6))
        if now < self.up_at:
            raise ConnectionError("the sink is down")
        return self._local.put(key, body)


@pytest.fixture(autouse=True)
def inline_workers(monkeypatch):
    """Recorders made in these tests run their disk and upload jobs on the loop's thread."""
    monkeypatch.setattr(recorder_module, "Worker", InlineWorker)


def on_virtual_clock(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run `scenario()` on a looptime event loop whose clock starts at 0."""
    with asyncio.Runner(loop_factory=looptime.new_event_loop) as runner:
        loop = runner.get_loop()
        watchdog = threading.Timer(WATCHDOG_SECONDS, loop.call_soon_threadsafe, (loop.stop,))
        watchdog.start()
        try:
            return runner.run(scenario())
        except RuntimeError as exc:
            if "stopped before" not in str(exc):
                raise
            pytest.fail(
                f"the scenario did not end within {WATCHDOG_SECONDS:.0f} s of real time: "
                "the recorder waits without the clock moving"
            )
        finally:
            watchdog.cancel()


def spooled_records(spool_dir: Path) -> list[dict]:
    return [record for path in Spool(spool_dir).scan() for record in decode_part(path.read_bytes())]


def test_a_down_sink_gets_the_retries_then_one_write_a_probe_on_a_doubling_backoff(tmp_path):
    sink = ClockedSink(tmp_path / "out", up_at=7.0)
    recorder = CaptureRecorder(
        sink,
        config(
            tmp_path,
            flush_seconds=0.1,
            upload_attempts=3,
            retry_seconds=0.25,
            max_retry_seconds=2.0,
        ),
    )

    async def scenario() -> list[float]:
        await recorder.start()
        send(recorder, 1)
        await asyncio.sleep(10)
        writes = list(sink.writes)
        await recorder.close()
        return writes

    writes = on_virtual_clock(scenario)
    # The part at the flush: three attempts 0.25 then 0.5 s apart; spooled, then probed at
    # once and 0.25, 0.5, 1, 2 s after each failed probe, then every 2 s (the cap), one
    # write a probe.
    assert writes == [0.1, 0.35, 0.85, 0.85, 1.1, 1.6, 2.6, 4.6, 6.6, 8.6]
    assert len(read_dir(tmp_path / "out")) == 1
    assert Spool(tmp_path / "spool").scan() == []


def test_close_gives_the_uploads_until_its_deadline_and_keeps_the_rest_spooled(tmp_path):
    sink = ClockedSink(tmp_path / "out")
    recorder = CaptureRecorder(
        sink,
        config(
            tmp_path,
            flush_seconds=60,
            upload_attempts=3,
            retry_seconds=0.25,
            close_seconds=0.5,
        ),
    )

    async def scenario() -> float:
        await recorder.start()
        send(recorder, 1, prefix="closing")
        started = asyncio.get_running_loop().time()
        await recorder.close()
        return asyncio.get_running_loop().time() - started

    took = on_virtual_clock(scenario)
    assert took == pytest.approx(0.5, abs=1e-6)
    assert sink.writes == [0.0, 0.25]  # the third attempt, at 0.75, is past the deadline
    assert [r["request_id"] for r in spooled_records(tmp_path / "spool")] == ["closing0"]


def test_wait_idle_gives_up_after_ten_seconds_by_default(tmp_path):
    recorder = CaptureRecorder(
        ClockedSink(tmp_path / "out"),
        config(tmp_path, flush_seconds=60, retry_seconds=0.25, max_retry_seconds=2.0),
    )

    async def scenario() -> tuple[bool, float]:
        await recorder.start()
        send(recorder, 1)
        started = asyncio.get_running_loop().time()
        idle = await recorder.wait_idle()
        took = asyncio.get_running_loop().time() - started
        await recorder.close()
        return idle, took

    idle, took = on_virtual_clock(scenario)
    assert idle is False
    assert took == pytest.approx(10.0, abs=1e-6)


def test_wait_idle_hurries_the_queue_and_looks_again_every_twenty_milliseconds(tmp_path):
    sink = ClockedSink(tmp_path / "out", up_at=0.0)
    recorder = CaptureRecorder(sink, config(tmp_path, flush_seconds=60))

    async def scenario() -> tuple[bool, float]:
        await recorder.start()
        send(recorder, 1)
        started = asyncio.get_running_loop().time()
        idle = await recorder.wait_idle(5)
        took = asyncio.get_running_loop().time() - started
        await recorder.close()
        return idle, took

    idle, took = on_virtual_clock(scenario)
    # The part is written at once (no flush wait); wait_idle sees it at its next look.
    assert (idle, took, sink.writes) == (True, pytest.approx(0.02, abs=1e-6), [0.0])
