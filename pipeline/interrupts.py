"""How `python -m pipeline` takes SIGINT, SIGTERM and SIGHUP: the first one interrupts the
command (KeyboardInterrupt), the ones after it are ignored, and a block that must not be
cut in half (`deferred`: a deployment record's writes, a service update) takes the first
one only once it has finished.

Where the first signal comes from: a terminal's Ctrl-C (SIGINT to the whole foreground
job), `kill`, `timeout` or a supervisor (SIGTERM), a closed terminal (SIGHUP), nox passing
its own interrupt on (noxfile.py), and a GitHub runner cancelling the job or ending it at
its `timeout-minutes`: SIGINT to the step's process, SIGTERM 7.5 s later, the process
tree killed 2.5 s after that (GitHub Actions docs, "Workflow cancellation reference").
signal(7): each of the three ends a process by default. So a release's rollback, or a
download's removal of its partial file, runs to its end whatever signal follows.

Signal handlers are process-wide, so this module's state is too; Python runs them in the
main thread (the `signal` module's documentation), and `handled` does nothing elsewhere.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

INTERRUPTING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A GitHub runner kills a cancelled step's process tree 10 s after its SIGINT ("Workflow
# cancellation reference"); what an interrupted command still does ends 1 s before, so
# that it can say so and exit.
GRACE_SECONDS = 9.0


@dataclass
class _State:
    deferring: int = 0  # how many `deferred` blocks are open
    pending: bool = False  # the first signal came inside one, and waits for its end
    taken: bool = False  # the first signal came: later ones are ignored
    at: float | None = None  # when it came (time.monotonic())


_state = _State()


def _interrupt(signum: int, frame: object) -> None:
    if _state.taken:
        return
    _state.taken = True
    _state.at = time.monotonic()
    if _state.deferring:
        _state.pending = True
        return
    raise KeyboardInterrupt


def deadline() -> float | None:
    """The time.monotonic() by which an interrupted command has done what it still does
    (GRACE_SECONDS after the first signal), or None before a signal came."""
    return None if _state.at is None else _state.at + GRACE_SECONDS


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handled() -> Iterator[None]:
    """While inside (a command's run), the signals interrupt as this module says, from a
    fresh state; the handlers and the state before it come back as it ends. SIGINT is
    taken only where Python's own handler has it: a background job started by a script
    begins with it ignored (POSIX shell, 2.11 "Signals and Error Handling"), and keeps it
    so."""
    global _state
    if not _main_thread():
        yield
        return
    taken = [
        sig
        for sig in INTERRUPTING
        if sig != signal.SIGINT or signal.getsignal(sig) is signal.default_int_handler
    ]
    outer, _state = _state, _State()
    previous = {sig: signal.signal(sig, _interrupt) for sig in taken}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state = outer


@contextmanager
def deferred() -> Iterator[None]:
    """Inside, the first signal does not interrupt: KeyboardInterrupt is raised as the
    outermost such block ends, so what the block writes or changes is done whole (from
    the block's own exception, when it raised one, which the interrupt then carries as its
    cause). Nests; outside `handled`, or off the main thread, it changes nothing."""
    if not _main_thread():
        yield
        return
    _state.deferring += 1
    try:
        yield
    except BaseException as failure:
        if _held_back() and not isinstance(failure, KeyboardInterrupt):
            raise KeyboardInterrupt from failure
        raise
    if _held_back():
        raise KeyboardInterrupt


def _held_back() -> bool:
    """Leave a `deferred` block: whether it was the outermost one, holding a signal."""
    _state.deferring -= 1
    held = _state.pending and not _state.deferring
    if held:
        _state.pending = False
    return held
