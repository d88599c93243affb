"""Sessions: a graph in, frames and events out; failures end one session, named, without a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from ah.runtime.clock import VirtualClock
from ah.runtime.session import Session, SessionResult
from tests.runtime_nodes import events_of, graph, texts_of

T = TypeVar("T")
HANG_GUARD_S = 10.0


def run(coro: Awaitable[T]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, HANG_GUARD_S)

    return asyncio.run(guarded())


def session_of(text: str, **kwargs: object) -> Session:
    return Session(graph(text), clock=VirtualClock(auto_advance=True), **kwargs)  # type: ignore[arg-type]


CHAIN = """
graph: chain
nodes:
  src:  {type: test.count, params: {count: 40}}
  a:    {type: test.relay}
  b:    {type: test.relay}
  sink: {type: test.recorder}
edges:
  - {edge: src.out -> a.inp, capacity: 2}
  - {edge: a.out -> b.inp, capacity: 1}
  - b.out -> sink.inp
"""


def test_end_of_stream_propagates_through_a_chain_and_the_session_ends() -> None:
    s = session_of(CHAIN)
    result = run(s.run())
    assert result.ok and result.failure is None and not result.cancelled
    assert texts_of(s) == [f"f{i}" for i in range(40)]
    assert [e.data for e in events_of(s, "recorder_done")] == [{"frames": 40}]
    kinds = [e.kind for e in s.events]
    assert kinds[0] == "session_started" and kinds[-1] == "session_ended"
    assert s.events[-1].data["ok"] is True


def test_channel_stats_are_reported_per_input() -> None:
    s = session_of(CHAIN)
    result = run(s.run())
    assert set(result.channels) == {"a.inp", "b.inp", "sink.inp"}
    for name, cap in (("a.inp", 2), ("b.inp", 1), ("sink.inp", 32)):
        st = result.channels[name]
        assert st["sent"] == st["delivered"] == 40
        assert 1 <= st["peak_depth"] <= cap
        assert st["dropped_overflow"] == st["discarded_cancelled"] == st["discarded_unconsumed"] == 0
    assert result.channels["b.inp"]["peak_depth"] == 1


def test_drop_oldest_edge_in_a_session_drops_for_a_slow_consumer_and_counts() -> None:
    text = """
graph: live
nodes:
  mic:  {type: test.count, params: {count: 50}}
  sink: {type: test.recorder, params: {every_s: 0.02}}
edges:
  - {edge: mic.out -> sink.inp, policy: drop_oldest, capacity: 4}
"""
    s = session_of(text)
    result = run(s.run())
    assert result.ok
    st = result.channels["sink.inp"]
    got = texts_of(s)
    assert st["dropped_overflow"] > 0
    assert st["sent"] == 50 and st["delivered"] == len(got)
    assert st["delivered"] + st["dropped_overflow"] == 50
    assert got[-4:] == ["f46", "f47", "f48", "f49"]  # the newest are kept
    assert got == sorted(got, key=lambda t: int(t[1:]))  # whatever survives is in order


def test_fan_in_and_fan_out_in_a_graph() -> None:
    text = """
graph: fan
nodes:
  x:    {type: test.count, params: {count: 10, prefix: x}}
  y:    {type: test.count, params: {count: 7, prefix: y}}
  mix:  {type: test.recorder}
  copy: {type: test.recorder}
edges:
  - {edge: x.out -> mix.inp, capacity: 1}
  - {edge: y.out -> mix.inp, capacity: 1}
  - x.out -> copy.inp
"""
    s = session_of(text)
    result = run(s.run())
    assert result.ok
    mix = texts_of(s, "mix")
    # Fan-in: the input ends only after both producers ended; each producer's order is kept.
    assert sorted(mix) == sorted([f"x{i}" for i in range(10)] + [f"y{i}" for i in range(7)])
    assert [t for t in mix if t[0] == "x"] == [f"x{i}" for i in range(10)]
    assert [t for t in mix if t[0] == "y"] == [f"y{i}" for i in range(7)]
    # Fan-out: the second consumer of x's output got every frame too.
    assert texts_of(s, "copy") == [f"x{i}" for i in range(10)]


def test_a_consumer_that_stops_early_unblocks_its_producer_and_the_session_ends() -> None:
    text = """
graph: early
nodes:
  src:  {type: test.count, params: {count: 1000}}
  sink: {type: test.recorder, params: {take: 3}}
edges:
  - {edge: src.out -> sink.inp, capacity: 2}
"""
    s = session_of(text)
    result = run(s.run())
    assert result.ok
    assert texts_of(s) == ["f0", "f1", "f2"]
    st = result.channels["sink.inp"]
    assert st["delivered"] == 3
    assert st["delivered"] + st["discarded_unconsumed"] == 1000  # the rest counted, not lost silently


def test_a_node_on_a_virtual_clock_sees_exact_times() -> None:
    text = """
graph: paced
nodes:
  src:  {type: test.count, params: {count: 4, every_s: 0.25}}
  sink: {type: test.recorder}
edges:
  - src.out -> sink.inp
