"""The official Python SDK (``elevenlabs==2.78.0``), unchanged, against the real server.

``Conversation`` is the SDK's synchronous client: it runs the socket in its own thread and reports
through callbacks, so the server runs in a second thread with its own event loop, exactly as it would
in another process. The voice tests feed a 16 kHz PCM16 WAV through an ``AudioInterface`` in real time,
250 ms a chunk (the SDK's recommended size), and keep streaming silence afterwards like a microphone.

The only thing added to the SDK is observation: a ``Conversation`` subclass that records each raw
server message before the SDK handles it, so the tests can check what the SDK saw and in which order.
"""

from __future__ import annotations

import asyncio
import base64
import math
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from elevenlabs.client import ElevenLabs
from elevenlabs.conversational_ai.conversation import (
    AgentChatResponsePartType,
    AudioEventAlignment,
    AudioInterface,
    ClientTools,
    Conversation,
    ConversationInitiationData,
)

from ah.runtime.graph_loader import load_graph
from ah.server.app import AgentServer, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "tests" / "graphs" / "scripted_voice.yaml"
AGENT = "scripted_voice"
SR = 16000
BYTES_PER_S = SR * 2
CHUNK = 4000 * 2  # 4000 samples, 250 ms: what the SDK documents for input_callback
MS_PER_CHAR = 40  # tts.tone in the graph

REPLY_1 = "It is sunny today, Ana. Expect clear skies all afternoon and a light breeze in the evening."
REPLY_2 = "There is not much more to say about it, really."
LINE_1 = "What is the weather like?"
LINE_2 = "Tell me more."


def reply_bytes(text: str) -> int:
    return len(text) * MS_PER_CHAR * BYTES_PER_S // 1000


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


