"""Every message of the ElevenLabs Agents WebSocket protocol, against the real server, from a raw client.

A plain ``websockets`` client plays the official clients' part (``shared/reference/elevenlabs-agents-ws.md``)
so each test can send exactly one kind of client message and read every server message in order —
including the ones the SDKs hide (``vad_score``, ``error``, the exact ``ping_ms``, the order of
``audio`` and ``interruption``). The graph is ``tests/graphs/scripted_voice.yaml``: energy VAD,
scripted STT and LLM, tone TTS, so every transcript, reply and audio length is known in advance.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ah.runtime.graph_loader import Graph, load_graph
from ah.server.app import AgentServer, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "tests" / "graphs" / "scripted_voice.yaml"
AGENT = "scripted_voice"
SR = 16000
BYTES_PER_MS = SR * 2 // 1000
MS_PER_CHAR = 40  # tts.tone in the graph: every character is 40 ms of audio

REPLY_1 = "It is sunny today, Ana. Expect clear skies all afternoon and a light breeze in the evening."
REPLY_2 = "There is not much more to say about it, really."
LINE_1 = "What is the weather like?"
LINE_2 = "Tell me more."

T = TypeVar("T")
Message = dict[str, Any]


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    """Run one test's conversation with a hard deadline, so a protocol hang fails instead of stalling CI."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(guarded())


def variant(text: str) -> Graph:
    """The scripted graph with a few params changed (``extends``, as a user's own variant would)."""
    return load_graph(GRAPH.with_name("_test_variant.yaml"), text=f"extends: {GRAPH.name}\n{text}")


@asynccontextmanager
async def serving(graph: Graph | None = None) -> AsyncIterator[str]:
    server = AgentServer({AGENT: graph or load_graph(GRAPH)}, ServerConfig(port=0))
    await server.start()
    try:
        yield f"ws://127.0.0.1:{server.port}/v1/convai/conversation?agent_id={AGENT}&source=python_sdk"
    finally:
        await server.drain(0)


def init(override: dict[str, Any] | None = None, **dynamic: str | int | bool) -> Message:
    """``conversation_initiation_client_data`` as the Python SDK sends it."""
    return {
        "type": "conversation_initiation_client_data",
        "custom_llm_extra_body": {},
        "conversation_config_override": override if override is not None else {},
        "dynamic_variables": dynamic,
        "source_info": {"source": "python_sdk", "version": "2.78.0"},
    }


TEXT_ONLY = {"text_only": True}  # the Python SDK's quirk: top level, not under "conversation"


