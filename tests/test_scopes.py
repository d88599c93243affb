"""Cancellation scopes: cancel stops a reply's producers and purges its frames; pause holds them.

The last test is a property test: a random schedule of frames across several scopes (one a child of
another) goes through a chain of nodes with random capacities while scopes are cancelled, paused and
resumed at random points. No node may ever receive a frame of a scope after ``cancel`` returned, and
every frame of every scope that was not cancelled must arrive, in order.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ah.runtime.channel import Channel, EndOfStream
from ah.runtime.clock import VirtualClock
from ah.runtime.frames import NO_SCOPE, Frame, TextFrame
from ah.runtime.graph_loader import Graph
from ah.runtime.node import SessionEvent
from ah.runtime.scopes import ScopeRegistry, ScopeState
from ah.runtime.session import Session, SessionResult
from tests.runtime_nodes import events_of, graph, texts_of

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 5.0) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


async def settle(n: int = 30) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def tf(text: str, scope: int = NO_SCOPE) -> TextFrame:
    return TextFrame(text, scope=scope)


def texts(frames: list[TextFrame]) -> list[str]:
    return [f.text for f in frames]


# -- cancel ---------------------------------------------------------------------------------------------
def test_cancel_stops_run_in_work_and_purges_what_it_queued() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        ch: Channel[TextFrame] = Channel(100, scopes=scopes)
        s = scopes.open()
        stopped: list[str] = []

        async def producer() -> str:
            i = 0
            try:
                while True:
                    await ch.put(tf(f"s{i}", s))
                    i += 1
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                stopped.append("cancelled")
                raise

        reply = asyncio.create_task(scopes.run_in(s, producer()))
        await settle(10)
        queued = ch.depth
        assert queued > 0
        purged = scopes.cancel(s)
        assert await reply is None  # run_in reports the cancel as "no result", not as an error
        assert stopped == ["cancelled"]
        assert purged == queued and ch.depth == 0
        assert ch.stats.discarded_cancelled == queued
        sent = ch.stats.sent
        await settle()
        assert ch.stats.sent == sent  # the producer is gone: nothing more is sent
        assert scopes.state(s) is ScopeState.CANCELLED
        scope = scopes.get(s)
        assert scope is not None and scope.purged == queued and not scope.tasks

    run(scenario())


def test_run_in_returns_the_result_and_runs_unscoped_work_directly() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        s = scopes.open()

        async def work(x: int) -> int:
            await asyncio.sleep(0)
            return x * 2

        assert await scopes.run_in(s, work(21)) == 42
        assert await scopes.run_in(NO_SCOPE, work(1)) == 2
        assert await scopes.run_in(999, work(2)) == 4  # unknown scope: nothing can cancel it

    run(scenario())


def test_run_in_a_cancelled_scope_never_starts_the_work() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        s = scopes.open()
        scopes.cancel(s)
        started: list[bool] = []

        async def work() -> int:
            started.append(True)
            return 1

        coro = work()
        assert await scopes.run_in(s, coro) is None
        assert started == []
        assert coro.cr_frame is None  # closed, so no "never awaited" warning

    run(scenario())


def test_purge_removes_only_the_cancelled_scope_from_every_channel_and_counts() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        a: Channel[TextFrame] = Channel(10, scopes=scopes)
        b: Channel[TextFrame] = Channel(10, scopes=scopes)
        s, keep = scopes.open(), scopes.open()
        for ch in (a, b):
            for i in range(3):
                await ch.put(tf(f"s{i}", s))
                await ch.put(tf(f"k{i}", keep))
                await ch.put(tf(f"n{i}"))
        assert scopes.cancel(s) == 6
        for ch in (a, b):
            assert ch.stats.discarded_cancelled == 3
            assert texts([ch.get_nowait() for _ in range(6)]) == ["k0", "n0", "k1", "n1", "k2", "n2"]  # type: ignore[misc]
        await a.put(tf("late", s))  # a send after the cancel is a counted no-op
        assert a.depth == 0 and a.stats.discarded_cancelled == 4

    run(scenario())


def test_cancel_is_idempotent_and_notifies_once() -> None:
    scopes = ScopeRegistry()
    seen: list[tuple[int, ScopeState]] = []
    scopes.observe(lambda sc: seen.append((sc.id, sc.state)))
    ch: Channel[TextFrame] = Channel(4, scopes=scopes)
    s = scopes.open()
    ch._buf.append(tf("x", s))  # queued without an event loop; put would need one
    assert scopes.cancel(s) == 1
    assert scopes.cancel(s) == 0
    assert scopes.cancel(12345) == 0  # unknown scope: nothing happens
    assert scopes.state(s) is ScopeState.CANCELLED
    assert seen == [(s, ScopeState.CANCELLED)]
    assert ch.stats.discarded_cancelled == 1


def test_children_are_cancelled_with_their_parent() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        ch: Channel[TextFrame] = Channel(10, scopes=scopes)
        parent = scopes.open("reply")
        child = scopes.open("tts", parent=parent)
        grandchild = scopes.open("chunk", parent=child)
        other = scopes.open("other")
        for sid in (parent, child, grandchild, other):
            await ch.put(tf(str(sid), sid))
        child_work = asyncio.create_task(scopes.run_in(grandchild, asyncio.Event().wait()))
        await settle()

        assert scopes.cancel(parent) == 3
        assert await child_work is None
        for sid in (parent, child, grandchild):
            assert scopes.state(sid) is ScopeState.CANCELLED
        assert scopes.state(other) is ScopeState.ACTIVE
        assert texts([ch.get_nowait()]) == [str(other)]  # type: ignore[list-item]

        # A child opened after its parent was cancelled belongs to a cancelled reply from the start.
        late = scopes.open("tts", parent=parent)
        assert scopes.state(late) is ScopeState.CANCELLED
        await ch.put(tf("late", late))
        assert ch.depth == 0

    run(scenario())


def test_cancel_of_a_finished_scope_still_purges_its_queued_frames() -> None:
    """A reply is finished when generation ends; its audio may still be queued when the user barges in."""

    async def scenario() -> None:
        scopes = ScopeRegistry()
        ch: Channel[TextFrame] = Channel(10, scopes=scopes)
        s = scopes.open()
        for i in range(3):
            await ch.put(tf(f"s{i}", s))
        scopes.finish(s)
        assert texts([await ch.get()]) == ["s0"]  # a finished scope's frames keep flowing ...
        assert scopes.cancel(s) == 2  # ... until it is cancelled
        assert ch.depth == 0
        assert scopes.state(s) is ScopeState.CANCELLED

    run(scenario())


def test_a_producer_blocked_on_a_full_channel_drops_its_frame_and_passes_the_slot_on() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        ch: Channel[TextFrame] = Channel(1, scopes=scopes, producers=2)
        s, keep = scopes.open(), scopes.open()
        await ch.put(tf("k0", keep))
        p_s = asyncio.create_task(ch.put(tf("s0", s)))  # first in line for the slot
        p_k = asyncio.create_task(ch.put(tf("k1", keep)))
        await settle()
        scopes.cancel(s)
        assert texts([await ch.get()]) == ["k0"]
        await asyncio.wait_for(asyncio.gather(p_s, p_k), 0.5)
        assert texts([await ch.get()]) == ["k1"]
        assert ch.stats.discarded_cancelled == 1

    run(scenario())


def test_spawned_work_is_cancelled_with_its_scope() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        s = scopes.open()
        task = scopes.spawn(s, asyncio.Event().wait())
        await settle()
        scopes.cancel(s)
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())


def test_spawn_under_a_cancelled_scope_never_runs_the_work() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        s = scopes.open()
        scopes.cancel(s)
        started: list[bool] = []

        async def work() -> None:
            started.append(True)

        coro = work()
        task = scopes.spawn(s, coro)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert started == []
        assert coro.cr_frame is None  # closed, so no "never awaited" warning

    run(scenario())


# -- the caller's own cancellation --------------------------------------------------------------------------
def test_the_callers_cancellation_propagates_through_run_in_and_stops_the_work() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        s = scopes.open()
        work_cancelled = asyncio.Event()

        async def work() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                work_cancelled.set()
                raise

        caller = asyncio.create_task(scopes.run_in(s, work()))
        await settle()
        caller.cancel()  # e.g. the session shuts down
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.wait_for(work_cancelled.wait(), 0.5)
        assert scopes.state(s) is ScopeState.ACTIVE  # the scope itself was not cancelled

    run(scenario())


def test_the_callers_cancellation_is_not_swallowed_when_the_scope_is_cancelled_in_the_same_tick() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        s = scopes.open()
        after: list[str] = []

        async def caller_body() -> None:
            await scopes.run_in(s, asyncio.Event().wait())
            after.append("went on as if not cancelled")
            await asyncio.Event().wait()  # a caller that swallowed its cancel would hang its task group

        caller = asyncio.create_task(caller_body())
        await settle()
        scopes.cancel(s)  # barge-in ...
        caller.cancel()  # ... while the session shuts down
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, 1.0)
        assert after == []

    run(scenario())


# -- pause / resume / finish ----------------------------------------------------------------------------------
def test_pause_holds_a_scopes_frames_in_every_channel_of_a_chain_and_resume_releases_them_in_order() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        first: Channel[TextFrame] = Channel(8, scopes=scopes)
        second: Channel[TextFrame] = Channel(8, scopes=scopes)
        s, other = scopes.open(), scopes.open()
        received: list[str] = []

        async def relay() -> None:
            while True:
                try:
                    frame = await first.get()
                except EndOfStream:
                    second.close_producer()
                    return
                await second.put(frame)

        async def sink() -> None:
            while True:
                try:
                    received.append((await second.get()).text)
                except EndOfStream:
                    return

        tasks = [asyncio.create_task(relay()), asyncio.create_task(sink())]
        await second.put(tf("s0", s))  # already downstream when the pause comes
        assert scopes.pause(s)
        assert not scopes.pause(s)  # only an active scope can be paused
        for i in range(1, 4):
            await first.put(tf(f"s{i}", s))
            await first.put(tf(f"o{i}", other))
        await settle()
        assert received == ["o1", "o2", "o3"]  # other scopes pass; s is held where it is
        assert first.depth == 3 and second.depth == 1

        assert scopes.resume(s)
        assert not scopes.resume(s)
        first.close_producer()
        await asyncio.gather(*tasks)
        assert received == ["o1", "o2", "o3", "s0", "s1", "s2", "s3"]
        assert first.stats.discarded_cancelled == second.stats.discarded_cancelled == 0

    run(scenario())


def test_finishing_a_paused_scope_releases_its_frames() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        ch: Channel[TextFrame] = Channel(8, scopes=scopes)
        s = scopes.open()
        scopes.pause(s)
        await ch.put(tf("s0", s))
        waiter = asyncio.create_task(ch.get())
        await settle()
        assert not waiter.done() and ch.get_nowait() is None
        scopes.finish(s)
        assert texts([await asyncio.wait_for(waiter, 0.5)]) == ["s0"]
        assert scopes.state(s) is ScopeState.DONE

    run(scenario())


def test_cancel_of_a_paused_scope_discards_its_held_frames_and_ends_a_closed_stream() -> None:
    async def scenario() -> None:
        scopes = ScopeRegistry()
        ch: Channel[TextFrame] = Channel(8, scopes=scopes)
        s = scopes.open()
        scopes.pause(s)
        await ch.put(tf("s0", s))
        ch.close_producer()
        waiter = asyncio.create_task(ch.get())
        await settle()
        assert not waiter.done()  # held, not ended
        assert scopes.cancel(s) == 1
        with pytest.raises(EndOfStream):
            await asyncio.wait_for(waiter, 0.5)

    run(scenario())


# -- the same, through a session --------------------------------------------------------------------------------
CHAIN = """
graph: chain
nodes:
  src:  {{type: test.feed}}
  r1:   {{type: test.relay}}
  r2:   {{type: test.relay}}
  sink: {{type: test.recorder, params: {{every_s: {slow}}}}}