# -- the server, in a thread of its own ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ah-server", daemon=True)
    thread.start()
    server = AgentServer({AGENT: load_graph(GRAPH)}, ServerConfig(port=0))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.drain(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- what the SDK saw ----------------------------------------------------------------------------------------


@dataclass
class Seen:
    """Everything the SDK's callbacks reported, in order, plus the raw messages it handled."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    user: list[str] = field(default_factory=list)
    agent: list[str] = field(default_factory=list)
    parts: list[tuple[str, str]] = field(default_factory=list)
    corrections: list[tuple[str, str]] = field(default_factory=list)
    latencies: list[int] = field(default_factory=list)
    alignments: list[AudioEventAlignment] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in list(self.messages) if m["type"] == kind]


class RecordingConversation(Conversation):
    """The SDK's ``Conversation``, unchanged, with every server message recorded as it is handled."""

    seen: Seen

    def _handle_message(self, message: Any, ws: Any) -> None:
        self.seen.messages.append(message)
        super()._handle_message(message, ws)  # type: ignore[no-untyped-call]


def open_conversation(
    base_url: str,
    seen: Seen,
    *,
    audio: AudioInterface | None = None,
    tools: ClientTools | None = None,
    agent: str = AGENT,
) -> RecordingConversation:
    client = ElevenLabs(api_key="not-needed", base_url=base_url)
    conv = RecordingConversation(
        client,
        agent,
        requires_auth=False,
        audio_interface=audio,
        client_tools=tools,
        config=ConversationInitiationData(dynamic_variables={"user_name": "Ana"}),
        callback_user_transcript=seen.user.append,
        callback_agent_response=seen.agent.append,
        callback_agent_chat_response_part=lambda text, kind: seen.parts.append((text, kind.value)),
        callback_agent_response_correction=lambda original, corrected: seen.corrections.append(
            (original, corrected)
        ),
        callback_latency_measurement=seen.latencies.append,
        callback_audio_alignment=seen.alignments.append,
        callback_disconnect=lambda details: seen.disconnects.append(details.reason),
    )
    conv.seen = seen
    conv.start_session()  # type: ignore[no-untyped-call]
    return conv


def close_conversation(conv: Conversation) -> str | None:
    conv.end_session()  # type: ignore[no-untyped-call]
    return conv.wait_for_session_end()


# -- a scripted microphone and speaker ------------------------------------------------------------------------


def write_utterance(path: Path, seconds: float) -> Path:
    """A voiced-like burst (140 Hz harmonics, syllable-rate envelope) as a 16 kHz mono PCM16 WAV.

    The energy VAD only needs level; the envelope keeps it well above the threshold throughout, so one
    burst is one speech segment.
    """
    t = np.arange(int(SR * seconds)) / SR
    voiced = sum(np.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * math.pi * 4 * t)
    pcm = (voiced * envelope * 0.15 * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm)
    return path


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
        return w.readframes(w.getnframes())


class WavMicrophone(AudioInterface):
    """Streams WAVs in real time, 250 ms a chunk, with silence between and after; records the output.

    ``then`` pairs a condition with a WAV: once the first utterance is out, each further utterance is
    spoken when its condition holds (e.g. "the agent has been heard for 0.8 s"), like a user talking
    over the agent.
    """

    def __init__(self, first: Path, then: list[tuple[Callable[[WavMicrophone], bool], Path]] | None = None):
        self.queue = bytearray(read_wav(first))
        self.then = list(then or [])
        self.out = bytearray()
        self.timeline: list[tuple[str, int]] = []  # ("interrupt", bytes of output so far)
        self.interrupts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        def pump() -> None:
            next_at = time.monotonic()
            while not self._stop.is_set():
                if not self.queue and self.then and self.then[0][0](self):
                    self.queue += read_wav(self.then.pop(0)[1])
                chunk = bytes(self.queue[:CHUNK])
                del self.queue[:CHUNK]
                input_callback(chunk + bytes(CHUNK - len(chunk)))
                next_at += 0.25
                self._stop.wait(max(0.0, next_at - time.monotonic()))

        threading.Thread(target=pump, name="wav-microphone", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def output(self, audio: bytes) -> None:
        with self._lock:
            self.out += audio

    def interrupt(self) -> None:
        with self._lock:
            self.interrupts += 1
            self.timeline.append(("interrupt", len(self.out)))

    def heard_s(self) -> float:
        return len(self.out) / BYTES_PER_S


def audio_bytes(messages: list[dict[str, Any]], pred: Callable[[int], bool]) -> int:
    return sum(
        len(base64.b64decode(m["audio_event"]["audio_base_64"]))
        for m in messages
        if m["type"] == "audio" and pred(m["audio_event"]["event_id"])
    )


# -- tests ----------------------------------------------------------------------------------------------------


def test_text_only_conversation(base_url: str) -> None:
    """No audio interface (the SDK's top-level ``text_only``), dynamic variables, streamed parts, latency,
    and a client tool the agent calls through the SDK's ``ClientTools``."""
    seen = Seen()
    tool_calls: list[dict[str, Any]] = []
    tools = ClientTools()

    def check_account_status(params: dict[str, Any]) -> str:
        tool_calls.append(params)
        return "in good standing"

    tools.register("check_account_status", check_account_status)
    conv = open_conversation(base_url, seen, tools=tools)
    try:
        wait_until(lambda: bool(seen.of_type("conversation_initiation_metadata")), 5, "metadata")
        conv.send_user_message("hello")
        wait_until(lambda: bool(seen.agent), 5, "agent_response")
        assert seen.agent == [REPLY_1]  # {{user_name}} substituted from the dynamic variables
        kinds = [kind for _, kind in seen.parts]
        assert kinds[0] == AgentChatResponsePartType.START.value
        assert kinds[-1] == AgentChatResponsePartType.STOP.value
        assert set(kinds[1:-1]) == {AgentChatResponsePartType.DELTA.value}
        assert "".join(text for text, kind in seen.parts if kind == "delta") == REPLY_1

        conv.send_contextual_update("The user is on the billing page")
        conv.register_user_activity()  # type: ignore[no-untyped-call]
        conv.send_user_message("What about my account?")
        wait_until(lambda: len(seen.agent) == 2, 5, "the reply after the tool call")
        assert tool_calls and tool_calls[0]["user"] == "Ana" and tool_calls[0]["tool_call_id"]
        assert seen.agent[1] == "Your account is in good standing."

        wait_until(lambda: bool(seen.latencies), 5, "a latency measurement (ping_ms of a later ping)")
        assert all(isinstance(ms, int) and 0 < ms < 1000 for ms in seen.latencies)
        assert not seen.of_type("audio")
        assert not seen.alignments
    finally:
        conversation_id = close_conversation(conv)
    assert conversation_id is not None and conversation_id.startswith("conv_")
    assert len(seen.of_type("conversation_initiation_metadata")) == 1
    assert seen.messages[0]["type"] == "conversation_initiation_metadata"
    assert seen.disconnects == ["user"]


def test_voice_conversation(base_url: str, tmp_path: Path) -> None:
    """A WAV streamed in real time: transcript, reply, the whole reply's audio and its alignment."""
    mic = WavMicrophone(write_utterance(tmp_path / "utterance.wav", 1.0))
    seen = Seen()
    conv = open_conversation(base_url, seen, audio=mic)
    try:
        wait_until(lambda: bool(seen.user), 6, "the user transcript")
        assert seen.user == [LINE_1]
        wait_until(lambda: bool(seen.agent), 5, "the agent response")
        assert seen.agent == [REPLY_1]
        expected = reply_bytes(REPLY_1)
        wait_until(lambda: len(mic.out) >= expected, 8, f"{expected} bytes of agent audio")
        time.sleep(0.2)  # anything extra would arrive now
        assert abs(len(mic.out) - expected) <= 2 * MS_PER_CHAR * BYTES_PER_S // 1000
        assert "".join(c for a in seen.alignments for c in a.chars) == REPLY_1
        for a in seen.alignments:
            assert len(a.chars) == len(a.char_start_times_ms) == len(a.char_durations_ms)
            assert all(d == MS_PER_CHAR for d in a.char_durations_ms)
        assert mic.interrupts == 0 and not seen.corrections
        assert {m["audio_event"]["event_id"] for m in seen.of_type("audio")} == {
            seen.of_type("agent_response")[0]["agent_response_event"]["event_id"]
        }
        assert seen.of_type("vad_score")  # the SDK ignores them, but they reach it
    finally:
        close_conversation(conv)


def test_voice_barge_in(base_url: str, tmp_path: Path) -> None:
    """Talking over the agent: the SDK is told (``interrupt()``), gets a correction to what was heard,
    plays no more of the interrupted reply, and the next turn is answered."""
    first = write_utterance(tmp_path / "question.wav", 1.0)
    barge = write_utterance(tmp_path / "barge.wav", 0.5)
    mic = WavMicrophone(first, then=[(lambda m: m.heard_s() >= 0.8, barge)])
    seen = Seen()
    conv = open_conversation(base_url, seen, audio=mic)
    try:
        wait_until(lambda: mic.interrupts > 0, 12, "an interruption")
        wait_until(lambda: bool(seen.corrections), 3, "agent_response_correction")
        original, corrected = seen.corrections[0]
        assert original == REPLY_1
        assert corrected and len(corrected) < len(original) and original.startswith(corrected)
        wait_until(lambda: len(seen.agent) == 2, 6, "the reply to the second turn")
        assert seen.user == [LINE_1, LINE_2]
        assert seen.agent == [REPLY_1, REPLY_2]
        wait_until(
            lambda: len(mic.out) - mic.timeline[0][1] >= reply_bytes(REPLY_2), 6, "the second reply's audio"
        )
    finally:
        close_conversation(conv)

    messages = list(seen.messages)
    interruptions = [m for m in messages if m["type"] == "interruption"]
    assert len(interruptions) == 1
    n = interruptions[0]["interruption_event"]["event_id"]
    at = messages.index(interruptions[0])
    assert n == seen.of_type("agent_response")[0]["agent_response_event"]["event_id"]
    # The server sent no audio of reply N after interruption{N} (the JS client would have played it) ...
    assert audio_bytes(messages[at:], lambda eid: eid <= n) == 0
    # ... so what the SDK played before the interruption is part of reply 1, and after it only reply 2.
    played_before = mic.timeline[0][1]
    assert played_before == audio_bytes(messages[:at], lambda eid: eid == n)
    assert 0 < played_before < reply_bytes(REPLY_1)
    assert len(mic.out) - played_before == audio_bytes(messages[at:], lambda eid: eid > n)
    assert abs(len(mic.out) - played_before - reply_bytes(REPLY_2)) <= 2 * MS_PER_CHAR * BYTES_PER_S // 1000