class Client:
    """A raw protocol client: records every server message in order and answers pings like the SDKs."""

    def __init__(self, ws: ClientConnection, *, auto_pong: bool = True) -> None:
        self.ws = ws
        self.auto_pong = auto_pong
        self.received: list[Message] = []
        self.done = False
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                assert isinstance(raw, str), "the protocol uses JSON text frames only"
                msg = json.loads(raw)
                self.received.append(msg)
                if self.auto_pong and msg["type"] == "ping":
                    await self.send({"type": "pong", "event_id": msg["ping_event"]["event_id"]})
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.done = True
            self._changed.set()

    async def send(self, msg: Message) -> None:
        await self.ws.send(json.dumps(msg))

    async def send_audio(self, pcm: bytes) -> None:
        await self.send({"user_audio_chunk": base64.b64encode(pcm).decode("ascii")})

    def of_type(self, kind: str) -> list[Message]:
        return [m for m in self.received if m["type"] == kind]

    async def wait_for(
        self, pred: Callable[[Message], bool], timeout_s: float = 5.0, *, start: int = 0
    ) -> Message:
        """The first message from index ``start`` on that satisfies ``pred``, waiting for it if need be."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        i = start
        while True:
            while i < len(self.received):
                if pred(self.received[i]):
                    return self.received[i]
                i += 1
            if self.done:
                raise AssertionError(
                    f"connection closed ({self.ws.close_code} {self.ws.close_reason!r}) "
                    f"before the awaited message; got {self.summary()}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except TimeoutError:
                raise AssertionError(f"no such message within {timeout_s} s; got {self.summary()}") from None

    async def wait_type(self, kind: str, timeout_s: float = 5.0, *, start: int = 0) -> Message:
        return await self.wait_for(lambda m: m["type"] == kind, timeout_s, start=start)

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        await asyncio.wait_for(self._reader, timeout_s)

    def summary(self) -> list[str]:
        return [m["type"] for m in self.received if m["type"] not in ("vad_score", "ping")]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


@asynccontextmanager
async def conversation(
    url: str, first: Message | None, *, subprotocols: list[str] | None = None, auto_pong: bool = True
) -> AsyncIterator[Client]:
    async with connect(url, subprotocols=subprotocols) as ws:  # type: ignore[arg-type]
        client = Client(ws, auto_pong=auto_pong)
        if first is not None:
            await client.send(first)
        try:
            yield client
        finally:
            await client.close()


# -- user audio ------------------------------------------------------------------------------------------


def speech(seconds: float) -> bytes:
    """A voiced-like burst: a 140 Hz harmonic series with a syllable-rate envelope that never drops to silence."""
    t = np.arange(int(SR * seconds)) / SR
    wave = sum(np.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * math.pi * 4 * t)
    return (wave * envelope * 0.15 * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(2 * int(SR * seconds))


class Mic:
    """Streams audio in real time like a client's microphone: queued speech, silence in between."""

    def __init__(self, client: Client, chunk_ms: int = 50) -> None:
        self.client = client
        self.chunk = chunk_ms * BYTES_PER_MS
        self.chunk_s = chunk_ms / 1000
        self.pending = bytearray()
        self.idle = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._pump())

    def say(self, pcm: bytes) -> None:
        self.pending += pcm
        self.idle.clear()

    async def said(self) -> None:
        """Wait until everything queued has been streamed."""
        await self.idle.wait()

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if self.pending:
                data, self.pending = bytes(self.pending[: self.chunk]), self.pending[self.chunk :]
                data += bytes(self.chunk - len(data))
            else:
                self.idle.set()
                data = bytes(self.chunk)
            try:
                await self.client.send_audio(data)
            except ConnectionClosed:
                return
            next_at += self.chunk_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def stop(self) -> None:
        self._task.cancel()


def audio_of(client: Client, event_id: int | None = None) -> bytes:
    return b"".join(
        base64.b64decode(m["audio_event"]["audio_base_64"])
        for m in client.of_type("audio")
        if event_id is None or m["audio_event"]["event_id"] == event_id
    )


# -- handshake ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subprotocols", [None, ["convai"], ["convai", "bearer.token123"]])
def test_handshake_metadata_first_exactly_once(subprotocols: list[str] | None) -> None:
    """Metadata is the first message and comes once; ``convai`` is selected only when the client offers it."""

    async def main() -> None:
        async with (
            serving() as url,
            conversation(url, init(TEXT_ONLY, user_name="Ana"), subprotocols=subprotocols) as c,
        ):
            assert c.ws.subprotocol == ("convai" if subprotocols else None)
            await c.send({"type": "user_message", "text": "hello"})
            await c.wait_type("agent_response")
            first = c.received[0]
            assert first["type"] == "conversation_initiation_metadata"
            meta = first["conversation_initiation_metadata_event"]
            assert meta["agent_output_audio_format"] == "pcm_16000"
            assert meta["user_input_audio_format"] == "pcm_16000"
            assert isinstance(meta["conversation_id"], str) and meta["conversation_id"].startswith("conv_")
            assert len(c.of_type("conversation_initiation_metadata")) == 1
            assert all("type" in m for m in c.received)

    run(main())


def test_each_conversation_gets_its_own_id() -> None:
    async def main() -> None:
        async with serving() as url:
            ids = []
            for _ in range(2):
                async with conversation(url, init(TEXT_ONLY)) as c:
                    meta = await c.wait_type("conversation_initiation_metadata")
                    ids.append(meta["conversation_initiation_metadata_event"]["conversation_id"])
            assert ids[0] != ids[1]

    run(main())


