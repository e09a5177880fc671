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


def test_bodies_the_server_has_read_already_are_counted_and_never_wait():
    async def scenario() -> tuple[list[str], int]:
        budget = BodyBudget(1000, read_ahead=50)
        log: list[str] = []
        gates = {name: asyncio.Event() for name in "abcd"}
        tasks = [
            asyncio.create_task(_hold(budget, size, log, name, gates[name]))
            for name, size in (("a", 600), ("b", 600), ("c", 50), ("d", 51))
        ]
        await asyncio.sleep(0)
        # b waits for a; c, no larger than the read-ahead, goes in past it at once and is
        # counted; d, one byte larger, waits behind b.
        held = budget.held
        for name in "abcd":
            gates[name].set()
        await asyncio.gather(*tasks)
        assert budget.held == 0
        return log, held

    log, held = asyncio.run(scenario())
    assert log[:2] == ["a in, 600 held", "c in, 650 held"] and held == 650
    entered = [line.split(",")[0] for line in log if " in," in line]
    assert entered == ["a in", "c in", "b in", "d in"]


def test_without_a_read_ahead_even_one_byte_waits_its_turn():
    async def scenario() -> list[str]:
        budget = BodyBudget(100)
        log: list[str] = []
        gates = {name: asyncio.Event() for name in "abc"}
        tasks = [
            asyncio.create_task(_hold(budget, size, log, name, gates[name]))
            for name, size in (("a", 60), ("b", 60), ("c", 1))
        ]
        await asyncio.sleep(0)
        for name in "abc":
            gates[name].set()
        await asyncio.gather(*tasks)
        return [line.split(",")[0] for line in log if " in," in line]

    assert asyncio.run(scenario()) == ["a in", "b in", "c in"]


def test_the_read_ahead_is_uvicorns():
    from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

    from service.admission import SERVER_READ_AHEAD_BYTES

    assert SERVER_READ_AHEAD_BYTES == HIGH_WATER_LIMIT


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


def test_a_budget_of_one_byte_is_a_budget():
    assert BodyBudget(1).capacity == 1


def _entered(budget: BodyBudget, size: int) -> tuple[asyncio.Task, asyncio.Event]:
    """A task holding `size` bytes until its event is set; `.entered` once inside."""
    leave = asyncio.Event()

    async def run() -> None:
        async with budget.hold(size):
            await leave.wait()

    return asyncio.create_task(run()), leave


def test_requests_that_fill_the_budget_exactly_run_together():
    async def scenario() -> tuple[int, int]:
        budget = BodyBudget(10)
        a, leave_a = _entered(budget, 4)
        b, leave_b = _entered(budget, 6)
        await asyncio.sleep(0)
        together = budget.held
        leave_a.set()
        leave_b.set()
        await asyncio.gather(a, b)
        return together, budget.held

    assert asyncio.run(scenario()) == (10, 0)


def test_a_waiting_request_enters_when_it_fits_exactly_and_not_before():
    async def scenario() -> list[int]:
        budget = BodyBudget(10)
        a, leave_a = _entered(budget, 4)
        c, leave_c = _entered(budget, 4)
        b, leave_b = _entered(budget, 6)  # 8 held: 6 more would be 14
        d, leave_d = _entered(budget, 7)  # behind b
        await asyncio.sleep(0)
        seen = [budget.held]
        leave_a.set()  # 4 held: b's 6 fits exactly, then d's 7 does not
        await asyncio.sleep(0.01)
        seen.append(budget.held)
        for leave in (leave_c, leave_b):
            leave.set()
        await asyncio.sleep(0.01)
        seen.append(budget.held)  # nothing else held: d enters alone
        leave_d.set()
        await asyncio.gather(a, b, c, d)
        return [*seen, budget.held]

    assert asyncio.run(scenario()) == [8, 10, 7, 0]


def test_an_empty_body_never_waits():
    async def scenario() -> tuple[int, bool]:
        budget = BodyBudget(10)
        full, leave = _entered(budget, 10)
        await asyncio.sleep(0)
        async with budget.hold(0):
            inside = budget.held
        async with budget.hold(-5):  # a negative length counts as none
            pass
        leave.set()
        await full
        return inside, budget.held == 0

    assert asyncio.run(scenario()) == (10, True)


def test_a_cancelled_waiter_at_the_head_lets_the_next_one_in():
    async def scenario() -> tuple[int, bool]:
        budget = BodyBudget(10)
        holder, leave = _entered(budget, 5)
        big, _ = _entered(budget, 8)  # waits: 13 would not fit
        small, leave_small = _entered(budget, 2)  # waits behind big
        await asyncio.sleep(0)
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        await asyncio.sleep(0.01)
        entered = budget.held  # small fits beside the holder now
        leave.set()
        leave_small.set()
        await asyncio.gather(holder, small)
        return entered, big.cancelled()

    assert asyncio.run(scenario()) == (7, True)


