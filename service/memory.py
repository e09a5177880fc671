"""Giving the C heap's free pages back to the operating system after large requests.

glibc's `free` returns memory to the system only from the top of the heap, so after a burst
of large requests (bodies, their arrays, uvicorn's read buffers, capture's encoding) the
pages freed below a chunk still in use stay resident: measured on the bench's service,
40 to 48 MB of the main heap were free yet resident after the batch-of-256 rows.
`malloc_trim(0)` walks every arena and gives back every whole free page (madvise), not
only the top (malloc_trim(3), "since glibc 2.8",
https://man7.org/linux/man-pages/man3/malloc_trim.3.html). It locks each arena while it
walks it, so it is called only at quiet moments: when the prediction routes hold nothing
(service.admission) and when capture has stored everything it had (service.capture.recorder).
It took about 3.4 ms after the batch rows (37 MB given back), 70 us on a heap with little free.

Elsewhere (musl, macOS) there is no such call and nothing is done: those allocators give
memory back themselves.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim from the running process, or None where the C library has none."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system; whether any were given back.

    False where the C library has no malloc_trim (not glibc).
    """
    return bool(_TRIM(0)) if _TRIM is not None else False
