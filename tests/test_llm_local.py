"""``llm.local`` with the real SmolLM2-135M model, driven through a graph like any node.

Replies are deterministic (temperature 0 and a seed), so the tests check the contract — streaming,
bounds, history, cancellation, one model per process — not what the 135M model says. Timings are
printed (run with ``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ah.nodes import inference
from ah.nodes.llm_local import POOL, LocalLlm, _Handoff
from ah.nodes.model_store import MANIFEST, ModelMissing, is_present
from ah.runtime.graph_loader import load_graph
from ah.runtime.sdk import ControlFrame, Node, Output, Params, ReplyTextFrame, SessionEvent, UserTurnFrame
from ah.runtime.session import Session, SessionResult
from tests.runtime_nodes import events_of, frames_of, registry

T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    not is_present(MANIFEST["smollm2-135m"]), reason="run `ah models pull smollm2-135m` (or `make models`)"
)

DETERMINISTIC = {"temperature": 0.0, "seed": 7, "max_tokens": 40}


class TurnSource(Node[Params]):
    """Sends what the test puts in ``attachments["feed"]``: ControlFrames to ``events``, user turns
    (each in a newly opened reply scope) to ``turns``; ``None`` ends it."""

    turns = Output(UserTurnFrame)
    events = Output(ControlFrame)

    async def run(self) -> None:
        feed: asyncio.Queue[ControlFrame | UserTurnFrame | None] = self.ctx.attachments["feed"]
        while (item := await feed.get()) is not None:
            if isinstance(item, UserTurnFrame):
                if not item.scope:
                    item.scope = self.ctx.scopes.open("reply")
                await self.turns.send(item)
            else:
                await self.events.send(item)


REGISTRY = registry()
REGISTRY.register("test.turns", TurnSource)


def graph_text(params: dict[str, Any]) -> str:
    return f"""
graph: llm-local-test
nodes:
  src:  {{type: test.turns}}
  llm:  {{type: llm.local, params: {json.dumps(params)}}}
  rec:  {{type: test.recorder}}
  errs: {{type: test.recorder}}
edges:
  - src.turns -> llm.turns
  - src.events -> llm.events
  - llm.text -> rec.inp
  - llm.errors -> errs.inp
"""


class Harness:
    """One session of the test graph, fed by the test, observed through its events."""

    def __init__(self, params: dict[str, Any], on_event: Callable[[SessionEvent], None] | None = None):
        self.feed: asyncio.Queue[ControlFrame | UserTurnFrame | None] = asyncio.Queue()
        self.session = Session(
            load_graph("llm_local_test.yaml", REGISTRY, text=graph_text(params)),
            attachments={"feed": self.feed},
            on_event=on_event,
        )
        self.task: asyncio.Task[SessionResult] | None = None

    @property
    def llm(self) -> LocalLlm:
        node = self.session.nodes["llm"]
        assert isinstance(node, LocalLlm)
        return node

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.session.run())

    def say(self, text: str) -> None:
        self.feed.put_nowait(UserTurnFrame(text))

    def started(self, variables: dict[str, object] | None = None) -> None:
        self.feed.put_nowait(ControlFrame("conversation_started", {"dynamic_variables": variables or {}}))

    def replies(self) -> list[ReplyTextFrame]:
        out = []
        for f in frames_of(self.session, "rec"):
            assert isinstance(f, ReplyTextFrame)
            out.append(f)
        return out

    def stops(self) -> list[ReplyTextFrame]:
        return [f for f in self.replies() if f.kind == "stop"]

    async def until(self, cond: Callable[[], bool], within_s: float = 30.0) -> None:
        deadline = time.monotonic() + within_s
        while not cond():
            assert self.task is not None
            if self.task.done():
                raise AssertionError(f"session ended early: {self.task.result()}")
            if time.monotonic() > deadline:
                raise AssertionError("timed out")
            await asyncio.sleep(0.005)

    async def finish(self) -> SessionResult:
        self.feed.put_nowait(None)
        assert self.task is not None
        result = await asyncio.wait_for(self.task, 60)
        assert result.ok, result.failure
        assert not events_of(self.session, "late_frame")
        assert not frames_of(self.session, "errs")
        return result


def run(coro: Awaitable[T]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, 90)

    return asyncio.run(guarded())


def by_scope(frames: list[ReplyTextFrame]) -> dict[int, list[ReplyTextFrame]]:
    out: dict[int, list[ReplyTextFrame]] = {}
    for f in frames:
        out.setdefault(f.scope, []).append(f)
    return out


def check_reply(frames: list[ReplyTextFrame]) -> str:
    """start, one or more deltas, stop; the stop's text is the deltas joined; returns it."""
    kinds = [f.kind for f in frames]
    assert kinds[0] == "start" and kinds[-1] == "stop" and set(kinds[1:-1]) == {"delta"}, kinds
    text = frames[-1].text
    assert text.strip()
    assert text == "".join(f.text for f in frames[1:-1])
    assert not set(text) & set("*#`"), text
    return text