def test_a_waiter_cancelled_while_bytes_come_back_ends_cancelled():
    """Cancelled, then passed over by a release before its own clean-up has run: the
    release itself admits the next waiter, which holds the bytes before the cancelled
    one's clean-up runs."""

    async def scenario() -> tuple[bool, int, int]:
        budget = BodyBudget(10)
        held = budget.hold(10)
        await held.__aenter__()
        first, _ = _entered(budget, 10)
        second, leave_second = _entered(budget, 10)
        await asyncio.sleep(0)
        first.cancel()  # its wait is cancelled at once; its clean-up runs later
        await held.__aexit__(None, None, None)  # does not suspend: skips first, admits second
        at_release = budget.held
        results = await asyncio.gather(first, return_exceptions=True)
        await asyncio.sleep(0.01)
        inside = budget.held
        leave_second.set()
        await second
        return isinstance(results[0], asyncio.CancelledError), at_release, inside

    assert asyncio.run(scenario()) == (True, 10, 10)


def test_a_waiter_granted_just_as_it_is_cancelled_gives_the_bytes_back():
    async def scenario() -> tuple[bool, int]:
        budget = BodyBudget(10)
        held = budget.hold(10)
        await held.__aenter__()
        waiter, _ = _entered(budget, 10)
        await asyncio.sleep(0)
        await held.__aexit__(None, None, None)  # grants the waiter its bytes ...
        waiter.cancel()  # ... and it is cancelled before it runs again
        results = await asyncio.gather(waiter, return_exceptions=True)
        return isinstance(results[0], asyncio.CancelledError), budget.held

    assert asyncio.run(scenario()) == (True, 0)


def test_the_budget_calls_its_hook_once_it_empties_after_a_capacitys_worth_of_bodies():
    """Not while anything is held, not before `capacity` bytes went through since the last
    call, then once, and counting starts again."""
    calls: list[int] = []

    async def scenario() -> None:
        budget = BodyBudget(1000, when_emptied=lambda: calls.append(budget.held))
        gates = [asyncio.Event() for _ in range(3)]
        log: list[str] = []
        tasks = [
            asyncio.create_task(_hold(budget, 600, log, str(i), gate))
            for i, gate in enumerate(gates)
        ]
        await asyncio.sleep(0)
        gates[0].set()  # 600 went through, the second holds 600: not empty
        await asyncio.sleep(0.01)
        assert calls == []
        gates[1].set()  # the third enters as the second leaves: still not empty
        await asyncio.sleep(0.01)
        assert calls == []
        gates[2].set()  # empty, 1800 bytes since the start
        await asyncio.gather(*tasks)
        assert calls == [0]
        async with budget.hold(999):  # 999 more: below a capacity's worth again
            pass
        await asyncio.sleep(0)
        assert calls == [0]
        async with budget.hold(1):
            pass
        assert calls == [0]  # not before the loop's next turn: after this answer
        await asyncio.sleep(0)
        assert calls == [0, 0]

    asyncio.run(scenario())


def test_the_prediction_routes_budget_gives_freed_memory_back_when_it_empties(client):
    from service.memory import release_free_memory

    budget = client.app._router.find("/predict")[0]._budget
    assert budget._when_emptied is release_free_memory


def test_the_budget_empties_after_exactly_its_capacity_and_only_while_nothing_is_held():
    async def scenario() -> tuple[list[int], list[int], list[int]]:
        calls: list[int] = []
        budget = BodyBudget(10, when_emptied=lambda: calls.append(budget.held))
        async with budget.hold(9):  # 9 bytes since the start: not yet
            pass
        await asyncio.sleep(0)
        before = list(calls)
        async with budget.hold(1):  # 10: a capacity's worth
            pass
        # A request that fits enters before the loop's next turn: the budget is not empty
        # when the call comes, so it waits for that request to leave.
        held = budget.hold(5)
        await held.__aenter__()
        await asyncio.sleep(0)
        while_held = list(calls)
        await held.__aexit__(None, None, None)
        await asyncio.sleep(0)
        return before, while_held, calls

    assert asyncio.run(scenario()) == ([], [], [0])


def test_a_budget_without_a_hook_empties_quietly():
    async def scenario() -> list[str]:
        errors: list[str] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: errors.append(context["message"])
        )
        budget = BodyBudget(10)
        for _ in range(3):
            async with budget.hold(10):
                pass
            await asyncio.sleep(0)
        return errors

    assert asyncio.run(scenario()) == []
