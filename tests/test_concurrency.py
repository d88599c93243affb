"""Twenty conversations at once through one server, each streaming its microphone in real time.

Issue 4 point 7. Every client is a raw ``websockets`` client speaking the ElevenLabs Agents protocol
(``shared/reference/elevenlabs-agents-ws.md``): initiation message, 40 ms ``user_audio_chunk`` messages
paced to the wall clock (1.0 s of loud tone, then 1.0 s of silence), a ``pong`` for every ``ping``.
Each must get its own transcript, reply and agent audio, and no ``error`` event. Only deterministic
facts are asserted; ``experiments/protocol_load.py`` measures how fast this goes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from ah.runtime.graph_loader import load_graph
from ah.server.app import AgentServer, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "tests" / "graphs" / "scripted_voice.yaml"
SESSIONS = 20
SR = 16000
CHUNK_MS = 40
TRANSCRIPT = "What is the weather like?"  # first line of stt.scripted in scripted_voice.yaml
REPLY = "It is sunny today, {name}. Expect clear skies all afternoon and a light breeze in the evening."


def _utterance_chunks() -> list[bytes]:
    """1.0 s of a loud 440 Hz tone then 1.0 s of silence, as 40 ms PCM16 chunks."""
    t = np.arange(SR) / SR
    burst = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    pcm = np.concatenate([burst, np.zeros(SR, dtype="<i2")]).tobytes()
    step = SR * CHUNK_MS // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


@dataclass
class Outcome:
    name: str
    metadata: int = 0
    conversation_id: str = ""
    transcripts: list[str] = field(default_factory=list)
    transcript_ids: list[int] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    audio_ids: list[int] = field(default_factory=list)
    audio_bytes: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    pings: int = 0
    first_type: str = ""
    types: list[str] = field(default_factory=list)


async def _client(url: str, name: str, chunks: list[bytes]) -> Outcome:
    out = Outcome(name)
    done = asyncio.Event()
    async with websockets.connect(url, max_size=16 * 1024 * 1024) as ws:
        await ws.send(
            json.dumps(
                {"type": "conversation_initiation_client_data", "dynamic_variables": {"user_name": name}}
            )
        )

        async def receive() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg["type"]
                out.first_type = out.first_type or kind
                out.types.append(kind)
                if kind == "conversation_initiation_metadata":
                    out.metadata += 1
                    out.conversation_id = msg["conversation_initiation_metadata_event"]["conversation_id"]
                elif kind == "ping":
                    out.pings += 1
                    await ws.send(json.dumps({"type": "pong", "event_id": msg["ping_event"]["event_id"]}))
                elif kind == "user_transcript":
                    ev = msg["user_transcription_event"]
                    out.transcripts.append(ev["user_transcript"])
                    out.transcript_ids.append(ev["event_id"])
                elif kind == "agent_response":
                    ev = msg["agent_response_event"]
                    out.responses.append(ev["agent_response"])
                    out.response_ids.append(ev["event_id"])
                elif kind == "audio":
                    ev = msg["audio_event"]
                    out.audio_ids.append(int(ev["event_id"]))
                    out.audio_bytes += len(base64.b64decode(ev["audio_base_64"]))
                elif kind == "error":
                    out.errors.append(msg["error_event"])
                if out.transcripts and out.responses and out.audio_ids:
                    done.set()

        receiver = asyncio.get_running_loop().create_task(receive())
        t0 = time.monotonic()
        for i, chunk in enumerate(chunks):  # real time: chunk i leaves once its 40 ms have been "recorded"
            await asyncio.sleep(max(0.0, t0 + (i + 1) * CHUNK_MS / 1000 - time.monotonic()))
            await ws.send(json.dumps({"user_audio_chunk": base64.b64encode(chunk).decode("ascii")}))
        try:
            await asyncio.wait_for(done.wait(), 15.0)
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
    return out


async def _run_all() -> tuple[list[Outcome], AgentServer]:
    graph = load_graph(GRAPH)
    server = AgentServer({graph.name: graph}, ServerConfig(port=0))
    await server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}/v1/convai/conversation?agent_id={graph.name}"
        chunks = _utterance_chunks()
        outcomes = await asyncio.gather(*(_client(url, f"user{i:02d}", chunks) for i in range(SESSIONS)))
        # Every client has closed; the server must wind each session down by itself.
        for _ in range(500):
            if not server.sessions:
                break
            await asyncio.sleep(0.02)
        assert not server.sessions, f"{len(server.sessions)} session(s) still running after all clients left"
    finally:
        await server.drain(0)
    return list(outcomes), server


def test_twenty_realtime_voice_sessions_at_once() -> None:
    outcomes, server = asyncio.run(_run_all())
    assert len(outcomes) == SESSIONS
    assert server.started_sessions == SESSIONS
    assert server.failed_sessions == 0
    for out in outcomes:
        assert out.first_type == "conversation_initiation_metadata", out.name
        assert out.metadata == 1, out.name
        assert out.errors == [], f"{out.name}: {out.errors}"
        assert out.transcripts[0] == TRANSCRIPT, out.name
        # Each conversation got its own dynamic variable: no state leaked between sessions.
        assert out.responses[0] == REPLY.format(name=out.name), out.name
        # One reply, one event id: its audio carries the agent_response's id, above the transcript's.
        reply_id = out.response_ids[0]
        assert reply_id > out.transcript_ids[0], out.name
        assert out.audio_ids and set(out.audio_ids) == {reply_id}, out.name
        assert out.audio_bytes > 0 and out.audio_bytes % 2 == 0, out.name
        assert "interruption" not in out.types, out.name
    assert len({o.conversation_id for o in outcomes}) == SESSIONS  # twenty distinct conversations