# -- text only -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expect_audio"),
    [
        (TEXT_ONLY, False),  # Python SDK without an audio interface
        ({"agent": {}, "tts": {}, "conversation": {"text_only": True}}, False),  # JS client, textOnly
        ({}, True),  # Python SDK with an audio interface
    ],
    ids=["python-top-level", "js-conversation", "voice"],
)
def test_text_only_sends_no_audio(override: dict[str, Any], expect_audio: bool) -> None:
    """Text-only sessions get the same messages minus ``audio``, whichever place the flag is in."""

    async def main() -> None:
        async with serving() as url, conversation(url, init(override, user_name="Ana")) as c:
            await c.send({"type": "user_message", "text": "hello"})
            response = await c.wait_type("agent_response")
            assert response["agent_response_event"]["agent_response"] == REPLY_1
            assert not c.of_type("error")
            if expect_audio:
                await c.wait_type("audio")
            else:
                await asyncio.sleep(0.4)  # tts.tone has had ample time to synthesise the first sentence
                assert not c.of_type("audio")

    run(main())


def test_user_message_is_a_turn_streamed_as_parts() -> None:
    """A typed turn is answered with start / delta... / stop parts and one ``agent_response``, one event id."""

    async def main() -> None:
        async with serving() as url, conversation(url, init(TEXT_ONLY, user_name="Ana")) as c:
            await c.send({"type": "user_message", "text": "hello"})
            response = await c.wait_type("agent_response")
            parts = [m["text_response_part"] for m in c.of_type("agent_chat_response_part")]
            kinds = [p["type"] for p in parts]
            assert kinds[0] == "start" and kinds[-1] == "stop" and set(kinds[1:-1]) == {"delta"}
            assert "".join(p["text"] for p in parts if p["type"] == "delta") == REPLY_1
            eid = response["agent_response_event"]["event_id"]
            assert {p["event_id"] for p in parts} == {eid}

    run(main())


# -- overrides -------------------------------------------------------------------------------------------------


def test_allowed_overrides_reach_the_nodes() -> None:
    """``agent.first_message`` makes the agent speak first; prompt and language are accepted."""

    async def main() -> None:
        override = {
            "agent": {
                "first_message": "Hello {{user_name}}, ask me anything.",
                "prompt": {"prompt": "You are a terse weather bot."},
                "language": "pt",
            },
            "text_only": True,
        }
        async with serving() as url, conversation(url, init(override, user_name="Ana")) as c:
            response = await c.wait_type("agent_response")
            assert response["agent_response_event"]["agent_response"] == "Hello Ana, ask me anything."
            assert not c.of_type("user_transcript")
            await c.send({"type": "user_message", "text": "hello"})
            second = await c.wait_type("agent_response", start=c.received.index(response) + 1)
            assert second["agent_response_event"]["agent_response"] == REPLY_1
            assert second["agent_response_event"]["event_id"] > response["agent_response_event"]["event_id"]
            assert not c.of_type("error")

    run(main())


def test_voice_override_changes_the_tts() -> None:
    """``tts.voice_id`` reaches ``tts.voice``: the same words come out at another pitch."""

    async def first_audio(url: str, tts: dict[str, Any]) -> bytes:
        override = {"agent": {"first_message": "Hi."}, "tts": tts}
        async with conversation(url, init(override)) as c:
            response = await c.wait_type("agent_response")
            eid = response["agent_response_event"]["event_id"]
            await c.wait_for(
                lambda m: m["type"] == "audio" and m["audio_event"].get("alignment", {}).get("chars") == ["."]
            )
            assert not c.of_type("error")
            return audio_of(c, eid)

    async def main() -> None:
        async with serving() as url:
            default = await first_audio(url, {})
            other = await first_audio(url, {"voice_id": "someone-else"})
        assert len(default) == len(other) == 3 * MS_PER_CHAR * BYTES_PER_MS
        assert default != other

    run(main())


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"tts": {"stability": 0.5}}, "tts.stability"),
        ({"agent": {"prompt": {"llm": "gpt-4o"}}}, "agent.prompt.llm"),
        ({"agent": {"language": 5}}, "language"),  # allowed field, value the node's params refuse
    ],
)
def test_refused_override_is_an_error_and_a_1008_close(override: dict[str, Any], named: str) -> None:
    """Overrides the graph does not allow are refused as ElevenLabs does: ``override_error``, close 1008."""

    async def main() -> None:
        async with serving() as url, conversation(url, init(override)) as c:
            await c.wait_closed()
            assert [m["type"] for m in c.received] == ["conversation_initiation_metadata", "error"]
            error = c.received[1]["error_event"]
            assert error["error_type"] == "override_error"
            assert error["code"] == 1008
            assert named in error["message"]
            assert c.ws.close_code == 1008
            assert named in (c.ws.close_reason or "")

    run(main())


