"""The body budget: how many request bytes the prediction routes hold at once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from service.admission import BodyBudget


async def _hold(budget: BodyBudget, size: int, log: list, name: str, release: asyncio.Event):
    async with budget.hold(size):
        log.append(f"{name} in, {budget.held} held")
        await release.wait()
    log.append(f"{name} out")


def test_requests_past_the_budget_wait_in_order_until_bytes_come_back():
    async def scenario() -> list[str]:
        budget = BodyBudget(1000)
        log: list[str] = []
        gates = {name: asyncio.Event() for name in "abcd"}
        tasks = [
            asyncio.create_task(_hold(budget, size, log, name, gates[name]))
            for name, size in (("a", 600), ("b", 300), ("c", 500), ("d", 50))
        ]
        await asyncio.sleep(0)
        # d would fit beside a and b, but c came first: nobody jumps the queue.
        log.append(f"waiting {budget.held}")
        gates["a"].set()
        await asyncio.sleep(0.01)
        for name in "bcd":
            gates[name].set()
        await asyncio.gather(*tasks)
        assert budget.held == 0
        return log

    log = asyncio.run(scenario())
    assert log[:3] == ["a in, 600 held", "b in, 900 held", "waiting 900"]
    entered = [line.split(",")[0] for line in log if " in," in line]
    assert entered == ["a in", "b in", "c in", "d in"]
    assert log.index("a out") < log.index(next(line for line in log if line.startswith("c in")))


def test_a_request_larger_than_the_budget_runs_alone():
    async def scenario() -> list[str]:
        budget = BodyBudget(100)
        log: list[str] = []
        go = asyncio.Event()
        big = asyncio.create_task(_hold(budget, 5000, log, "big", go))
        small = asyncio.create_task(_hold(budget, 10, log, "small", go))
        await asyncio.sleep(0)
        go.set()
        await asyncio.gather(big, small)
        return log

    assert asyncio.run(scenario()) == [
        "big in, 5000 held",
        "big out",
        "small in, 10 held",
        "small out",
    ]


def test_a_waiting_request_that_is_cancelled_gives_its_place_up():
    async def scenario() -> int:
        budget = BodyBudget(100)
        first, second = asyncio.Event(), asyncio.Event()
        log: list[str] = []
        holder = asyncio.create_task(_hold(budget, 100, log, "a", first))
        waiter = asyncio.create_task(_hold(budget, 100, log, "b", second))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        first.set()
        await holder
        return budget.held

    assert asyncio.run(scenario()) == 0


def test_the_budget_must_hold_something():
    with pytest.raises(ValueError, match="at least 1 byte"):
        BodyBudget(0)


def test_the_prediction_routes_share_one_budget_released_after_each_answer(client):
    """Answers (and errors, read or not) give their bytes back: later requests pass."""
    from service.app import BODY_BUDGET_BODIES

    route = client.app._router.find("/predict")[0]
    budget = route._budget
    assert budget.capacity == BODY_BUDGET_BODIES * 256 * 1024
    assert client.simulate_post("/predict", json={"data": [0.0] * 784}).status_code == 200
    assert client.simulate_post("/predict", json={"data": ["x"]}).status_code == 400
    assert (
        client.simulate_post("/predict", body=b"{", headers={"Content-Encoding": "br"}).status_code
        == 415
    )
    assert budget.held == 0


def test_a_block_that_raises_gives_its_bytes_back_and_the_next_waiter_enters():
    """The reservation ends however its block ends: an exception releases the bytes and
    admits the request that waited for them, and the exception reaches the caller."""
    budget = BodyBudget(100)
    log: list[str] = []
    fail = asyncio.Event()

    async def failing() -> None:
        async with budget.hold(80):
            log.append(f"failing in, {budget.held} held")
            await fail.wait()
            raise RuntimeError("the model broke")

    async def scenario() -> int:
        first = asyncio.create_task(failing())
        await asyncio.sleep(0)
        second = asyncio.create_task(_hold(budget, 50, log, "second", asyncio.Event()))
        await asyncio.sleep(0)
        log.append(f"waiting {budget.held}")
        fail.set()
        with pytest.raises(RuntimeError, match="the model broke"):
            await first
        await asyncio.sleep(0)
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        return budget.held

    assert asyncio.run(scenario()) == 0
    assert log == ["failing in, 80 held", "waiting 80", "second in, 50 held"]