edges:
  - {{edge: src.out -> r1.inp, capacity: {c1}}}
  - {{edge: r1.out -> r2.inp, capacity: {c2}}}
  - {{edge: r2.out -> sink.inp, capacity: {c3}}}
"""


@functools.cache
def chain(c1: int = 16, c2: int = 16, c3: int = 16, slow: float = 0.0) -> Graph:
    """Feed -> relay -> relay -> recorder; ``slow`` makes the recorder take that long per frame."""
    return graph(CHAIN.format(c1=c1, c2=c2, c3=c3, slow=slow))


class Driver:
    """Runs a session of a graph fed by the test, and waits for what its recorder reports."""

    def __init__(self, g: Graph) -> None:
        self.feed: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.received: asyncio.Queue[TextFrame] = asyncio.Queue()
        self.session = Session(
            g, clock=VirtualClock(auto_advance=True), attachments={"feed": self.feed}, on_event=self._on_event
        )
        self.scopes = self.session.scopes
        self.task: asyncio.Task[SessionResult] = asyncio.create_task(self.session.run())

    def _on_event(self, event: SessionEvent) -> None:
        if event.kind == "frame":
            self.received.put_nowait(event.data["frame"])

    async def expect(self, n: int) -> list[str]:
        return [(await asyncio.wait_for(self.received.get(), 1.0)).text for _ in range(n)]

    async def end(self) -> SessionResult:
        self.feed.put_nowait(None)
        return await asyncio.wait_for(self.task, 2.0)


def test_a_paused_reply_is_held_in_a_running_session_and_resumes_where_it_stopped() -> None:
    async def scenario() -> None:
        d = Driver(chain())
        s, other = d.scopes.open(), d.scopes.open()
        for i in range(2):
            d.feed.put_nowait(tf(f"s{i}", s))
        assert await d.expect(2) == ["s0", "s1"]

        d.scopes.pause(s)  # a possible false interruption
        for i in range(2, 6):
            d.feed.put_nowait(tf(f"s{i}", s))
            d.feed.put_nowait(tf(f"o{i}", other))
        assert await d.expect(4) == ["o2", "o3", "o4", "o5"]
        await settle(50)
        assert d.received.empty()  # nothing of s while it is paused

        d.scopes.resume(s)
        assert await d.expect(4) == ["s2", "s3", "s4", "s5"]
        result = await d.end()
        assert result.ok
        assert texts_of(d.session) == ["s0", "s1", "o2", "o3", "o4", "o5", "s2", "s3", "s4", "s5"]

    run(scenario())


def test_a_cancelled_reply_is_purged_from_a_running_session() -> None:
    async def scenario() -> None:
        d = Driver(chain(2, 2, 2))
        s, nxt = d.scopes.open(), d.scopes.open()
        d.scopes.pause(s)  # let s fill the chain without being consumed
        for i in range(6):
            d.feed.put_nowait(tf(f"s{i}", s))
        await settle(50)
        purged = d.scopes.cancel(s)
        assert purged > 0
        for i in range(3):
            d.feed.put_nowait(tf(f"n{i}", nxt))
        assert await d.expect(3) == ["n0", "n1", "n2"]
        result = await d.end()
        assert result.ok
        assert texts_of(d.session) == ["n0", "n1", "n2"]
        assert events_of(d.session, "late_frame") == []
        discarded = sum(c["discarded_cancelled"] for c in result.channels.values())
        assert discarded == 6  # every frame of s is accounted for: purged, or dropped at a later send

    run(scenario())


# -- property: nothing of a cancelled scope after cancel returns; everything else, in order -----------------------
# Scope 0 is NO_SCOPE; 1 and 3 are replies; 2 is a child of 1. The test keeps its own model of the
# scope states (so a registry that forgot to cascade a cancel, say, disagrees with it).
PARENT = {1: 0, 2: 1, 3: 0}
TICK_S = 0.01  # the slow recorder's time per frame

ops = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 3), st.integers(1, 4)),  # a burst of n frames
    st.tuples(st.just("send"), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("yield"), st.just(0), st.integers(1, 6)),  # let ready tasks run
    st.tuples(st.just("tick"), st.just(0), st.integers(1, 4)),  # let session time pass: ~n frames consumed
    st.tuples(st.sampled_from(["cancel", "pause", "resume", "finish"]), st.integers(1, 3), st.just(0)),
)


def model_step(model: dict[int, ScopeState], op: str, k: int) -> None:
    state = model[k]
    if op == "cancel" and state is not ScopeState.CANCELLED:
        model[k] = ScopeState.CANCELLED
        for child, parent in PARENT.items():
            if parent == k:
                model_step(model, "cancel", child)
    elif op == "pause" and state is ScopeState.ACTIVE:
        model[k] = ScopeState.PAUSED
    elif op == "resume" and state is ScopeState.PAUSED:
        model[k] = ScopeState.ACTIVE
    elif op == "finish" and state in (ScopeState.ACTIVE, ScopeState.PAUSED):
        model[k] = ScopeState.DONE


@settings(max_examples=120, deadline=None)
@given(
    caps=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    slow=st.sampled_from([0.0, TICK_S]),
    schedule=st.lists(ops, max_size=40),
)
def test_property_no_frame_of_a_cancelled_scope_after_cancel_and_all_others_in_order(
    caps: tuple[int, int, int], slow: float, schedule: list[tuple[str, int, int]]
) -> None:
    async def scenario() -> tuple[Session, SessionResult, dict[int, list[str]], dict[int, ScopeState]]:
        d = Driver(chain(*caps, slow=slow))
        ids = {0: NO_SCOPE}
        for k in (1, 2, 3):
            ids[k] = d.scopes.open(parent=ids[PARENT[k]])
        model = {k: ScopeState.ACTIVE for k in (1, 2, 3)}
        sent: dict[int, list[str]] = {k: [] for k in ids}
        for op, k, n in schedule:
            if op == "send":
                for _ in range(n):
                    text = f"{k}:{len(sent[k])}"
                    sent[k].append(text)
                    d.feed.put_nowait(tf(text, ids[k]))
            elif op == "yield":
                await settle(n)
            elif op == "tick":
                await d.session.clock.sleep(n * TICK_S)
            else:
                getattr(d.scopes, op)(ids[k])
                model_step(model, op, k)
            assert {k: d.scopes.state(ids[k]) for k in model} == model
        for sid in ids.values():
            d.scopes.resume(sid)
        result = await d.end()
        return d.session, result, sent, model

    session, result, sent, model = run(scenario())
    assert result.ok
    # No node (relay or recorder) ever received a frame of a scope that was cancelled or paused at
    # that moment: in particular nothing of a scope after its cancel returned.
    assert events_of(session, "late_frame") == []
    assert events_of(session, "held_frame_delivered") == []
    got: dict[int, list[str]] = {k: [] for k in sent}
    for text in texts_of(session):
        got[int(text.split(":")[0])].append(text)
    for k, frames in sent.items():
        if k and model[k] is ScopeState.CANCELLED:
            assert got[k] == frames[: len(got[k])]  # what came before the cancel, in order
        else:
            assert got[k] == frames  # every frame, in order, exactly once