def test_a_turn_streams_start_deltas_stop_and_reports_timings() -> None:
    async def main() -> None:
        h = Harness(DETERMINISTIC)
        h.start()
        h.started()
        h.say("Hello! Can you tell me about the weather today?")
        await h.until(lambda: len(h.stops()) == 1)
        await h.finish()
        text = check_reply(h.replies())
        [ev] = events_of(h.session, "llm_reply")
        assert 0 < ev.data["tokens"] <= 40
        print(
            f"\nllm.local: load {h.llm.model.load_s * 1000:.0f} ms; first token {ev.data['first_token_ms']} ms; "
            f"{ev.data['tokens']} tokens at {ev.data['tokens_per_s']} tok/s; reply {text!r}"
        )

    run(main())


def test_max_tokens_bounds_the_reply() -> None:
    async def main() -> None:
        h = Harness({**DETERMINISTIC, "max_tokens": 5})
        h.start()
        h.say("Tell me a long story about a dragon and a knight.")
        await h.until(lambda: len(h.stops()) == 1)
        await h.finish()
        check_reply(h.replies())
        [ev] = events_of(h.session, "llm_reply")
        assert ev.data["tokens"] == 5 and ev.data["finish"] == "length"

    run(main())


def test_first_message_is_said_first_with_dynamic_variables() -> None:
    async def main() -> None:
        h = Harness({**DETERMINISTIC, "first_message": "Hi {{name}}, how can I help?"})
        h.start()
        h.started({"name": "Ada"})
        await h.until(lambda: len(h.stops()) == 1)
        h.say("What is your name?")
        await h.until(lambda: len(h.stops()) == 2)
        await h.finish()
        first, second = by_scope(h.replies()).values()
        assert check_reply(first) == "Hi Ada, how can I help?"
        assert [f.text for f in first[1:-1]] == ["Hi ", "Ada, ", "how ", "can ", "I ", "help?"]
        check_reply(second)
        assert h.llm.history[0] == {"role": "assistant", "content": "Hi Ada, how can I help?"}

    run(main())


def test_history_holds_past_exchanges_and_context_notes_up_to_history_turns() -> None:
    async def main() -> None:
        h = Harness({**DETERMINISTIC, "history_turns": 2, "system_prompt": "You help {{user}}."})
        h.start()
        h.started({"user": "Bob"})
        h.say("My favourite colour is green.")
        await h.until(lambda: len(h.stops()) == 1)
        h.feed.put_nowait(ControlFrame("contextual_update", {"text": "The user is in Paris."}))
        h.say("What is my favourite colour?")
        await h.until(lambda: len(h.stops()) == 2)
        h.say("Thanks.")
        await h.until(lambda: len(h.stops()) == 3)
        await h.finish()
        r1, r2, r3 = (check_reply(frames) for frames in by_scope(h.replies()).values())
        # A context note is added to the history without a reply of its own.
        assert len(events_of(h.session, "llm_reply")) == 3
        assert h.llm.history == [
            {"role": "user", "content": "My favourite colour is green."},
            {"role": "assistant", "content": r1},
            {"role": "system", "content": "The user is in Paris."},
            {"role": "user", "content": "What is my favourite colour?"},
            {"role": "assistant", "content": r2},
            {"role": "user", "content": "Thanks."},
            {"role": "assistant", "content": r3},
        ]
        # The next prompt: the system prompt with its variable, the last two exchanges, the turn.
        assert h.llm.prompt_messages("Bye.") == [
            {"role": "system", "content": "You help Bob."},
            *h.llm.history[3:],
            {"role": "user", "content": "Bye."},
        ]

    run(main())


