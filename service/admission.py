"""How much request data the prediction routes hold at once: a budget of body bytes.

A request reserves its body's size before its body is read, and gives it back once its
answer is computed. While the budget is spent, later requests wait unread: their bodies
stay in the kernel's socket buffers (uvicorn stops reading a connection whose request
the app has not read), not in the service's memory. Without it (and without the model's
calls of at most `BATCH_MAX_SIZE` rows), 64 clients each sending 256 images (800 kB of
binary tensors) had all their bodies, arrays and answers in the process at once, and the
process ended that load at 187 MB against 137 MB with both (bench/README.md,
"Memory").

The model runs one batch at a time anyway, so holding fewer bodies costs no throughput.
A single request larger than the whole budget still runs, alone.

A reservation of at most `read_ahead` bytes is counted but never waits: uvicorn reads up
to 64 KiB of a request's body whether the route waits or not (it stops reading the
connection only past SERVER_READ_AHEAD_BYTES), so making a `/predict` of a few images
wait keeps no byte out of memory; it would only hold it back behind larger requests, and
behind clients that send their large bodies slowly (two of them, sending a byte a
second, held a 4 kB `/predict` until their reads were cut off: service.http.BodyReader,
README "Request decoding and limits"). A route reserves the whole limit for a body that
may decode to more than it announces (content-coded), so such a body always waits its
turn.

What those requests freed is given back to the system once they are done: when the budget
empties after at least its capacity in bodies went through since the last time, it calls
`when_emptied` (the app passes `service.memory.release_free_memory`). Nothing is held then,
and it runs on the loop's next turn, after the last request's answer is written, so the
work (a few milliseconds after a burst of large batches) delays no answer already computed
(a request that arrives meanwhile waits for it on the event loop), and under a steady
load of small requests it happens once every capacity's worth of bodies (about 2,500 of
the bench's single-image requests with the default budget).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

# How much of a request's body uvicorn reads before it stops reading the connection
# until the app takes it (uvicorn.protocols.http.flow_control.HIGH_WATER_LIMIT; a test
# keeps the two equal).
SERVER_READ_AHEAD_BYTES = 64 * 1024


class BodyBudget:
    """At most `capacity` bytes of request bodies held at once (one event loop's), but
    for bodies of at most `read_ahead` bytes, which are counted and never wait."""

    def __init__(
        self,
        capacity: int,
        when_emptied: Callable[[], object] | None = None,
        *,
        read_ahead: int = 0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"the body budget must be at least 1 byte, not {capacity}")
        self.capacity = capacity
        self.read_ahead = read_ahead
        self.held = 0
        # Bytes granted since `when_emptied` was last called.
        self.passed = 0
        self._when_emptied = when_emptied
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    def hold(self, size: int) -> Hold:
        """An async context manager: reserve `size` bytes (waiting, first come first
        served, until they fit or nothing else is held; at once for `read_ahead` bytes
        or fewer) for the block; give them back when it ends, however."""
        return Hold(self, max(0, size))

    def _take_now(self, size: int) -> bool:
        """Hold `size` bytes at once when they fit and nobody waits before them, or when
        they are `read_ahead` bytes or fewer."""
        if size > self.read_ahead and (
            self._waiting or (self.held and self.held + size > self.capacity)
        ):
            return False
        self.held += size
        self.passed += size
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
        if not self.held and self.passed >= self.capacity and self._when_emptied is not None:
            # On the loop's next turn: after the answer of the request that emptied it.
            asyncio.get_running_loop().call_soon(self._emptied)

    def _emptied(self) -> None:
        if not self.held and self.passed >= self.capacity:  # still empty, not yet called
            self.passed = 0
            self._when_emptied()

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
            self.passed += size
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
