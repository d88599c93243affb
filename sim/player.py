"""The simulated user: plays a script over the ElevenLabs Agents protocol and writes down what happened.

It behaves as a client with a microphone and a loudspeaker. The microphone streams 20 ms chunks
continuously (silence between utterances, as a real one does), each sent when its 20 ms have been
"captured", on the given clock. The loudspeaker is a playout model of what the official clients do:
agent audio chunks play back to back from when they arrive; an ``interruption`` stops that reply at
once and later audio of it is ignored. So "the agent's audio stopped at the client" and "it resumed"
are times on the timeline, not guesses.

It runs on any clock and any link: a WebSocket to a real server in real time, or an in-memory
connection to a session on a :class:`~ah.runtime.clock.VirtualClock`, where a ten-second
conversation plays in a fraction of a second with exact timestamps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from ah.runtime.clock import Clock
from ah.sim.script import SR, Clip, Scenario

CHUNK_S = 0.02
CHUNK_BYTES = int(SR * CHUNK_S) * 2
QUIET_S = 0.4  # the agent is "done" after this long with nothing playing and nothing arriving
SKIP_TYPES = {"vad_score", "ping", "audio"}  # not kept in the message log (audio is in the playout)


class Link(Protocol):
    """The client's end of one conversation: JSON messages both ways."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def recv(self) -> dict[str, Any] | None:
        """The next server message, or None once the server has closed."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class UserSpan:
    step: int
    role: str
    text: str
    file: str
    start: float  # clock time the clip began
    end: float  # clock time the clip ended
    voiced: list[tuple[float, float]]  # clock times of the sound in it


@dataclass(slots=True)
class Playout:
    event_id: int
    start: float
    end: float


@dataclass
class Timeline:
    """Everything one simulated conversation produced, in session clock seconds."""

    scenario: str
    t0: float = 0.0  # the conversation began (metadata received)
    audio_t0: float = 0.0  # audio time 0 of the user's stream
    end: float = 0.0
    user: list[UserSpan] = field(default_factory=list)
    playout: list[Playout] = field(default_factory=list)
    messages: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    server: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    first_audio: dict[int, float] = field(default_factory=dict)  # event_id -> first chunk received
    reply_start: dict[int, float] = field(default_factory=dict)  # event_id -> first text or audio
    interruptions: dict[int, float] = field(default_factory=dict)  # event_id -> interruption received
    skipped_steps: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Times relative to the start of the conversation, in seconds (rounded to 0.1 ms)."""

        def r(t: float) -> float:
            return round(t - self.t0, 4)

        return {
            "scenario": self.scenario,
            "duration_s": r(self.end),
            "audio_t0": r(self.audio_t0),
            "user": [
                {
                    "step": u.step,
                    "role": u.role,
                    "text": u.text,
                    "file": u.file,
                    "start": r(u.start),
                    "end": r(u.end),
                    "voiced": [[r(a), r(b)] for a, b in u.voiced],
                }
                for u in self.user
            ],
            "agent_playout": [
                {"event_id": p.event_id, "start": r(p.start), "end": r(p.end)} for p in self.playout
            ],
            "messages": [{"t": r(t), "type": k, **d} for t, k, d in self.messages],
            "server": [self._server_json(t, k, d) for t, k, d in self.server],
            "interruptions": {str(k): r(v) for k, v in self.interruptions.items()},
            "skipped_steps": self.skipped_steps,
        }

    def _server_json(self, t: float, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """A server event with its clock times made relative (``audio_t`` is audio time: kept as is)."""
        out = {"event": kind, **data, "t": round(t - self.t0, 4)}
        if isinstance(out.get("last_audio_t"), float):
            out["last_audio_t"] = round(out["last_audio_t"] - self.t0, 4)
        return out


class Player:
    """Plays one scenario over one link on one clock."""

    def __init__(self, scenario: Scenario, clips: list[Clip], link: Link, clock: Clock) -> None:
        self.sc = scenario
        self.clips = clips
        self.link = link
        self.clock = clock
        self.tl = Timeline(scenario.scenario)
        self._playhead = 0.0
        self._last_agent = 0.0  # last agent message (text or audio) received
        self._started = asyncio.Event()
        self._closed = False
        self._interrupted_upto = 0

    # -- the loudspeaker -------------------------------------------------------------------------------------
    def _on_audio(self, t: float, event_id: int, nbytes: int) -> None:
        if event_id <= self._interrupted_upto:
            return  # the official clients drop audio of an interrupted reply
        self.tl.first_audio.setdefault(event_id, t)
        self.tl.reply_start.setdefault(event_id, t)
        d = nbytes / 2 / SR
        start = max(t, self._playhead)
        self._playhead = start + d
        last = self.tl.playout[-1] if self.tl.playout else None
        if last is not None and last.event_id == event_id and abs(last.end - start) < 1e-6:
            last.end = self._playhead
        else:
            self.tl.playout.append(Playout(event_id, start, self._playhead))

    def _on_interruption(self, t: float, event_id: int) -> None:
        self.tl.interruptions.setdefault(event_id, t)
        self._interrupted_upto = max(self._interrupted_upto, event_id)
        kept: list[Playout] = []
        for p in self.tl.playout:
            if p.event_id <= event_id and p.end > t:
                if p.start >= t:
                    continue
                p.end = t
            kept.append(p)
        self.tl.playout = kept
        self._playhead = min(self._playhead, max(t, max((p.end for p in kept), default=t)))

    async def _receive(self) -> None:
        while (msg := await self.link.recv()) is not None:
            t = self.clock.now()
            kind = str(msg.get("type", ""))
            if kind == "conversation_initiation_metadata":
                self._started.set()
            elif kind == "ping":
                ev = msg.get("ping_event", {})
                await self.link.send({"type": "pong", "event_id": ev.get("event_id", 0)})
            elif kind == "audio":
                ev = msg["audio_event"]
                self._on_audio(t, int(ev["event_id"]), len(base64.b64decode(ev["audio_base_64"])))
                self._last_agent = t
            elif kind == "interruption":
                self._on_interruption(t, int(msg["interruption_event"]["event_id"]))
            elif kind in ("agent_chat_response_part", "agent_response"):
                body = msg.get("text_response_part") or msg.get("agent_response_event") or {}
                eid = int(body.get("event_id", 0))
                if eid > self._interrupted_upto:
                    self.tl.reply_start.setdefault(eid, t)
                self._last_agent = t
            if kind not in SKIP_TYPES and not (kind == "agent_chat_response_part" and self._is_delta(msg)):
                body = next((v for k, v in msg.items() if k != "type" and isinstance(v, dict)), {})
                self.tl.messages.append((t, kind, dict(body)))
        self._closed = True

    @staticmethod
    def _is_delta(msg: dict[str, Any]) -> bool:
        part = msg.get("text_response_part")
        return isinstance(part, dict) and part.get("type") == "delta"

    # -- the microphone ----------------------------------------------------------------------------------------
    def _quiet_since(self) -> float:
        return max(self._playhead, self._last_agent)

    def _ready_at(self, i: int, prev_end: float) -> float | None:
        """When step ``i`` may start, or None if its trigger has not happened yet."""
        step = self.sc.steps[i]
        delay = step.delay_ms / 1000
        if step.after == "start":
            return self.tl.t0 + delay
        if step.after == "previous":
            return prev_end + delay
        new = [t for t in self.tl.first_audio.values() if t >= prev_end]
        if step.after == "agent_audio":
            # The listener hears it when its first chunk plays, which is when it arrives (or the playhead).
            return min(new) + delay if new else None
        quiet = self._quiet_since()
        if new and self.clock.now() >= quiet + QUIET_S:
            return quiet + QUIET_S + delay
        return None

    async def play(self) -> Timeline:
        """Run the conversation; returns its timeline (closing the link at the end)."""
        receiver = asyncio.ensure_future(self._receive())
        try:
            await self.link.send(
                {
                    "type": "conversation_initiation_client_data",
                    "conversation_config_override": {},
                    "dynamic_variables": {"user_name": "Sam"},
                }
            )
            await asyncio.wait(
                {receiver, asyncio.ensure_future(self._started.wait())}, return_when="FIRST_COMPLETED"
            )
            if not self._started.is_set():
                raise ConnectionError("the server closed before conversation_initiation_metadata")
            await self._stream()
        finally:
            self.tl.end = self.clock.now()
            await self.link.close()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, ConnectionError):
                await asyncio.wait_for(receiver, 2.0)
            receiver.cancel()
        return self.tl

    async def _stream(self) -> None:
        clock = self.clock
        tl = self.tl
        tl.t0 = tl.audio_t0 = clock.now()
        steps = self.sc.steps
        i = 0
        prev_end = tl.t0
        current: tuple[int, Clip, int, float] | None = None  # step, clip, byte position, clock start
        k = 0  # chunks sent
        silence = bytes(CHUNK_BYTES)
        while not self._closed:
            a = tl.audio_t0 + k * CHUNK_S  # the audio time this chunk starts at
            if current is None and i < len(steps):
                at = self._ready_at(i, prev_end)
                if at is not None and a >= at - 1e-9:
                    current = (i, self.clips[i], 0, a)
            if current is not None:
                idx, clip, pos, start = current
                chunk = clip.pcm[pos : pos + CHUNK_BYTES]
                chunk += bytes(CHUNK_BYTES - len(chunk))
                pos += CHUNK_BYTES
                if pos >= len(clip.pcm):
                    end = start + clip.duration_s
                    st = steps[idx]
                    tl.user.append(
                        UserSpan(
                            idx,
                            st.role,
                            st.text,
                            st.say,
                            start,
                            end,
                            [(start + x, start + y) for x, y in clip.voiced],
                        )
                    )
                    prev_end = end
                    current = None
                    i += 1
                else:
                    current = (idx, clip, pos, start)
            else:
                chunk = silence
            k += 1
            await clock.sleep_until(tl.audio_t0 + k * CHUNK_S)  # sent once "captured"
            await self.link.send({"user_audio_chunk": base64.b64encode(chunk).decode("ascii")})
            now = clock.now()
            if (
                current is None
                and i >= len(steps)
                and now >= max(prev_end, self._quiet_since()) + self.sc.tail_ms / 1000
            ):
                break
            if now - tl.t0 > self.sc.max_s:
                tl.skipped_steps = list(range(i, len(steps)))
                break