def test_missing_dynamic_variable_is_an_error() -> None:
    """A reply that uses ``{{user_name}}`` without the variable reports ``missing_dynamic_variable``."""

    async def main() -> None:
        async with serving() as url, conversation(url, init(TEXT_ONLY)) as c:
            await c.send({"type": "user_message", "text": "hello"})
            error = (await c.wait_type("error"))["error_event"]
            assert error["error_type"] == "missing_dynamic_variable"
            assert "user_name" in error["message"]
            # The conversation goes on: the error is reported, not fatal.
            await c.wait_type("agent_response")
            assert not c.done

    run(main())


# -- the other client messages ------------------------------------------------------------------------------


def test_activity_context_tool_result_and_feedback_are_accepted() -> None:
    """``user_activity``, ``contextual_update``, ``client_tool_result`` and ``feedback``: no error, no close,
    and no reply (a contextual update must not itself make the agent talk)."""

    async def main() -> None:
        async with serving() as url, conversation(url, init(TEXT_ONLY, user_name="Ana")) as c:
            await c.send({"type": "user_message", "text": "hello"})
            response = await c.wait_type("agent_response")
            eid = response["agent_response_event"]["event_id"]
            mark = len(c.received)
            accepted: list[Message] = [
                {"type": "user_activity"},
                {"type": "contextual_update", "text": "User is viewing the pricing page"},
                {"type": "contextual_update", "text": "Cart has 2 items", "context_id": "ctx_1"},
                {
                    "type": "client_tool_result",
                    "tool_call_id": "tool_call_unknown",
                    "result": "ok",
                    "is_error": False,
                },
                {"type": "feedback", "score": "like", "event_id": eid},
                {"type": "feedback", "score": None, "event_id": eid},
            ]
            for msg in accepted:
                await c.send(msg)
            await asyncio.sleep(0.4)
            later = [m["type"] for m in c.received[mark:]]
            assert not set(later) - {"ping", "vad_score"}, later
            assert not c.done
            await c.send({"type": "user_message", "text": "still there?"})
            await c.wait_type("agent_response", start=mark)

    run(main())


def test_client_tool_call_and_result() -> None:
    """A trigger word makes the agent call a client tool; the client's result is read back in the reply."""

    async def main() -> None:
        async with serving() as url, conversation(url, init(TEXT_ONLY, user_name="Ana")) as c:
            await c.send({"type": "user_message", "text": "How is my account doing?"})
            call = (await c.wait_type("client_tool_call"))["client_tool_call"]
            assert call["tool_name"] == "check_account_status"
            assert call["parameters"] == {"user": "Ana"}
            assert isinstance(call["tool_call_id"], str) and call["tool_call_id"]
            await asyncio.sleep(0.2)
            assert not c.of_type("agent_chat_response_part"), "the agent waits for the tool's result"
            await c.send(
                {
                    "type": "client_tool_result",
                    "tool_call_id": call["tool_call_id"],
                    "result": "active",
                    "is_error": False,
                }
            )
            response = (await c.wait_type("agent_response"))["agent_response_event"]
            assert response["agent_response"] == "Your account is active."
            assert response["event_id"] == call["event_id"]  # one reply, one event id
            assert not c.of_type("error")

    run(main())


