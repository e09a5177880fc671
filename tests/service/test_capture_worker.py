"""The capture's worker thread: results and errors come back to the awaiting task, one
daemon thread serves every call in order, and a caller that went away breaks nothing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.capture.worker import Worker


def test_calls_run_in_order_on_one_named_daemon_thread_and_return_their_results():
    worker = Worker("capture-test")
    seen: list[tuple[str, bool, int]] = []
    threads: set[int] = set()

    def job(number: int, offset: int) -> int:
        thread = threading.current_thread()
        seen.append((thread.name, thread.daemon, number))
        threads.add(thread.ident)
        return number + offset

    async def scenario():
        futures = [worker.run(job, n, 100) for n in range(5)]
        return await asyncio.gather(*futures)

    assert asyncio.run(scenario()) == [100, 101, 102, 103, 104]
    assert seen == [("capture-test", True, n) for n in range(5)]
    # A second event loop is served by the same thread.
    assert asyncio.run(scenario()) == [100, 101, 102, 103, 104]
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_an_error_in_the_call_is_raised_to_the_awaiting_task():
    worker = Worker("capture-test-error")

    def fails() -> None:
        raise OSError("the disk is full")

    async def scenario():
        await worker.run(fails)

    with pytest.raises(OSError, match="the disk is full"):
        asyncio.run(scenario())


def test_a_cancelled_caller_or_a_closed_loop_does_not_stop_the_thread():
    worker = Worker("capture-test-cancel")
    release = threading.Event()
    errors: list[BaseException] = []

    async def cancelled():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context["message"]))
        future = worker.run(release.wait, 10)
        future.cancel()
        release.set()
        # Calls and their answers keep their order: once the next call is back, the
        # cancelled one's result has arrived too, and was ignored.
        await worker.run(lambda: None)

    asyncio.run(cancelled())
    assert errors == []

    gate = threading.Event()

    async def leaves_early():
        worker.run(gate.wait, 10)  # nobody awaits it; the loop closes first

    asyncio.run(leaves_early())
    gate.set()

    async def still_served():
        return await worker.run(lambda: "served")

    assert asyncio.run(still_served()) == "served"


def test_completing_a_job_for_a_closed_loop_drops_its_result_quietly():
    """`complete` runs the job in the calling thread; the loop it answers to may be gone."""
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    loop.close()
    ran: list[int] = []
    Worker("capture-test-closed").complete(loop, future, ran.append, (7,))
    assert ran == [7] and not future.done()
