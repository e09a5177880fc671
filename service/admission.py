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
from collections.abc import AsyncIterator


class BodyBudget:
    """At most `capacity` bytes of request bodies held at once (one event loop's)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the body budget must be at least 1 byte, not {capacity}")
        self.capacity = capacity
        self.held = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Reserve `size` bytes (waiting, first come first served, until they fit or
        nothing else is held) for the block; give them back when it ends, however."""
        size = max(0, size)
        if self._waiting or (self.held and self.held + size > self.capacity):
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
        else:
            self.held += size
        try:
            yield
        finally:
            self._release(size)

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
