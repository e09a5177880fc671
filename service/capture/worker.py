"""A daemon worker thread that asyncio code can await.

Unlike `asyncio.to_thread`'s executor, a stuck call here (a sink that hangs)
neither holds up other blocking work nor keeps the process alive at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any


class Worker:
    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run `function(*args)` on the worker thread; await the returned future."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put((loop, future, function, args))
        return future

    def _serve(self) -> None:
        while True:
            self.complete(*self._jobs.get())

    def complete(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future,
        function: Callable[..., Any],
        args: tuple,
    ) -> None:
        """Run one job in the calling thread and hand its result or exception to
        `future` on `loop` (from any thread, the loop's own included)."""
        try:
            outcome = (function(*args), None)
        except BaseException as exc:
            outcome = (None, exc)
        # RuntimeError: the loop is closed, so nobody waits for this result.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
