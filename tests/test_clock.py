"""The session clock: a virtual clock makes timelines exact and fast; the real one really waits."""

from __future__ import annotations

import asyncio
import time

from ah.runtime.clock import MonotonicClock, VirtualClock


async def settle(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_manual_advance_wakes_sleepers_in_deadline_order_and_only_when_due() -> None:
    async def scenario() -> None:
        clock = VirtualClock(start=10.0)
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.now()))

        tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3.0), ("a", 1.0), ("b", 2.0))]
        await settle()
        assert woke == [] and clock.now() == 10.0  # time does not move by itself

        clock.advance(1.5)
        await settle()
        assert woke == [("a", 11.5)]

        clock.advance(0.4)
        await settle()
        assert woke == [("a", 11.5)]  # b is due at 12.0, not yet

        clock.advance(5.0)
        await settle()
        assert [n for n, _ in woke] == ["a", "b", "c"]  # woken in deadline order, not start order
        assert clock.now() == 16.9
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_sleeping_zero_or_into_the_past_only_yields() -> None:
    async def scenario() -> None:
        clock = VirtualClock(start=5.0)
        await asyncio.wait_for(clock.sleep(0), 0.5)
        await asyncio.wait_for(clock.sleep(-1), 0.5)
        await asyncio.wait_for(clock.sleep_until(4.0), 0.5)
        assert clock.now() == 5.0

    asyncio.run(scenario())


def test_auto_advance_runs_a_scripted_timeline_exactly_and_fast() -> None:
    async def scenario(clock: VirtualClock) -> list[tuple[str, float]]:
        log: list[tuple[str, float]] = []

        async def agent() -> None:
            await clock.sleep(0.5)  # e.g. end-of-turn delay
            log.append(("agent_thinks", clock.now()))
            await clock.sleep(1.2)  # e.g. LLM time to first token
            log.append(("agent_speaks", clock.now()))

        async def user() -> None:
            await clock.sleep_until(1.0)
            log.append(("user_coughs", clock.now()))
            await clock.sleep(3600.0)  # an hour of silence
            log.append(("user_leaves", clock.now()))

        await asyncio.gather(agent(), user())
        return log

    clock = VirtualClock(auto_advance=True)
    t0 = time.perf_counter()
    log = asyncio.run(asyncio.wait_for(scenario(clock), 5.0))
    assert time.perf_counter() - t0 < 0.5  # an hour of session time
    assert log == [
        ("agent_thinks", 0.5),
        ("user_coughs", 1.0),
        ("agent_speaks", 1.7),
        ("user_leaves", 3601.0),
    ]
    assert clock.now() == 3601.0


def test_auto_advance_waits_while_any_task_can_still_run() -> None:
    async def scenario() -> tuple[float, float]:
        clock = VirtualClock(auto_advance=True)
        seen_by_busy: list[float] = []

        async def busy() -> None:
            for _ in range(500):  # runnable work: time must not jump under it
                await asyncio.sleep(0)
            seen_by_busy.append(clock.now())

        sleeper = asyncio.create_task(clock.sleep(2.0))
        await busy()
        await sleeper
        return seen_by_busy[0], clock.now()

    during, after = asyncio.run(asyncio.wait_for(scenario(), 5.0))
    assert during == 0.0
    assert after == 2.0


def test_a_cancelled_sleeper_does_not_move_time() -> None:
    async def scenario() -> float:
        clock = VirtualClock(auto_advance=True)
        far = asyncio.create_task(clock.sleep(100.0))
        await settle(2)
        far.cancel()
        await clock.sleep(1.0)
        await settle(100)
        return clock.now()

    assert asyncio.run(asyncio.wait_for(scenario(), 5.0)) == 1.0


def test_auto_advance_keeps_working_across_idle_gaps() -> None:
    """The driver stops when nobody sleeps and starts again with the next sleeper."""

    async def scenario() -> list[float]:
        clock = VirtualClock(auto_advance=True)
        times = []
        for _ in range(3):
            await clock.sleep(0.25)
            times.append(clock.now())
            await settle(100)  # no sleepers at all for a while
        return times

    assert asyncio.run(asyncio.wait_for(scenario(), 5.0)) == [0.25, 0.5, 0.75]


def test_monotonic_clock_really_waits() -> None:
    async def scenario() -> tuple[float, float]:
        clock = MonotonicClock()
        t0 = clock.now()
        await clock.sleep(0.02)
        t1 = clock.now()
        await clock.sleep_until(t1 + 0.02)
        return t1 - t0, clock.now() - t1

    first, second = asyncio.run(scenario())
    assert first >= 0.015 and second >= 0.015
