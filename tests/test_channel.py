"""Bounded channels: backpressure, drop_oldest, fan-in/out, end-of-stream, detach, cancellation.

The property tests drive several producers and one consumer through random interleavings (random
capacities and random numbers of ``asyncio.sleep(0)`` yields before each operation, all drawn by
hypothesis) and check that a ``block`` edge loses, duplicates and reorders nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ah.runtime.channel import Channel, ChannelClosed, EdgePolicy, EndOfStream
from ah.runtime.frames import TextFrame
from ah.runtime.ports import OutputPort
from ah.runtime.scopes import ScopeRegistry

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 5.0) -> T:
    """Run a test scenario with a hang guard: a lost wake-up fails the test instead of hanging it."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


async def settle(n: int = 20) -> None:
    """Let every runnable task run until it blocks."""
    for _ in range(n):
        await asyncio.sleep(0)


def tf(text: str, scope: int = 0) -> TextFrame:
    return TextFrame(text, scope=scope)


async def drain(ch: Channel[TextFrame]) -> list[str]:
    out = []
    while True:
        try:
            out.append((await ch.get()).text)
        except EndOfStream:
            return out


# -- block ---------------------------------------------------------------------------------------------
def test_block_edge_makes_the_producer_wait_when_full() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(2, EdgePolicy.BLOCK)
        sent: list[int] = []

        async def producer() -> None:
            for i in range(5):
                await ch.put(tf(str(i)))
                sent.append(i)
            ch.close_producer()

        task = asyncio.create_task(producer())
        await settle()
        assert sent == [0, 1]  # the third put waits: backpressure reached the producer
        assert ch.depth == 2 == ch.capacity
        assert not task.done()

        assert (await ch.get()).text == "0"
        await settle()
        assert sent == [0, 1, 2]
        assert ch.depth == 2

        got = ["0", *await drain(ch)]
        await task
        assert got == ["0", "1", "2", "3", "4"]
        assert ch.stats.peak_depth == 2
        assert ch.stats.sent == ch.stats.delivered == 5
        assert ch.stats.dropped_overflow == 0

    run(scenario())


def test_depth_is_observable_and_never_exceeds_capacity() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(3, producers=2)
        depths: list[int] = []

        async def producer(name: str) -> None:
            for i in range(20):
                await ch.put(tf(f"{name}{i}"))
                depths.append(ch.depth)
            ch.close_producer()

        tasks = [asyncio.create_task(producer("a")), asyncio.create_task(producer("b"))]
        got = []
        while True:
            depths.append(ch.depth)
            try:
                got.append((await ch.get()).text)
            except EndOfStream:
                break
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert len(got) == 40
        assert max(depths) == 3
        assert ch.stats.peak_depth == 3

    run(scenario())


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Channel(0)


# -- drop_oldest ------------------------------------------------------------------------------------------
def test_drop_oldest_never_blocks_drops_the_oldest_and_counts_them() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(3, EdgePolicy.DROP_OLDEST)
        for i in range(10):
            await asyncio.wait_for(ch.put(tf(str(i))), 0.5)  # no consumer, yet it never waits
        assert ch.depth == 3
        assert ch.stats.dropped_overflow == 7
        ch.close_producer()
        assert await drain(ch) == ["7", "8", "9"]  # the newest survive, in order
        s = ch.stats
        assert s.sent == 10 and s.delivered == 3 and s.peak_depth == 3
        assert s.sent == s.delivered + s.dropped_overflow

    run(scenario())


# -- fan-in / fan-out -------------------------------------------------------------------------------------
def test_fan_in_closes_only_after_every_producer_has_closed() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(4, producers=2)
        await ch.put(tf("a0"))
        await ch.put(tf("b0"))
        ch.close_producer()
        assert not ch.closed
        assert [(await ch.get()).text, (await ch.get()).text] == ["a0", "b0"]

        waiter = asyncio.create_task(ch.get())
        await settle()
        assert not waiter.done()  # one producer is still open: no end-of-stream yet

        await ch.put(tf("b1"))
        assert (await waiter).text == "b1"
        ch.close_producer()
        assert ch.closed
        with pytest.raises(EndOfStream):
            await ch.get()

    run(scenario())