def test_pong_is_measured_as_ping_ms() -> None:
    """``ping_ms`` is present from the first ping (``null``) and carries the round trip of the pongs."""

    async def main() -> None:
        fast = variant("nodes:\n  client: {params: {ping_interval_s: 0.15}}\n")
        async with serving(fast) as url, conversation(url, init(TEXT_ONLY), auto_pong=False) as c:
            first = (await c.wait_type("ping"))["ping_event"]
            assert "ping_ms" in first and first["ping_ms"] is None
            second_msg = await c.wait_type("ping", start=c.received.index(c.of_type("ping")[0]) + 1)
            second = second_msg["ping_event"]
            assert second["event_id"] > first["event_id"]
            await asyncio.sleep(0.06)
            assert all(m["ping_event"]["ping_ms"] is None for m in c.of_type("ping")), (
                "no pong, no measurement"
            )
            mark = len(c.received)
            await c.send({"type": "pong", "event_id": second["event_id"]})
            measured = await c.wait_for(
                lambda m: m["type"] == "ping" and m["ping_event"]["ping_ms"] is not None, start=mark
            )
            ping_ms = measured["ping_event"]["ping_ms"]
            assert isinstance(ping_ms, int)
            assert 60 <= ping_ms < 1000  # the 60 ms the client took to answer, plus the trip

    run(main())


# -- voice ---------------------------------------------------------------------------------------------------------


def test_vad_scores_follow_the_user_audio() -> None:
    """vad_score goes out when the score moves (>= 0.05 from the last one sent) and once a second while
    it holds still: a client sees the rise and the fall, not 30 copies of a silence's ~0.01."""

    async def main() -> None:
        async with serving() as url, conversation(url, init({}, user_name="Ana")) as c:
            await c.wait_type("conversation_initiation_metadata")
            mic = Mic(c)
            mic.say(silence(0.3) + speech(0.5) + silence(0.4))
            await mic.said()
            await asyncio.sleep(0.1)
            scores = [m["vad_score_event"]["vad_score"] for m in c.of_type("vad_score")]
            assert len(scores) >= 3
            assert all(0.0 <= s <= 1.0 for s in scores)
            assert max(scores) > 0.9
            assert min(scores) < 0.1
            peak = scores.index(max(scores))
            assert min(scores[peak:]) < 0.1, "scores fall again when the user stops"
            assert all(abs(a - b) >= 0.05 for a, b in itertools.pairwise(scores)), scores
            # 2.2 s more of silence: the score holds still, so only the once-a-second reminders.
            mic.say(silence(2.2))
            await mic.said()
            mic.stop()
            await asyncio.sleep(0.1)
            quiet = [m["vad_score_event"]["vad_score"] for m in c.of_type("vad_score")][len(scores) :]
            assert 1 <= len(quiet) <= 3, quiet
            assert max(quiet) < 0.1

    run(main())