def test_cancel_mid_generation_stops_the_reply_and_frees_the_model() -> None:
    async def main() -> None:
        h = Harness({"temperature": 0.0, "seed": 7, "max_tokens": 200})
        h.start()
        h.say("Tell me a long story about a dragon and a knight, with many details.")
        await h.until(lambda: any(f.kind == "delta" for f in h.replies()))
        scope = h.replies()[0].scope
        executor = inference.executor(POOL)
        t0 = time.perf_counter()
        h.session.scopes.cancel(scope)
        delivered = len(h.replies())
        # The model's thread runs one job at a time: this runs as soon as the cancelled one has stopped.
        t_free = await asyncio.get_running_loop().run_in_executor(executor, time.perf_counter)
        free_ms = (t_free - t0) * 1000
        await asyncio.sleep(0.05)
        assert len(h.replies()) == delivered  # nothing of the cancelled scope after the cancel
        assert not events_of(h.session, "llm_reply")  # the cancelled reply never finished
        h.say("Hello.")
        await h.until(lambda: len(h.stops()) == 1)
        await h.finish()
        replies = by_scope(h.replies())
        assert [f.kind for f in replies[scope]][-1] != "stop"
        [(_, answer)] = [(s, f) for s, f in replies.items() if s != scope]
        check_reply(answer)
        # The cut-off reply stays in the history as far as it was generated.
        partial = "".join(f.text for f in replies[scope] if f.kind == "delta")
        assert h.llm.history[:2] == [
            {
                "role": "user",
                "content": "Tell me a long story about a dragon and a knight, with many details.",
            },
            {"role": "assistant", "content": partial},
        ]
        print(f"\nllm.local: cancel -> model free in {free_ms:.1f} ms")

    run(main())


def test_sessions_share_one_model_and_seeded_replies_repeat() -> None:
    async def main() -> None:
        a, b = Harness(DETERMINISTIC), Harness(DETERMINISTIC)
        for h in (a, b):
            h.start()
            h.say("What do you like to do on weekends?")
        await a.until(lambda: len(a.stops()) == 1)
        await b.until(lambda: len(b.stops()) == 1)
        await a.finish()
        await b.finish()
        assert a.llm.model is b.llm.model
        assert sum(key[:2] == ("llama", str(a.llm.model.path)) for key in inference.loaded()) == 1
        # Same seed, temperature 0: the same reply, although the two generations shared one model.
        assert check_reply(a.replies()) == check_reply(b.replies())

    run(main())


def test_event_loop_stays_responsive_while_the_model_generates() -> None:
    async def main() -> None:
        h = Harness({"temperature": 0.0, "seed": 7, "max_tokens": 150})
        h.start()
        await h.until(lambda: h.llm._model is not None)  # set up: the load is not what we measure
        lags: list[float] = []
        done = False

        async def probe() -> None:
            while not done:
                t = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append((time.perf_counter() - t - 0.005) * 1000)

        prober = asyncio.get_running_loop().create_task(probe())
        h.say("Tell me a long story about a dragon and a knight, with many details.")
        await h.until(lambda: len(h.stops()) == 1)
        done = True
        await prober
        await h.finish()
        [ev] = events_of(h.session, "llm_reply")
        lags.sort()
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        print(
            f"\nllm.local: event-loop lag while generating {ev.data['tokens']} tokens "
            f"({ev.data['tokens_per_s']} tok/s): p50 {statistics.median(lags):.2f} ms, p99 {p99:.2f} ms, "
            f"max {lags[-1]:.2f} ms over {len(lags)} 5 ms sleeps"
        )
        assert len(lags) > 10

    run(main())


def test_a_missing_model_fails_the_session_at_start_naming_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AH_MODELS_DIR", str(tmp_path))
    h = Harness(DETERMINISTIC)
    result = run(h.session.run())
    assert not result.ok and result.failure is not None
    assert result.failure.node_id == "llm"
    assert isinstance(result.failure.error, ModelMissing)
    assert "ah models pull smollm2-135m" in str(result.failure.error)
    assert not frames_of(h.session)  # no node ran


def test_the_thread_to_loop_handoff_is_bounded_and_a_stop_releases_a_waiting_thread() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pipe = _Handoff(loop, bound=2)
        stop = threading.Event()
        accepted: list[bool] = []

        def producer() -> None:
            for piece in "abcde":
                accepted.append(pipe.put(piece, stop))
            pipe.close()

        job = loop.run_in_executor(None, producer)
        await asyncio.sleep(0.1)
        assert accepted == [True, True]  # the third waits for room
        assert await pipe.get() == ["a", "b"]
        got = []
        while (batch := await pipe.get()) is not None:
            got += batch
        await job
        assert got == ["c", "d", "e"] and accepted == [True] * 5

        pipe = _Handoff(loop, bound=1)
        blocked = loop.run_in_executor(None, lambda: [pipe.put("x", stop), pipe.put("y", stop)])
        await asyncio.sleep(0.1)
        stop.set()
        assert await asyncio.wait_for(blocked, 1) == [True, False]

    run(main())