def test_fan_out_delivers_every_frame_to_every_input_and_backpressure_from_either() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        fast: Channel[TextFrame] = Channel(8, scopes=scopes, name="fast")
        slow: Channel[TextFrame] = Channel(1, scopes=scopes, name="slow")
        port: OutputPort[TextFrame] = OutputPort("out", [fast, slow], scopes)
        sent: list[int] = []

        async def producer() -> None:
            for i in range(6):
                await port.send(tf(str(i)))
                sent.append(i)
            port.close()

        task = asyncio.create_task(producer())
        await settle()
        # The slow branch (capacity 1, nobody reading) holds the producer back for both branches.
        assert sent == [0]
        assert fast.depth == 2 and slow.depth == 1

        fast_got, slow_got = await asyncio.gather(drain(fast), drain(slow))
        await task
        assert fast_got == slow_got == [str(i) for i in range(6)]
        assert fast.closed and slow.closed

    run(scenario())


# -- end-of-stream ----------------------------------------------------------------------------------------
def test_end_of_stream_comes_after_everything_queued_is_delivered() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(8)
        for i in range(3):
            await ch.put(tf(str(i)))
        ch.close_producer()
        assert ch.closed and ch.depth == 3
        assert await drain(ch) == ["0", "1", "2"]
        for _ in range(2):  # end-of-stream is sticky
            with pytest.raises(EndOfStream):
                await ch.get()
        with pytest.raises(ChannelClosed):
            await ch.put(tf("late"))

    run(scenario())


def test_end_of_stream_wakes_a_waiting_consumer() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(2)
        waiter = asyncio.create_task(ch.get())
        await settle()
        assert not waiter.done()
        ch.close_producer()
        with pytest.raises(EndOfStream):
            await waiter

    run(scenario())


def test_a_channel_without_producers_is_closed_from_the_start() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(1, producers=0)
        assert ch.closed
        with pytest.raises(EndOfStream):
            await ch.get()
        assert ch.get_nowait() is None

    run(scenario())


# -- detach -------------------------------------------------------------------------------------------------
def test_detach_unblocks_waiting_producers_and_counts_every_discarded_frame() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(2, producers=2)

        async def producer(name: str) -> None:
            for i in range(5):
                await ch.put(tf(f"{name}{i}"))
            ch.close_producer()

        tasks = [asyncio.create_task(producer(n)) for n in "ab"]
        await settle()
        assert ch.depth == 2 and not any(t.done() for t in tasks)  # both blocked on the full channel

        assert (await ch.get()).text == "a0"
        ch.detach()  # the consumer finished early
        await asyncio.wait_for(asyncio.gather(*tasks), 1.0)  # both producers ran to the end
        s = ch.stats
        assert ch.depth == 0
        assert s.delivered == 1
        # Every one of the 10 frames is either delivered or counted as discarded, never lost silently.
        assert s.delivered + s.discarded_unconsumed == 10

    run(scenario())


# -- cancelling a waiting get or put --------------------------------------------------------------------------
def test_cancelled_get_leaves_no_stale_waiter() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(2)
        first = asyncio.create_task(ch.get())
        await settle()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await ch.put(tf("x"))
        assert ch.depth == 1  # the frame was not handed to the cancelled getter
        assert (await asyncio.wait_for(ch.get(), 0.5)).text == "x"
        assert ch.stats.delivered == 1

    run(scenario())


def test_getter_woken_and_cancelled_at_once_hands_the_frame_to_the_next_getter() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(2)
        g1 = asyncio.create_task(ch.get())
        g2 = asyncio.create_task(ch.get())
        await settle()
        await ch.put(tf("x"))  # wakes g1 ...
        g1.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await g1
        assert (await asyncio.wait_for(g2, 0.5)).text == "x"
        assert ch.depth == 0

    run(scenario())


def test_cancelled_put_enqueues_nothing_and_other_producers_go_on() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(1, producers=2)
        await ch.put(tf("a0"))
        p1 = asyncio.create_task(ch.put(tf("a1")))
        p2 = asyncio.create_task(ch.put(tf("b0")))
        await settle()
        p1.cancel()
        with pytest.raises(asyncio.CancelledError):
            await p1
        assert (await ch.get()).text == "a0"
        await asyncio.wait_for(p2, 0.5)
        assert (await ch.get()).text == "b0"
        assert ch.depth == 0
        assert ch.stats.sent == ch.stats.delivered == 2  # the cancelled put never counted as sent

    run(scenario())


