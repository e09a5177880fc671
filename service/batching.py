"""Dynamic batching: the rows of concurrent requests run through the model together.

Requests queue their rows; one drain task per event loop takes what is queued
(up to `max_batch_size` rows, waiting at most `max_delay` seconds for more),
runs it in the inference thread in one call, and hands each caller back its
own rows. With `max_delay` 0 (the default) nothing ever waits: under light load
each request runs alone, and under load the queue that builds up while the
model runs becomes the next batch. One thread hop then serves many requests,
which is what matters for a model that runs in tens of microseconds. A request the
server says is alone skips the hand-off when the model runs on the event loop
(`submit`'s `alone`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from service.errors import NotReady

Outputs = dict[str, np.ndarray]


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], Outputs],
        executor: Executor | None,
        *,
        max_batch_size: int,
        max_delay: float,
        observe: Callable[[int, float], None] = lambda rows, seconds: None,
    ) -> None:
        self._run = run
        self._executor = executor
        self._max_rows = max(1, max_batch_size)
        self._max_delay = max(0.0, max_delay)
        self._observe = observe
        self._pending: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self._pending_rows = 0
        # What the idle drain task awaits; a submit resolves it. A bare future rather than
        # an asyncio.Event: the Event's wait made a future, a waiter list and a loop check
        # on every batch (about 3 us of CPU a request when requests come one at a time).
        self._idle: asyncio.Future | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, rows: np.ndarray, alone: bool = False) -> Outputs:
        """The model's outputs for `rows` ([N, ...]), computed in some batch.

        `alone`: the server has no other request in progress (its count,
        service.http.requests_in_flight, is 1). A model that runs on the event loop then
        runs these rows at once, in the caller: no other request can join the batch
        before the loop reads more, and the drain task's hand-off costs two loop turns
        (about 8 us of CPU a request when requests come one at a time; bench/README.md,
        "The dynamic batcher, and models that run on the event loop"). Rows wait their
        turn as ever while other rows are queued or a delay to gather more is set.
        """
        if alone and self._executor is None and not self._max_delay and not self._pending:
            started = time.perf_counter()
            outputs = self._run_bounded(rows)
            self._observe(rows.shape[0], time.perf_counter() - started)
            return outputs
        loop = asyncio.get_running_loop()
        self._ensure_running(loop)
        future = loop.create_future()
        self._pending.append((rows, future))
        self._pending_rows += rows.shape[0]
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        return await future

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._idle = None
            self._pending.clear()
            self._pending_rows = 0
            self._task = loop.create_task(self._drain(), name="batcher")

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._idle = loop.create_future()
                await self._idle
                self._idle = None
            while self._pending:
                if self._max_delay and self._pending_rows < self._max_rows:
                    await asyncio.sleep(self._max_delay)
                taken = self._take()
                parts = [rows for rows, _ in taken]
                batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
                started = time.perf_counter()
                try:
                    if self._executor is None:  # a fast model: the hop would cost more
                        outputs = self._run_bounded(batch)
                    else:
                        outputs = await loop.run_in_executor(
                            self._executor, self._run_bounded, batch
                        )
                except asyncio.CancelledError:  # close() while the batch ran in the thread
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(NotReady())
                    raise
                except Exception as exc:
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._observe(batch.shape[0], time.perf_counter() - started)
                offset = 0
                for rows, future in taken:
                    end = offset + rows.shape[0]
                    if not future.done():
                        future.set_result({k: v[offset:end] for k, v in outputs.items()})
                    offset = end

    def _run_bounded(self, batch: np.ndarray) -> Outputs:
        """The model's outputs for `batch` ([N, ...]), run at most `max_batch_size` rows
        per call: one request of 256 images runs as four calls of 64.

        onnxruntime's arena keeps the largest run's intermediate tensors for the life of
        the process: measured on mnist-8's batch-capable copy, a run of 256 rows left the
        process 31 MB larger than runs of 64 did (132 against 101 MB), at the same
        images a second. Each output is [N, ...] again, rows in order.
        """
        rows = batch.shape[0]
        if rows <= self._max_rows:
            return self._run(batch)
        parts = [self._run(batch[i : i + self._max_rows]) for i in range(0, rows, self._max_rows)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The oldest requests whose rows fit in one batch (always at least one request)."""
        taken = [self._pending.popleft()]
        rows = taken[0][0].shape[0]
        shape, dtype = taken[0][0].shape[1:], taken[0][0].dtype
        while self._pending:
            candidate = self._pending[0][0]
            if (
                rows + candidate.shape[0] > self._max_rows
                or candidate.shape[1:] != shape
                or candidate.dtype != dtype
            ):
                break
            taken.append(self._pending.popleft())
            rows += candidate.shape[0]
        self._pending_rows -= rows
        return taken

    async def close(self) -> None:
        """Stop the drain task; callers still waiting get NotReady, those of a batch the
        worker thread is running included (the thread finishes it; its answer is
        dropped)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(NotReady())
        self._pending_rows = 0
