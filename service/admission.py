"""How much request data the prediction routes hold at once: a budget of body bytes.

A request reserves its body's size before its body is read, and gives it back once its
answer is computed. While the budget is spent, later requests wait unread: their bodies
stay in the kernel's socket buffers (uvicorn stops reading a connection whose request
the app has not read), not in the service's memory. Without it, 64 clients each sending
256 images (800 kB of binary tensors) had 51 MB of bodies, their arrays and their
answers in the process at once, and the memory stayed with the process after them
(README, Performance).

The model runs one batch at a time anyway, so holding fewer bodies costs no throughput.
A single request larger than the whole budget still runs, alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


class BodyBudget:
    """At most `capacity` bytes of request bodies held at once (one event loop's)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the body budget must be at least 1 byte, not {capacity}")
        self.capacity = capacity
        self.held = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    def hold(self, size: int) -> Hold:
        """An async context manager: reserve `size` bytes (waiting, first come first
        served, until they fit or nothing else is held) for the block; give them back
        when it ends, however."""
        return Hold(self, max(0, size))

    def _take_now(self, size: int) -> bool:
        """Hold `size` bytes at once when they fit and nobody waits before them."""
        if self._waiting or (self.held and self.held + size > self.capacity):
            return False
        self.held += size
        return True

    async def _acquire(self, size: int) -> None:
        """Wait for `size` bytes to be granted; a cancelled wait holds nothing."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((size, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(size)  # granted just as the client went away
            else:
                with contextlib.suppress(ValueError):  # _grant may have dropped it
                    self._waiting.remove((size, future))
                self._grant()
            raise

    def _release(self, size: int) -> None:
        self.held -= size
        self._grant()

    def _grant(self) -> None:
        """Admit waiting requests in order while they fit (the first one always, when
        nothing is held)."""
        while self._waiting:
            size, future = self._waiting[0]
            if self.held and self.held + size > self.capacity:
                return
            self._waiting.popleft()
            if future.cancelled():
                continue
            self.held += size
            future.set_result(None)


class Hold:
    """One request's reservation, as `async with budget.hold(size):`.

    A plain class rather than `contextlib.asynccontextmanager`: the generator, its
    wrapper and their frames cost about 4 us of CPU on every prediction (an in-process
    loop of `/predict`), while a budget that is not spent needs no await at all.
    """

    __slots__ = ("_budget", "_size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self._size = size

    async def __aenter__(self) -> None:
        if not self._budget._take_now(self._size):
            await self._budget._acquire(self._size)

    async def __aexit__(self, *exc_info) -> None:
        self._budget._release(self._size)