def test_putter_woken_and_cancelled_at_once_hands_the_free_slot_on() -> None:
    async def scenario() -> None:
        ch: Channel[TextFrame] = Channel(1, producers=2)
        await ch.put(tf("a0"))
        p1 = asyncio.create_task(ch.put(tf("a1")))
        p2 = asyncio.create_task(ch.put(tf("b0")))
        await settle()
        assert ch.get_nowait() is not None  # frees the slot and wakes p1 ...
        p1.cancel()  # ... which is cancelled before it runs: p2 must get the slot
        with pytest.raises(asyncio.CancelledError):
            await p1
        await asyncio.wait_for(p2, 0.5)
        assert ch.depth == 1
        assert (await ch.get()).text == "b0"

    run(scenario())


# -- property: block edges lose, duplicate and reorder nothing ------------------------------------------------
yield_counts = st.integers(min_value=0, max_value=3)


@settings(max_examples=120, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=4),
    producers=st.lists(st.lists(yield_counts, max_size=25), min_size=1, max_size=4),
    consumer_yields=st.lists(yield_counts, min_size=1, max_size=20),
    relay_capacity=st.integers(min_value=1, max_value=3),
)
def test_property_block_edges_deliver_every_frame_once_in_per_producer_order(
    capacity: int, producers: list[list[int]], consumer_yields: list[int], relay_capacity: int
) -> None:
    """Fan-in of several producers into one channel, then a relay into a second channel."""

    async def scenario() -> list[tuple[int, int]]:
        first: Channel[TextFrame] = Channel(capacity, producers=len(producers))
        second: Channel[TextFrame] = Channel(relay_capacity)
        depths: list[int] = []

        async def producer(p: int, yields: list[int]) -> None:
            for i, n in enumerate(yields):
                for _ in range(n):
                    await asyncio.sleep(0)
                await first.put(tf(f"{p}:{i}"))
                depths.append(first.depth)
            first.close_producer()

        async def relay() -> None:
            while True:
                try:
                    frame = await first.get()
                except EndOfStream:
                    break
                await second.put(frame)
                depths.append(second.depth)
            second.close_producer()

        async def consumer() -> list[tuple[int, int]]:
            got = []
            k = 0
            while True:
                for _ in range(consumer_yields[k % len(consumer_yields)]):
                    await asyncio.sleep(0)
                k += 1
                try:
                    frame = await second.get()
                except EndOfStream:
                    return got
                p, i = frame.text.split(":")
                got.append((int(p), int(i)))

        tasks = [asyncio.create_task(producer(p, y)) for p, y in enumerate(producers)]
        relay_task = asyncio.create_task(relay())
        got = await consumer()
        await asyncio.gather(*tasks, relay_task)
        assert max(depths, default=0) <= max(capacity, relay_capacity)
        assert first.stats.peak_depth <= capacity and second.stats.peak_depth <= relay_capacity
        assert first.stats.sent == first.stats.delivered == second.stats.delivered == len(got)
        return got

    got = run(scenario())
    expected = {(p, i) for p, y in enumerate(producers) for i in range(len(y))}
    assert len(got) == len(expected)  # nothing duplicated ...
    assert set(got) == expected  # ... nothing lost ...
    for p in range(len(producers)):  # ... and each producer's frames arrive in the order it sent them
        assert [i for q, i in got if q == p] == list(range(len(producers[p])))


def test_a_channel_that_runs_ahead_delivers_a_paused_scope_and_still_purges_a_cancelled_one() -> None:
    """An input declared ``runs_ahead`` (a TTS working on a held reply) gets a paused scope's frames; a
    holding channel beside it keeps them until the scope resumes; a cancel purges both."""

    async def scenario() -> None:
        scopes = ScopeRegistry()
        ahead: Channel[TextFrame] = Channel(8, scopes=scopes, hold_paused=False)
        held: Channel[TextFrame] = Channel(8, scopes=scopes)
        s = scopes.open("reply")
        scopes.pause(s)
        for ch in (ahead, held):
            await ch.put(TextFrame("a", scope=s))
            await ch.put(TextFrame("b", scope=s))
        assert (await ahead.get()).text == "a"
        assert held.get_nowait() is None
        scopes.cancel(s)
        assert ahead.get_nowait() is None and held.get_nowait() is None

    run(scenario())
