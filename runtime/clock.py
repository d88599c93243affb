"""The session clock: real time in production, virtual time in tests.

Nodes never call ``time`` or ``asyncio.sleep`` directly; they ask ``ctx.clock``. A test can then run a
whole session on a :class:`VirtualClock` with scripted provider latencies, so turn-taking tests are
exact and take milliseconds instead of the seconds they describe.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic time line (the origin is arbitrary)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    """Wall-clock time from ``time.monotonic``; sleeping is ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))


class VirtualClock:
    """Time that moves only when told to, or, with ``auto_advance``, whenever every task is waiting.

    ``auto_advance`` jumps straight to the next sleeper's deadline once the event loop has nothing
    else ready to run, so a scripted five-second conversation runs in a few milliseconds and every
    timestamp in it is exact and repeatable.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = False) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._auto = auto_advance
        self._driver: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        if self._auto and (self._driver is None or self._driver.done()):
            self._driver = asyncio.get_running_loop().create_task(self._drive())
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come (in deadline order)."""
        self._advance_to(self._now + seconds)

    def _advance_to(self, t: float) -> None:
        while self._sleepers and self._sleepers[0][0] <= t:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
        self._now = max(self._now, t)

    def close(self) -> None:
        """Stop auto-advancing (the run on this clock is over). Two auto-advancing clocks left on one event
        loop would each see the other's turns as "runnable" and neither would ever jump in time."""
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        # asyncio's loop exposes its ready queue; others (uvloop) do not, and then 50 yields stand in
        # for "everything runnable has run".
        ready = getattr(loop, "_ready", None)
        while self._sleepers:
            # Let everything that is runnable run first; only an idle loop may jump in time.
            for _ in range(50):
                await asyncio.sleep(0)
                if ready is not None and not ready:
                    break
            if ready:
                continue
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if self._sleepers:
                self._advance_to(self._sleepers[0][0])
