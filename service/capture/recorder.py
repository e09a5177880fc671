"""The recorder: the request path enqueues, background tasks encode, upload and spool.

    record()  -> queue (memory)  --encoder, a slice at a time as records come-->  open parts
    open parts  --closed every flush_seconds, or when full-->  parts
    parts     -> sink (retries with backoff)  --still failing-->  spool (local disk)
    spool     -> sink, oldest first, as soon as the sink answers again

Records are encoded as they come, in slices of up to ENCODE_SLICE_ROWS rows that are due
sooner the fewer requests the server has in progress (SLICE_ROWS_PER_REQUEST), not a
second's worth at once: the encoding's work is spread
evenly between requests instead of arriving in a burst after each flush, and a record lives
in memory as a Python object for a few requests only, so queued records never pile up into
the garbage collector's older generations (whose collections stall every request in
flight). Memory is bounded: open parts are closed at least every `flush_seconds` after
their first record (sooner when they hold `max_part_records` records or `max_part_bytes` of
JSON), the queue of records not yet encoded holds at most about a part's worth
(`max_part_bytes` of JSON by its estimate: past it the encoder keeps the event loop until
it is back under, so a load that answers rows faster than a slice a turn pays for capture
in throughput, not memory), and parts beyond `max_memory_bytes` go to the spool instead of
waiting in memory. Records are only lost when the local disk fails too; they are then
counted as dropped and logged at CRITICAL level.

Once everything encoded is stored and at least a part's worth of records
(`max_part_records`) went out since the last time, `when_drained` is called: the service
gives the heap's free pages back then (service.memory), as it does when its requests are
done, since the encoding and the uploads after a burst of large batches run after the
requests' own release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.capture.interface import NullRecorder
from service.capture.metrics import CaptureMetrics
from service.capture.partformat import count as count_records
from service.capture.records import Part, PartNamer, PartsBuilder, Pending, Slice, take_slice
from service.capture.sinks import Sink, SinkError, open_sink
from service.capture.spool import Spool
from service.capture.worker import Worker
from service.memory import release_free_memory
from service.model import ModelInfo

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from service.config import Settings

log = logging.getLogger("service.capture")

# Rows (records) encoded and compressed per turn of the event loop at most, and how many
# must be queued before the encoder wakes under load. A slice pays a fixed cost on top of
# its records (it runs cold: between two slices the requests through the core leave
# little of the encoder's code and data in the L2), so larger slices cost less a record,
# but a request that arrives during one waits for all of it. For single-image records,
# 64 rows took about 124 us warm against 70 us for 32; counted on /predict single at 16
# concurrent requests, capture added 30,884 instructions and 171 L2 misses a request
# against 32,176 and 263 with 32; served, capture on kept more of capture off's requests
# a second (bench/README.md: "Slices sized by the load").
# Counted in rows, not requests: a request of 256 images is 256 records.
ENCODE_SLICE_ROWS = 64
# Under lighter load a slice is due sooner: once this many rows are queued for each
# request the server had in progress as an answer's inputs were ready (record()'s
# `in_flight`): 8 rows with requests coming one at a time, 16 with two in progress, the
# whole ENCODE_SLICE_ROWS from 8 on. The wait a slice adds to the requests that arrive
# meanwhile is what their p99 sees when they wait for little else, and it grows with the
# slice; under load each request waits for the others' work anyway. p99 on / off at c=1
# (bench/README.md, "On the event loop, in short slices, as records come" and "Slices
# sized by the load"): /predict single 1.33 and 1.12 with slices of 32, 1.18 and 1.11
# with 8; at c=2, 1.17 with slices of 64 against 1.07 with 32.
SLICE_ROWS_PER_REQUEST = 8
# In-flight counts from which a slice waits for ENCODE_SLICE_ROWS rows.
_FULL_SLICE_IN_FLIGHT = ENCODE_SLICE_ROWS // SLICE_ROWS_PER_REQUEST

# How often wait_idle looks again.
IDLE_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class CaptureConfig:
    env: str
    spool_dir: Path
    sample_percent: float = 100.0
    include_inputs: bool = False
    flush_seconds: float = 1.0
    max_part_records: int = 10_000
    max_part_bytes: int = 8 * 1024 * 1024
    max_memory_bytes: int = 64 * 1024 * 1024
    upload_attempts: int = 3
    retry_seconds: float = 0.25
    max_retry_seconds: float = 5.0
    # build_recorder gives it the stop budget's flush (service.shutdown); the rest stays spooled.
    close_seconds: float = 10.0


def build_recorder(
    settings: Settings, registry: CollectorRegistry
) -> CaptureRecorder | NullRecorder:
    """The recorder the settings ask for; a NullRecorder when PREDICTION_LOG_URL is off.

    Raises ConfigError when PREDICTION_LOG_URL names a sink that cannot be opened.
    """
    from service.config import ConfigError

    if not settings.capture_enabled:
        return NullRecorder()
    try:
        sink = open_sink(settings.prediction_log_url)
    except SinkError as exc:
        raise ConfigError(str(exc)) from None
    config = CaptureConfig(
        env=settings.app_env,
        spool_dir=settings.spool_dir,
        sample_percent=settings.prediction_log_sample,
        include_inputs=settings.prediction_log_inputs,
        close_seconds=settings.stop_budget.flush_seconds,
    )
    return CaptureRecorder(sink, config, CaptureMetrics(registry), when_drained=release_free_memory)


class CaptureRecorder:
    """A `PredictionRecorder` (service.capture.interface) that batches records into a sink."""

    def __init__(
        self,
        sink: Sink,
        config: CaptureConfig,
        metrics: CaptureMetrics | None = None,
        *,
        sampler: Callable[[], float] = random.random,
        when_drained: Callable[[], object] | None = None,
    ) -> None:
        self.sink = sink
        self.config = config
        self.metrics = metrics or CaptureMetrics()
        self._sampler = sampler
        self._when_drained = when_drained
        self._stored_since_drained = 0  # records stored since `when_drained` was called
        self._spool = Spool(config.spool_dir)
        self._namer = PartNamer()
        self._disk = Worker("capture-disk")  # the spool: reads, writes, removes
        self._uploader = Worker("capture-upload")
        self._queue: deque[Pending] = deque()
        # The config's part bounds, read on every answer (`_part_due`, which record()
        # compares inline).
        self._part_records = config.max_part_records
        self._part_bytes = config.max_part_bytes
        # The rows the last answer asked a slice to wait for (record()'s `in_flight`).
        self._answer_slice_rows = ENCODE_SLICE_ROWS
        # Queued rows at which a slice is due (`_slice_due`): the most any answer queued
        # since the last slice asked for, and the last answer's ask when a slice is
        # taken, so a rise in the load counts at once and a fall from the next slice on
        # (from the least, before the first answer). Kept as a number record() compares
        # inline.
        self._slice_rows = SLICE_ROWS_PER_REQUEST
        self._encoding_rows = 0  # rows of the slice being encoded
        self._queued_rows = 0
        self._queued_bytes = 0
        self._builder: PartsBuilder | None = None  # the open parts
        self._open_rows = 0  # records in the open parts
        # When the open parts close (the event loop's clock); None while nothing is queued
        # or open.
        self._close_at: float | None = None
        self._hurry = False  # close the open parts now (wait_idle)
        # Resolved to wake the encoder; set while it waits.
        self._encoder_waiter: asyncio.Future | None = None
        self._close_timer: asyncio.TimerHandle | None = None  # wakes it at `_close_at`
        self._pending: deque[Part] = deque()
        self._pending_bytes = 0
        self._spooled: deque[Path] = deque()
        self._sink_down = False
        # Set when an encoded or spooled part waits for the sink.
        self._upload_due: asyncio.Event | None = None
        self._batch_task: asyncio.Task | None = None
        self._upload_task: asyncio.Task | None = None
        self._stopping = False
        self._draining = False
        self.metrics.sink_up.set(1)

    # -- the request path: no awaits, no I/O -------------------------------

    def record(
        self,
        *,
        route: str,
        request_id: str | None,
        model: ModelInfo,
        scores: np.ndarray,
        inputs: np.ndarray | None,
        latency_seconds: float,
        answered_at: float | None = None,
        in_flight: int = 0,
    ) -> None:
        entry = Pending(
            time.time() if answered_at is None else answered_at,
            route,
            request_id,
            model,
            scores,
            inputs if self.config.include_inputs else None,
            latency_seconds,
        )
        # Every answer counts, kept or sampled out: the rule is about how requests come.
        asked = (
            in_flight * SLICE_ROWS_PER_REQUEST
            if 0 < in_flight < _FULL_SLICE_IN_FLIGHT
            else ENCODE_SLICE_ROWS
        )
        self._answer_slice_rows = asked
        if asked > self._slice_rows:
            self._slice_rows = asked
        sample = self.config.sample_percent
        if sample < 100 and self._sampler() * 100 >= sample:
            self.metrics.sampled_out.inc(entry.rows)
            return
        self._queue.append(entry)
        self._queued_rows = queued = self._queued_rows + entry.rows
        self._queued_bytes += entry.estimated_bytes
        if self._encoder_waiter is not None and (
            self._close_at is None
            or queued >= self._slice_rows  # _slice_due
            or queued + self._open_rows >= self._part_records  # _part_due
            or self._queued_bytes >= self._part_bytes
        ):
            self._wake_encoder()

    def _slice_due(self) -> bool:
        """Enough is queued for the encoder to take a slice (of up to ENCODE_SLICE_ROWS
        rows): SLICE_ROWS_PER_REQUEST rows for each request in progress as the answers
        queued since the last slice came, at most ENCODE_SLICE_ROWS (`_slice_rows`, which
        record() compares inline)."""
        return self._queued_rows >= self._slice_rows

    def _part_due(self) -> bool:
        """The queue and the open parts hold a part's worth: `max_part_records` records, or
        `max_part_bytes` of JSON queued (by its estimate: `_over_bound`); record() compares
        both inline."""
        return self._queued_rows + self._open_rows >= self._part_records or self._over_bound()

    def _over_bound(self) -> bool:
        """The queue holds a part's worth or more (`max_part_bytes` of JSON, by its
        estimate): the encoder then keeps the event loop until it is back under.

        Whenever one turn of the event loop answers more rows than a slice (requests of
        hundreds of images at high concurrency), a slice a turn never catches up, and the
        queue, which holds each request's scores and, with PREDICTION_LOG_INPUTS, its
        inputs, would grow for as long as the load lasts: 1,084 MB resident after 20 s of
        256-image V2 binary requests at c=64 with inputs, where the task's default memory
        (Terraform's `task_memory`) is 1,024 MiB and an out-of-memory kill loses every
        queued record (README, Prediction capture). Past the bound such a load pays for
        its capture as it goes, in throughput, instead of in memory.
        """
        return self._queued_bytes >= self._part_bytes

    def _wake_encoder(self) -> None:
        waiter, self._encoder_waiter = self._encoder_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks and pick up parts a previous process spooled."""
        if self._batch_task is not None:
            return
        self._stopping = self._draining = self._hurry = False
        self._upload_due = asyncio.Event()
        self._spooled = deque(await self._disk.run(self._spool.scan))
        self.metrics.spool_parts.set(len(self._spooled))
        if self._spooled:
            log.info(
                "prediction capture: %d spooled parts in %s will be uploaded to %s",
                len(self._spooled),
                self.config.spool_dir,
                self.sink.url,
            )
        self._batch_task = asyncio.create_task(self._batch_loop(), name="capture-batch")
        self._upload_task = asyncio.create_task(self._upload_loop(), name="capture-upload")

    async def close(self) -> None:
        """Flush everything to the sink within `close_seconds`; the rest stays spooled."""
        if self._batch_task is None or self._upload_task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.close_seconds
        self._stopping = True
        self._wake_encoder()
        await self._batch_task
        self._draining = True
        self._upload_due.set()
        try:
            await asyncio.wait_for(self._upload_task, max(0.0, deadline - loop.time()))
        except TimeoutError:
            log.warning(
                "prediction capture: the sink %s did not take everything within %.0f s; "
                "%d parts stay in the spool %s, for the next start on the same storage",
                self.sink.url,
                self.config.close_seconds,
                len(self._pending) + len(self._spooled),
                self.config.spool_dir,
            )
        if self._queue:  # answered while closing: straight to the spool
            await self._encode_queue()
        while self._pending:
            part = self._pending.popleft()
            self._pending_bytes -= len(part.body)
            await self._save_to_spool(part)
        self._update_gauges()
        self._batch_task = self._upload_task = None

    async def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait up to `timeout` seconds (of the event loop's clock) until every record so
        far is in the sink, hurrying the queue meanwhile; False when it is not. For tests
        and benchmarks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (
            self._queue or self._encoding_rows or self._open_rows or self._pending or self._spooled
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._hurry = True
            self._wake_encoder()
            await asyncio.sleep(min(IDLE_POLL_SECONDS, remaining))
        return True

    # -- batching ----------------------------------------------------------

    async def _batch_loop(self) -> None:
        """Encode queued records a slice at a time as they come; close the open parts
        `flush_seconds` after their first record, when hurried, and when stopping."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self._close_at is None and self._queue:
                self._close_at = now + self.config.flush_seconds
                self._close_timer = loop.call_at(self._close_at, self._wake_encoder)
            closing = (
                self._stopping
                or self._hurry
                or self._part_due()
                or (self._close_at is not None and now >= self._close_at)
            )
            if closing:
                self._hurry = False
                await self._encode_queue()
                if self._stopping:
                    return
            elif self._slice_due():
                await self._encode_slices(rest=False)
            else:
                await self._wait_for_records()

    async def _wait_for_records(self) -> None:
        """Until record() queues a slice's worth, a part's worth or the first record of a
        part, a close is asked for, or the open parts' close time comes (`_close_timer`)."""
        self._encoder_waiter = asyncio.get_running_loop().create_future()
        await self._encoder_waiter

    async def _encode_queue(self) -> None:
        """Everything queued into parts now: encoded, and the open parts closed."""
        await self._encode_slices(rest=True)
        if self._builder is not None:
            await self._store_parts(self._builder.finish())
            self._builder = None
            self._open_rows = 0
        self._close_at = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._update_gauges()

    async def _encode_slices(self, *, rest: bool) -> None:
        """Queued records into the open parts, ENCODE_SLICE_ROWS rows a turn of the event
        loop (whole requests: one larger than that is a slice of its own) while a slice is
        due (`_slice_due`); with `rest`, also the last slice smaller than that. The event
        loop turns between two slices, except while the queue is over its bound
        (`_over_bound`); after the last one the caller's next wait turns it."""
        first = True
        while self._queue and (rest or self._slice_due()):
            if not first and not self._over_bound():
                await asyncio.sleep(0)
            first = False
            piece = take_slice(self._queue, ENCODE_SLICE_ROWS)
            self._slice_rows = self._answer_slice_rows
            self._queued_rows -= piece.rows
            self._queued_bytes -= piece.estimated_bytes
            self.metrics.captured.inc(piece.rows)
            self._encoding_rows = piece.rows
            started = time.perf_counter()
            try:
                filled = await self._encode(piece)
            except Exception:
                self.metrics.dropped.inc(piece.rows)
                log.critical(
                    "prediction capture LOST %d records: encoding failed",
                    piece.rows,
                    exc_info=True,
                )
                continue
            finally:
                self._encoding_rows = 0
                # The whole slice ran without an await: what a request arriving meanwhile
                # waited for.
                self.metrics.encode_seconds.observe(time.perf_counter() - started)
            self._open_rows += piece.rows - sum(part.records for part in filled)
            if filled:
                await self._store_parts(filled)
            # A slice at a time, not a record at a time: the queue gauge trails the records
            # by at most a slice (and record() stays free of metric writes).
            self._update_gauges()

    async def _encode(self, piece: Slice) -> list[Part]:
        """One slice into the open parts, on the event loop; the parts it filled.

        A worker thread would hold the GIL for long stretches of the interpreter's switch
        interval (5 ms), and every request that arrived meanwhile waited for it: that was
        capture's p99 (bench/README.md, "On the event loop, in short slices, as records
        come").
        """
        if self._builder is None:
            self._builder = PartsBuilder(
                self.config.env,
                self._namer,
                self.config.max_part_records,
                self.config.max_part_bytes,
            )
        return self._builder.add(piece.entries)

    async def _store_parts(self, parts: list[Part]) -> None:
        """Encoded parts to memory for the uploader, or to the spool when memory is full."""
        for part in parts:
            if self._pending_bytes + len(part.body) > self.config.max_memory_bytes:
                await self._save_to_spool(part)  # memory is full: spill, never drop
            else:
                self._pending.append(part)
                self._pending_bytes += len(part.body)
        if parts and self._upload_due is not None:
            self._upload_due.set()

    # -- uploading ---------------------------------------------------------

    async def _upload_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.config.retry_seconds
        next_probe = 0.0
        while True:
            if self._pending:
                part = self._pending[0]
                stored = not self._sink_down and await self._upload_with_retries(
                    self._put_part, part, attempts=self.config.upload_attempts
                )
                if stored:
                    self._count_uploaded(part.records)
                else:
                    self._mark_down()
                    # Pending until it is on disk: a close that cancels this loop meanwhile
                    # spools it itself (the same file name: written once).
                    await self._save_to_spool(part)
                self._pending.popleft()
                self._pending_bytes -= len(part.body)
                self._update_gauges()
                continue
            if self._spooled and (not self._sink_down or loop.time() >= next_probe):
                path = self._spooled[0]
                attempts = 1 if self._sink_down else self.config.upload_attempts
                records = await self._upload_with_retries(
                    self._put_spooled, path, attempts=attempts
                )
                if records is False:
                    self._mark_down()
                    next_probe = loop.time() + backoff
                    backoff = min(backoff * 2, self._retry_cap())
                else:
                    self._spooled.popleft()
                    await self._disk.run(self._spool.remove, path)
                    if records:  # 0: another process uploaded it first
                        self._count_uploaded(records)
                    backoff = self.config.retry_seconds
                self._update_gauges()
                continue
            if self._draining and not self._queue and not self._spooled:
                return
            self._drained()
            timeout = max(0.0, next_probe - loop.time()) if self._spooled else None
            self._upload_due.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._upload_due.wait(), timeout)

    def _drained(self) -> None:
        """Nothing is queued or encoding and everything encoded is stored: call
        `when_drained` when at least a part's worth of records went out since the last time."""
        if self._queue or self._encoding_rows or self._open_rows:
            return
        if self._stored_since_drained >= self.config.max_part_records:
            self._stored_since_drained = 0
            if self._when_drained is not None:
                self._when_drained()

    def _retry_cap(self) -> float:
        return (
            min(self.config.max_retry_seconds, 1.0)
            if self._draining
            else self.config.max_retry_seconds
        )

    async def _upload_with_retries(self, put: Callable, item, *, attempts: int):
        """Run `put(item)` on the upload thread with retries; its result, or False."""
        delay = self.config.retry_seconds
        for attempt in range(1, attempts + 1):
            try:
                return await self._uploader.run(put, item)
            except Exception as exc:
                self.metrics.retries.inc()
                if not self._sink_down:
                    log.warning(
                        "prediction capture: writing to %s failed (attempt %d of %d): %s",
                        self.sink.url,
                        attempt,
                        attempts,
                        exc,
                    )
                if attempt < attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
        return False

    def _put_part(self, part: Part) -> bool:
        self.sink.put(part.key, part.body)
        return True

    def _put_spooled(self, path: Path) -> int:
        """Upload one spooled part; its record count (0 when another process took it)."""
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return 0
        self.sink.put(self._spool.key(path), body)
        return count_records(body)

    async def _save_to_spool(self, part: Part) -> None:
        try:
            path = await self._disk.run(self._spool.save, part)
        except OSError as exc:
            self.metrics.dropped.inc(part.records)
            log.critical(
                "prediction capture LOST %d records: the sink %s is down and the spool %s "
                "cannot be written (%s); free the disk or fix its permissions",
                part.records,
                self.sink.url,
                self.config.spool_dir,
                exc,
            )
            return
        self._spooled.append(path)
        self.metrics.spooled.inc()

    def _count_uploaded(self, records: int) -> None:
        self.metrics.parts_uploaded.inc()
        self.metrics.written.inc(records)
        self._stored_since_drained += records
        self._mark_up()

    def _mark_down(self) -> None:
        if not self._sink_down:
            log.error(
                "prediction capture: the sink %s is unreachable; spooling parts to %s "
                "until it answers again",
                self.sink.url,
                self.config.spool_dir,
            )
        self._sink_down = True
        self.metrics.sink_up.set(0)

    def _mark_up(self) -> None:
        if self._sink_down:
            log.info(
                "prediction capture: the sink %s answers again; uploading %d spooled parts",
                self.sink.url,
                len(self._spooled),
            )
        self._sink_down = False
        self.metrics.sink_up.set(1)

    def _update_gauges(self) -> None:
        self.metrics.queued.set(
            self._queued_rows
            + self._encoding_rows
            + self._open_rows
            + sum(p.records for p in self._pending)
        )
        self.metrics.spool_parts.set(len(self._spooled))