def test_voice_turn_with_barge_in() -> None:
    """Speech → transcript → reply text and audio with alignment; speech over the reply interrupts it:
    ``interruption{N}``, then never an ``audio`` of N again, a correction to what was heard, the next turn."""

    async def main() -> None:
        async with serving() as url, conversation(url, init({}, user_name="Ana")) as c:
            await c.wait_type("conversation_initiation_metadata")
            mic = Mic(c)
            mic.say(speech(1.0))
            transcript = (await c.wait_type("user_transcript", 5))["user_transcription_event"]
            assert transcript["user_transcript"] == LINE_1
            audio = (await c.wait_type("audio", 5))["audio_event"]
            n = audio["event_id"]
            assert n > transcript["event_id"]
            assert set(audio["alignment"]) == {"chars", "char_start_times_ms", "char_durations_ms"}
            await asyncio.sleep(0.8)  # let the user hear part of the reply, then talk over it
            mic.say(speech(0.5))
            interruption = await c.wait_type("interruption", 5)
            assert interruption["interruption_event"]["event_id"] == n
            at = c.received.index(interruption)
            correction = (await c.wait_type("agent_response_correction", 2, start=at))[
                "agent_response_correction_event"
            ]
            assert correction["event_id"] == n
            assert correction["original_agent_response"] == REPLY_1
            heard = correction["corrected_agent_response"]
            assert heard and len(heard) < len(REPLY_1) and REPLY_1.startswith(heard)
            second = (await c.wait_type("user_transcript", 5, start=at))["user_transcription_event"]
            assert second["user_transcript"] == LINE_2
            reply = (await c.wait_type("agent_response", 5, start=at))["agent_response_event"]
            assert reply["agent_response"] == REPLY_2
            assert reply["event_id"] > second["event_id"] > n
            await c.wait_type("audio", 5, start=c.received.index(c.of_type("agent_response")[-1]))
            mic.stop()

            late = [m for m in c.received[at:] if m["type"] == "audio" and m["audio_event"]["event_id"] <= n]
            assert not late, "audio of an interrupted reply was sent after its interruption"
            # What was sent of reply N is what the client could have played: a prefix, not the whole reply.
            sent_n = audio_of(c, n)
            assert 0 < len(sent_n) < len(REPLY_1) * MS_PER_CHAR * BYTES_PER_MS
            chars = "".join(
                "".join(m["audio_event"]["alignment"]["chars"])
                for m in c.of_type("audio")
                if m["audio_event"]["event_id"] == n
            )
            assert REPLY_1.startswith(chars) and chars.startswith(heard)

    run(main(), 30)


def test_typed_message_interrupts_a_spoken_reply() -> None:
    """A ``user_message`` while the agent speaks is a new turn: the reply is interrupted first."""

    async def main() -> None:
        async with serving() as url, conversation(url, init({}, user_name="Ana")) as c:
            await c.send({"type": "user_message", "text": "hello"})
            n = (await c.wait_type("audio"))["audio_event"]["event_id"]
            await asyncio.sleep(0.3)
            await c.send({"type": "user_message", "text": "never mind"})
            interruption = await c.wait_type("interruption")
            assert interruption["interruption_event"]["event_id"] == n
            at = c.received.index(interruption)
            reply = await c.wait_for(
                lambda m: m["type"] == "agent_response" and m["agent_response_event"]["event_id"] > n,
                start=at,
            )
            assert reply["agent_response_event"]["agent_response"] == REPLY_2
            await c.wait_type("audio", start=c.received.index(reply))
            assert not [
                m for m in c.received[at:] if m["type"] == "audio" and m["audio_event"]["event_id"] == n
            ]

    run(main())


def test_typed_message_interrupts_a_streaming_text_reply() -> None:
    """Text only: a ``user_message`` while the reply's parts stream cuts it off. The client has read
    every part it was sent, so there is nothing to correct (a voice client would get a correction to
    what it heard), and no part of the old reply follows the interruption."""

    async def main() -> None:
        slow = variant("nodes:\n  llm: {params: {word_ms: 40}}\n")
        async with serving(slow) as url, conversation(url, init(TEXT_ONLY, user_name="Ana")) as c:
            await c.send({"type": "user_message", "text": "hello"})
            n = (await c.wait_type("agent_chat_response_part"))["text_response_part"]["event_id"]
            await asyncio.sleep(0.15)
            await c.send({"type": "user_message", "text": "never mind"})
            interruption = await c.wait_type("interruption")
            assert interruption["interruption_event"]["event_id"] == n
            at = c.received.index(interruption)
            reply = (await c.wait_type("agent_response", start=at))["agent_response_event"]
            assert reply["agent_response"] == REPLY_2 and reply["event_id"] > n
            parts_of_n = [
                i
                for i, m in enumerate(c.received)
                if m["type"] == "agent_chat_response_part" and m["text_response_part"]["event_id"] == n
            ]
            assert parts_of_n and max(parts_of_n) < at, "a part of the interrupted reply came after it"
            shown = "".join(c.received[i]["text_response_part"]["text"] for i in parts_of_n)
            assert 0 < len(shown.strip()) < len(REPLY_1)
            assert not c.of_type("agent_response_correction")
            assert [m["agent_response_event"]["event_id"] for m in c.of_type("agent_response")] == [
                reply["event_id"]
            ]

    run(main())
