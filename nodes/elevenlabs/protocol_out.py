"""``protocol_out.elevenlabs``: the graph's output as ElevenLabs Agents server messages.

Agent audio is paced to real time with a small lead (ARCHITECTURE.md §3): the client never holds
more than ``audio_lead_ms`` of a reply, so a cancel or pause takes effect at the listener at once
and this node knows what the listener has actually heard — which is what
``agent_response_correction`` reports after a barge-in.

Event ids follow the protocol's rule: one increasing counter per conversation, one id per agent
reply shared by its text parts, audio and response; after ``interruption{event_id: N}`` no audio
of reply N is sent again (the JS client would play it).
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field

from pydantic import Field

from ah.nodes.elevenlabs.state import ProtocolState
from ah.runtime.sdk import (
    AudioFrame,
    ControlFrame,
    Input,
    InterruptionFrame,
    Node,
    Params,
    ReplyTextFrame,
    SessionEvent,
    SpeechFrame,
    TranscriptFrame,
    VadFrame,
)


class ProtocolOutParams(Params):
    audio_lead_ms: int = Field(
        150, ge=0, le=2000, description="How far ahead of real time agent audio may run."
    )
    vad_score_interval_ms: int = Field(
        100, ge=0, description="Minimum gap between vad_score events (0: every score; they are optional)."
    )
    vad_score_min_change: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Send a vad_score only when it differs this much from the last one sent (0: every "
        "score the interval lets through), or when vad_score_idle_ms have passed without one.",
    )
    vad_score_idle_ms: int = Field(
        1000, ge=0, description="Longest gap between vad_score events while the score holds still."
    )
    send_vad_scores: bool = Field(True, description="Send vad_score events (the JS client shows them).")


@dataclass(slots=True)
class _Reply:
    event_id: int
    text: str = ""  # the reply's text so far
    responded: bool = False  # agent_response sent
    wall_start: float | None = None  # when the listener started hearing this reply
    audio_s: float = 0.0  # seconds of audio sent
    spoken: list[tuple[float, str]] = field(default_factory=list)  # (start in reply, text) of what was sent
    interrupted: bool = False
    last_audio_at: float | None = None  # session clock time of the last audio chunk sent


class ElevenLabsProtocolOut(Node[ProtocolOutParams]):
    """Sends transcripts, agent text and paced audio, interruptions with corrections, tool calls, errors."""

    summary = "ElevenLabs Agents WebSocket, graph → client"
    params_model = ProtocolOutParams
    speech = Input(AudioFrame, required=False, doc="agent audio (SpeechFrame adds text and alignment)")
    text = Input(ReplyTextFrame, required=False, doc="agent text: start / delta / stop")
    transcripts = Input(TranscriptFrame, required=False, doc="user transcripts")
    interruptions = Input(InterruptionFrame, required=False, doc="barge-ins")
    events = Input(ControlFrame, required=False, doc="client_tool_call, error")
    vad = Input(VadFrame, required=False, doc="voice activity, sent as vad_score")

    async def run(self) -> None:
        self.state = ProtocolState.of(self.ctx)
        self._replies: dict[int, _Reply] = {}
        self._scope_changed = asyncio.Event()
        self.ctx.scopes.observe(lambda _scope: self._scope_changed.set())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._speech_loop())
            tg.create_task(self._text_loop())
            tg.create_task(self._transcript_loop())
            tg.create_task(self._interruption_loop())
            tg.create_task(self._event_loop())
            tg.create_task(self._vad_loop())

    def _reply(self, scope: int) -> _Reply:
        reply = self._replies.get(scope)
        if reply is None:
            reply = _Reply(self.state.next_event_id())
            self._replies[scope] = reply
            if len(self._replies) > 64:  # keep a bounded history for late corrections
                self._replies.pop(next(iter(self._replies)))
        return reply

    # -- agent audio ------------------------------------------------------------------------------------
    async def _speech_loop(self) -> None:
        clock = self.ctx.clock
        scopes = self.ctx.scopes
        lead = self.params.audio_lead_ms / 1000
        async for frame in self.speech:
            scope = frame.scope
            last = isinstance(frame, SpeechFrame) and frame.last
            if scope in scopes.cancelled:
                continue
            reply = self._reply(scope)
            if frame.pcm and not self.state.text_only:
                now = clock.now()
                if reply.wall_start is None or reply.wall_start + reply.audio_s < now:
                    # First chunk, or the listener ran dry (slow TTS, a pause): their clock restarts now.
                    reply.wall_start = now - reply.audio_s
                send_at = reply.wall_start + reply.audio_s - lead
                if send_at > now:
                    await clock.sleep_until(send_at)
                if scope in scopes.paused:
                    # Paused while this chunk waited its turn: hold it, then restart the listener's clock.
                    await self._wait_unpaused(scope)
                    if reply.wall_start + reply.audio_s < clock.now():
                        reply.wall_start = clock.now() - reply.audio_s
                if scope in scopes.cancelled:
                    continue  # cancelled while we waited: not one more sample of it
                event: dict[str, object] = {
                    "audio_base_64": base64.b64encode(frame.pcm).decode("ascii"),
                    "event_id": reply.event_id,
                }
                if isinstance(frame, SpeechFrame):
                    if frame.alignment is not None:
                        a = frame.alignment
                        event["alignment"] = {
                            "chars": a.chars,
                            "char_start_times_ms": a.char_start_times_ms,
                            "char_durations_ms": a.char_durations_ms,
                        }
                    if frame.text:
                        reply.spoken.append((reply.audio_s, frame.text))
                reply.audio_s += frame.duration_s
                if not await self.state.send({"type": "audio", "audio_event": event}):
                    return
                if reply.last_audio_at is None:
                    # Observers (tracing, metrics) time the response latency to this moment.
                    self.ctx.emit(
                        SessionEvent("reply_audio_started", data={"scope": scope, "event_id": reply.event_id})
                    )
                reply.last_audio_at = clock.now()
            if last:
                if reply.wall_start is not None:
                    await clock.sleep_until(reply.wall_start + reply.audio_s)  # until it has been heard
                scopes.finish(scope)

    async def _wait_unpaused(self, scope: int) -> None:
        while scope in self.ctx.scopes.paused:
            self._scope_changed.clear()
            await self._scope_changed.wait()

    # -- agent text ---------------------------------------------------------------------------------------
    async def _text_loop(self) -> None:
        async for frame in self.text:
            if frame.scope in self.ctx.scopes.paused:
                await self._wait_unpaused(frame.scope)  # a held reply shows nothing until released
            if frame.scope in self.ctx.scopes.cancelled:
                continue
            reply = self._reply(frame.scope)
            if frame.kind == "delta":
                reply.text += frame.text
            part = {
                "text": frame.text if frame.kind == "delta" else "",
                "type": frame.kind,
                "event_id": reply.event_id,
            }
            if not await self.state.send({"type": "agent_chat_response_part", "text_response_part": part}):
                return
            if frame.kind == "stop":
                reply.text = frame.text or reply.text
                reply.responded = True
                await self.state.send(
                    {
                        "type": "agent_response",
                        "agent_response_event": {"agent_response": reply.text, "event_id": reply.event_id},
                    }
                )

    # -- interruptions ----------------------------------------------------------------------------------------
    def heard_text(self, scope: int) -> str:
        """What the listener has heard of a reply, from the playout position and the spoken chunks."""
        reply = self._replies.get(scope)
        if reply is None or reply.wall_start is None:
            return ""
        position = min(self.ctx.clock.now() - reply.wall_start, reply.audio_s)
        heard = "".join(text for start, text in reply.spoken if start < position)
        spoken = "".join(text for _, text in reply.spoken)
        if reply.text.startswith(spoken):
            spoken = reply.text  # what is still held (a paused reply) decides whether a word was cut too
        cut = len(heard)
        if 0 < cut < len(spoken) and spoken[cut - 1].isalnum() and spoken[cut].isalnum():
            # Cut off inside a word: a listener has not heard a word they heard half of.
            heard = heard[: max(heard.rfind(" "), 0)]
        return heard.strip()

    async def _interruption_loop(self) -> None:
        async for frame in self.interruptions:
            reply = self._replies.get(frame.interrupted_scope)
            if reply is None or reply.interrupted:
                continue  # nothing of that reply reached the client
            reply.interrupted = True
            self.state.interrupted_event_id = max(self.state.interrupted_event_id, reply.event_id)
            await self.state.send(
                {"type": "interruption", "interruption_event": {"event_id": reply.event_id}}
            )
            # For metrics (the cancel tail): when the interruption left, and the reply's last audio before it.
            self.ctx.emit(
                SessionEvent(
                    "interruption_sent",
                    data={
                        "scope": frame.interrupted_scope,
                        "event_id": reply.event_id,
                        "t": self.ctx.clock.now(),
                        "last_audio_t": reply.last_audio_at,
                    },
                )
            )
            # A text-only client has read every part it was sent; a voice client only what it has heard.
            heard = frame.heard or (
                reply.text.strip() if self.state.text_only else self.heard_text(frame.interrupted_scope)
            )
            original = frame.original or reply.text
            if original.strip() and heard != original.strip():
                await self.state.send(
                    {
                        "type": "agent_response_correction",
                        "agent_response_correction_event": {
                            "original_agent_response": original,
                            "corrected_agent_response": heard,
                            "event_id": reply.event_id,
                        },
                    }
                )

    # -- user side and the rest -----------------------------------------------------------------------------
    async def _transcript_loop(self) -> None:
        async for frame in self.transcripts:
            eid = self.state.next_event_id()
            if frame.final:
                msg = {
                    "type": "user_transcript",
                    "user_transcription_event": {"user_transcript": frame.text, "event_id": eid},
                }
            else:
                msg = {
                    "type": "tentative_user_transcript",
                    "tentative_user_transcription_event": {"user_transcript": frame.text, "event_id": eid},
                }
            if not await self.state.send(msg):
                return

    async def _event_loop(self) -> None:
        async for frame in self.events:
            d = frame.data
            if frame.kind == "client_tool_call":
                reply = self._reply(frame.scope) if frame.scope else None
                msg = {
                    "type": "client_tool_call",
                    "client_tool_call": {
                        "tool_name": d.get("tool_name"),
                        "tool_call_id": d.get("tool_call_id"),
                        "parameters": d.get("parameters", {}),
                        "event_id": reply.event_id if reply else self.state.next_event_id(),
                    },
                }
                await self.state.send(msg)
            elif frame.kind == "error":
                code = d.get("code", 1011)
                await self.state.error(
                    str(d.get("error_type", "unknown")),
                    str(d.get("message", "")),
                    code if isinstance(code, int) else 1011,
                )

    async def _vad_loop(self) -> None:
        """Scores as a client would draw them: on change, not on every window.

        A score every 32 ms (or every 100 ms) of every session was a tenth of the server's event loop
        at 100 sessions (experiments/capacity.py), nearly all of it repeating a silence's ~0.01. So a
        score goes out when it has moved by ``vad_score_min_change`` from the last one sent (compared
        with the last *sent*, so a fall or rise inside one interval still goes out once it ends), and
        at least every ``vad_score_idle_ms``."""
        p = self.params
        interval, idle = p.vad_score_interval_ms / 1000, p.vad_score_idle_ms / 1000
        last_sent, last_score = -1e9, -1.0
        async for frame in self.vad:
            if not p.send_vad_scores or frame.kind != "score":
                continue
            now = self.ctx.clock.now()
            since = now - last_sent
            if since < interval:
                continue
            if abs(frame.score - last_score) < p.vad_score_min_change and since < idle:
                continue
            last_sent, last_score = now, frame.score
            await self.state.send(
                {"type": "vad_score", "vad_score_event": {"vad_score": round(frame.score, 3)}}
            )