"""
    s = session_of(text)
    t0 = time.perf_counter()
    assert run(s.run()).ok
    assert time.perf_counter() - t0 < 0.5  # 1 s of session time, run in a fraction of it
    assert [e.data["t"] for e in events_of(s, "frame")] == [0.0, 0.25, 0.5, 0.75]
    assert s.clock.now() == 1.0


# -- failures ----------------------------------------------------------------------------------------------
CRASH = """
graph: crash
nodes:
  src:  {type: test.count, params: {count: 1000000}}
  boom: {type: test.boom, params: {after: 3}}
  sink: {type: test.recorder}
  idle: {type: test.idle}
edges:
  - {edge: src.out -> boom.inp, capacity: 1}
  - boom.out -> sink.inp
"""


def test_a_node_that_raises_ends_its_session_with_an_event_naming_it_without_a_hang() -> None:
    s = session_of(CRASH)
    # The source is blocked on a full channel and 'idle' never ends by itself: only the failure
    # handling can end this session; a hang trips the guard in run().
    result = run(s.run())
    assert not result.ok
    assert result.failure is not None
    assert result.failure.node_id == "boom" and result.failure.node_type == "test.boom"
    assert isinstance(result.failure.error, RuntimeError)
    [failed] = events_of(s, "node_failed")
    assert failed.node == "boom"
    assert failed.data["type"] == "test.boom"
    assert failed.data["error"] == "RuntimeError: boom after 3 frames"
    assert "boom after 3 frames" in failed.data["traceback"]
    assert texts_of(s) == ["f0", "f1", "f2"]
    assert s.events[-1].kind == "session_ended" and s.events[-1].data["ok"] is False
    # The source was stopped promptly, not left to spin through its million frames into a channel
    # whose consumer is gone (a send into nowhere must still let the cancellation land).
    assert result.channels["boom.inp"]["discarded_unconsumed"] < 10


def test_a_source_sending_into_an_unconnected_output_is_stopped_when_another_node_fails() -> None:
    text = """
graph: unconnected
nodes:
  busy: {type: test.count, params: {count: 1000000, prefix: b}}
  src:  {type: test.count, params: {count: 1}}
  boom: {type: test.boom, params: {after: 0}}
edges:
  - src.out -> boom.inp
"""
    s = session_of(text)
    result = run(s.run())
    assert result.failure is not None and result.failure.node_id == "boom"
    stopped = {e.node: e.data["sent"] for e in events_of(s, "source_stopped")}
    assert stopped["src"] == 1
    assert stopped["busy"] < 10  # cancelled at once, not after a million sends into nowhere


def test_one_session_crashing_leaves_another_session_of_the_same_graph_untouched() -> None:
    text = """
graph: pair
nodes:
  src:  {type: test.count, params: {count: 60, every_s: 0.01}}
  boom: {type: test.boom, params: {after: 5, only_if_attached: true}}
  sink: {type: test.recorder}
edges:
  - {edge: src.out -> boom.inp, capacity: 1}
  - {edge: boom.out -> sink.inp, capacity: 1}
"""
    g = graph(text)
    clock = VirtualClock(auto_advance=True)  # one time line, so the two sessions interleave
    crashing = Session(g, clock=clock, attachments={"crash": True})
    healthy = Session(g, clock=clock)

    async def both() -> tuple[SessionResult, SessionResult]:
        bad_run = asyncio.create_task(crashing.run())
        good_run = asyncio.create_task(healthy.run())
        bad = await bad_run
        assert not good_run.done()  # the healthy session was still running when the other one failed
        return bad, await good_run

    bad, good = run(both())
    assert not bad.ok and bad.failure is not None and bad.failure.node_id == "boom"
    assert good.ok and good.failure is None
    assert texts_of(healthy) == [f"f{i}" for i in range(60)]
    assert events_of(healthy, "node_failed") == []
    assert good.channels["sink.inp"]["delivered"] == 60
    assert healthy.id != crashing.id


def test_a_node_failing_in_setup_fails_the_session_at_start_naming_it() -> None:
    text = """
graph: setup
nodes:
  model: {type: test.setup_fails}
  src:   {type: test.count, params: {count: 5}}
  sink:  {type: test.recorder}
edges:
  - model.out -> sink.inp
  - src.out -> sink.inp
"""
    s = session_of(text)
    result = run(s.run())
    assert not result.ok
    assert result.failure is not None and result.failure.node_id == "model"
    assert isinstance(result.failure.error, OSError)
    [failed] = events_of(s, "node_failed")
    assert failed.node == "model" and failed.data["type"] == "test.setup_fails"
    assert failed.data["error"] == "OSError: model file missing"
    # No node ran: nothing was sent anywhere.
    assert events_of(s, "frame") == [] and events_of(s, "recorder_done") == []
    assert result.channels["sink.inp"]["sent"] == 0


def test_cancelling_a_running_session_cancels_its_nodes_and_reports_the_end() -> None:
    s = session_of(CRASH.replace("after: 3", "after: 1000000000"))

    async def scenario() -> None:
        task = asyncio.create_task(s.run())
        for _ in range(50):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert events_of(s, "node_failed") == []
    assert s.events[-1].kind == "session_ended" and s.events[-1].data["ok"] is False
