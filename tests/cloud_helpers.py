"""Shared pieces of the cloud-provider tests: the fakes started and the environment aimed at them, a
served graph, and a conversation client that keeps everything it receives."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fakes.elevenlabs_tts import FakeElevenLabsTts, TtsConfig
from tests.fakes.groq import FakeGroq, GroqConfig
from tests.server_helpers import ROOT, serving, voice_graphs, ws_url

GRAPH = ROOT / "tests" / "graphs" / "cloud_fakes.yaml"
AGENT = "cloud_fakes"
SR = 16000
REPLY = "Sure thing. It is sunny today, with a light breeze from the west."


@dataclass
class Fakes:
    groq: FakeGroq
    tts: FakeElevenLabsTts


@contextmanager
def fakes(
    monkeypatch: pytest.MonkeyPatch, groq: GroqConfig | None = None, tts: TtsConfig | None = None
) -> Iterator[Fakes]:
    """Both fakes running, and the environment (keys, base URLs) pointing the nodes at them."""
    with (
        FakeGroq(groq or GroqConfig(replies=[REPLY], transcripts=["What is the weather like?"])) as g,
        FakeElevenLabsTts(tts or TtsConfig(ms_per_char=20, rtf=50)) as t,
    ):
        monkeypatch.setenv("GROQ_API_KEY", "gsk_test")
        monkeypatch.setenv("GROQ_BASE_URL", g.base_url)
        monkeypatch.setenv("ELEVENLABS_API_KEY", "xi_test")
        monkeypatch.setenv("ELEVENLABS_BASE_URL", t.url)
        yield Fakes(g, t)


@dataclass
class Conversation:
    ws: ClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.received.append(json.loads(raw))
                self.times.append(time.perf_counter())
                self._new.set()
        except ConnectionClosed:
            pass
        finally:
            self._new.set()

    def of_type(self, mtype: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == mtype]

    def errors(self) -> list[dict[str, Any]]:
        return [m["error_event"] for m in self.of_type("error")]

    async def wait(self, mtype: str, count: int = 1, within: float = 10.0) -> dict[str, Any]:
        """Wait until ``count`` messages of ``mtype`` have come; return the last."""
        deadline = time.monotonic() + within
        while len(self.of_type(mtype)) < count:
            if self._task is not None and self._task.done():
                raise AssertionError(f"connection closed before {count} {mtype}: {self.types()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {count}x {mtype} within {within} s; got {self.types()}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except TimeoutError:
                pass
        return self.of_type(mtype)[count - 1]

    async def settle(self, quiet_s: float = 0.5, within: float = 10.0) -> None:
        """Wait until nothing has arrived for ``quiet_s`` (the reply's audio has all come)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            n = len(self.received)
            await asyncio.sleep(quiet_s)
            if len(self.received) == n:
                return

    def types(self) -> list[str]:
        return [str(m.get("type")) for m in self.received]

    def audio(self, event_id: int | None = None) -> bytes:
        return b"".join(
            base64.b64decode(m["audio_event"]["audio_base_64"])
            for m in self.of_type("audio")
            if event_id is None or m["audio_event"]["event_id"] == event_id
        )

    async def say_text(self, text: str) -> None:
        await self.ws.send(json.dumps({"type": "user_message", "text": text}))

    async def stream(self, pcm: bytes, chunk_ms: int = 50, realtime: bool = True) -> None:
        """Send audio as a microphone would (in real time when ``realtime``)."""
        step = SR * chunk_ms // 1000 * 2
        t0 = time.monotonic()
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            await self.ws.send(json.dumps({"user_audio_chunk": base64.b64encode(chunk).decode()}))
            if realtime:
                await asyncio.sleep(max(0.0, t0 + (i + step) / 2 / SR - time.monotonic()))


@asynccontextmanager
async def conversation(graph: Path = GRAPH, agent: str = AGENT) -> AsyncIterator[Conversation]:
    async with serving(voice_graphs(graph)) as server:
        ws = await connect(ws_url(server.port, agent), open_timeout=5)
        await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        conv = Conversation(ws)
        conv.start()
        try:
            await conv.wait("conversation_initiation_metadata")
            yield conv
        finally:
            await ws.close()
            if conv._task is not None:
                await asyncio.wait([conv._task], timeout=5)


def speech(seconds: float) -> bytes:
    """A voiced-like burst that the energy VAD takes for speech."""
    t = np.arange(int(SR * seconds)) / SR
    wave = sum(np.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * math.pi * 4 * t)
    return bytes((wave * envelope * 0.15 * 32767).astype("<i2").tobytes())


def silence(seconds: float) -> bytes:
    return bytes(2 * int(SR * seconds))


def run(coro: Any) -> Any:
    return asyncio.run(coro)
