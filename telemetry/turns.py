"""The turn tracker: one session observer that turns frames, events and scope changes into turns.

Nothing in a node is instrumented for tracing. The tracker watches what a session already shows
(``ah.runtime.observe``): the voice vocabulary of ``ah.runtime.frames`` as nodes send it (VAD
start/end, transcripts, committed turns, reply text, agent audio, interruptions, control events),
the session's events (the protocol node's ``reply_audio_started`` and ``interruption_sent``) and
the reply scopes' states (paused, resumed, cancelled, heard to the end). From those it builds one
:class:`TurnRecord` per turn and hands each finished turn to its sinks (traces, metrics files,
Prometheus) once, off the hot path (``loop.call_soon``), so a cancel is never slowed by tracing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ah.runtime.frames import (
    NO_SCOPE,
    AudioFrame,
    ControlFrame,
    Frame,
    InterruptionFrame,
    ReplyTextFrame,
    SpeechFrame,
    TranscriptFrame,
    UserTurnFrame,
    VadFrame,
)
from ah.runtime.node import SessionEvent
from ah.runtime.observe import FrameTap
from ah.runtime.ports import PortSpec
from ah.runtime.scopes import Scope, ScopeState
from ah.telemetry.record import TurnRecord

if TYPE_CHECKING:
    from ah.runtime.session import Session

log = logging.getLogger("ah.telemetry")


@dataclass(slots=True)
class SessionInfo:
    """Who a turn belongs to, and how to turn session-clock times into wall-clock times."""

    session_id: str
    conversation_id: str
    graph: str
    variant: str
    clock0: float = 0.0
    wall_ns0: int = 0
    errors: int = 0

    def wall_ns(self, t: float) -> int:
        return self.wall_ns0 + round((t - self.clock0) * 1e9)

    def since_start(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.clock0, 6)


class TurnSink(Protocol):
    """Where finished turns go (a tracer, a metrics file, Prometheus)."""

    def session_started(self, info: SessionInfo) -> None: ...

    def turn(self, info: SessionInfo, turn: TurnRecord) -> None: ...

    def error(self, info: SessionInfo, kind: str) -> None: ...

    def session_ended(self, info: SessionInfo, ok: bool) -> None: ...


class TurnTracker:
    """A :class:`~ah.runtime.observe.SessionObserver` that records every turn of one session."""

    def __init__(self, sinks: Sequence[TurnSink]) -> None:
        self.sinks = list(sinks)
        self.info = SessionInfo("", "", "", "")
        self.turns: dict[int, TurnRecord] = {}  # by reply scope
        self.pending: TurnRecord | None = None  # user speech not yet committed
        # The last spoken turn: a turn policy may commit on a tentative transcript (held preemptive
        # reply), so that turn's final transcript comes after its commit and belongs to it.
        self.last_spoken: TurnRecord | None = None
        self.finished: list[TurnRecord] = []
        self._next_index = 0
        self._session: Session | None = None
        self._now = time.monotonic
        self._scope_of: dict[int, int] = {}
        self._ended = False

    # -- SessionObserver -----------------------------------------------------------------------------
    def attach(self, session: Session) -> None:
        self._session = session
        self._now = session.clock.now
        self.info = SessionInfo(
            session.id,
            session.id,
            session.graph.name,
            session.graph.variant_hash,
            clock0=session.clock.now(),
            wall_ns0=time.time_ns(),
        )
        session.scopes.observe(self._on_scope)

    def tap(self, node_id: str, node_type: str, port: PortSpec) -> FrameTap | None:
        ft = port.frame_type
        if issubclass(ft, VadFrame):
            return self._vad
        if issubclass(ft, TranscriptFrame):
            return lambda f: self._transcript(f, node_type)
        if issubclass(ft, UserTurnFrame):
            return self._user_turn
        if issubclass(ft, ReplyTextFrame):
            return lambda f: self._reply_text(f, node_type)
        if issubclass(ft, SpeechFrame):
            # Agent speech only: ports typed plain AudioFrame carry the user's audio, 50 frames a second
            # for the whole conversation, and nothing a turn needs from them.
            return lambda f: self._audio(f, node_type)
        if issubclass(ft, InterruptionFrame):
            return self._interruption
        if issubclass(ft, ControlFrame):
            return self._control
        if ft is Frame:  # a port typed Frame may carry any of the above
            return lambda f: self._any(f, node_type)
        return None

    def on_event(self, event: SessionEvent) -> None:
        kind = event.kind
        if kind == "session_started":
            for sink in self.sinks:
                sink.session_started(self.info)
        elif kind == "reply_audio_started":
            turn = self._turn_of(int(event.data.get("scope", 0)))
            if turn is not None and turn.audio_sent is None:
                turn.audio_sent = self._now()
        elif kind == "interruption_sent":
            turn = self._turn_of(int(event.data.get("scope", 0)))
            if turn is not None:
                turn.interruption_sent = self._now()
                last = event.data.get("last_audio_t")
                if isinstance(last, int | float):
                    turn.last_audio_at = float(last)
                self._maybe_flush(turn)
        elif kind == "node_failed":
            self._error("node_failed")
        elif kind == "session_ended":
            self._end(bool(event.data.get("ok", False)))

    # -- frames ----------------------------------------------------------------------------------------
    def _any(self, f: Frame, node_type: str) -> None:
        if isinstance(f, VadFrame):
            self._vad(f)
        elif isinstance(f, TranscriptFrame):
            self._transcript(f, node_type)
        elif isinstance(f, UserTurnFrame):
            self._user_turn(f)
        elif isinstance(f, ReplyTextFrame):
            self._reply_text(f, node_type)
        elif isinstance(f, AudioFrame):
            self._audio(f, node_type)
        elif isinstance(f, InterruptionFrame):
            self._interruption(f)
        elif isinstance(f, ControlFrame):
            self._control(f)

    def _vad(self, f: Frame) -> None:
        assert isinstance(f, VadFrame)
        kind = f.kind
        if kind == "score":
            return
        now = self._now()
        # Audio time -> clock: the VAD reports now what it confirmed at ``confirmed_at`` (audio time).
        at = now - max(0.0, f.confirmed_at - f.t) if f.confirmed_at else now
        if kind == "start":
            if self.pending is None:
                self.pending = TurnRecord(speech_start=at)
            for turn in self.turns.values():
                if turn.reply_end is None and turn.barge_in_onset is None and turn.commit is not None:
                    turn.barge_in_onset = at  # speech over a live reply: a barge-in, if it comes to one
        elif kind == "end":
            if self.pending is not None:
                self.pending.speech_end = at
                self.pending.vad_end_seen = now
            for turn in self.turns.values():
                if turn.reply_end is not None:
                    continue
                if turn.pause_at is not None:
                    turn.burst_end = at
                else:
                    turn.barge_in_onset = None  # the speech ended and the reply played on: no barge-in

    def _transcript(self, f: Frame, node_type: str) -> None:
        assert isinstance(f, TranscriptFrame)
        if not f.final:
            return
        turn = self.pending
        late = self.last_spoken
        if turn is None and late is not None and late.stt_end is None and late.reply_end is None:
            turn = late  # committed before its final transcript (on a tentative one)
        elif turn is None:  # an STT that endpoints by itself, without a VAD in the graph
            turn = self.pending = TurnRecord(speech_start=self._now())
        turn.stt_end = self._now()
        turn.stt_node = node_type
        if f.text.strip():
            turn.user_text = f"{turn.user_text} {f.text.strip()}".strip()
        if f.confidence is not None:
            turn.confidences.append(f.confidence)

    def _user_turn(self, f: Frame) -> None:
        assert isinstance(f, UserTurnFrame)
        if f.scope == NO_SCOPE:
            return  # a typed message on its way to the turn policy, not yet a turn
        now = self._now()
        if f.typed or self.pending is None:
            turn = TurnRecord(typed=f.typed, user_text=f.text)
        else:
            turn = self.pending
            self.pending = None
            if f.t_end_of_speech is None and turn.speech_end is None:
                turn.speech_end = now
            self.last_spoken = turn
        turn.scope = f.scope
        turn.commit = now
        turn.user_text = f.text or turn.user_text
        self._register(turn)
        for other in list(self.turns.values()):  # a new turn: earlier ones are over
            if other is not turn and other.reply_end is not None:
                self._flush_soon(other)

    def _reply_text(self, f: Frame, node_type: str) -> None:
        assert isinstance(f, ReplyTextFrame)
        turn = self._turn_for_reply(f.scope)
        if turn is None:
            return
        now = self._now()
        turn.llm_node = node_type
        if f.kind == "start":
            if turn.llm_start is None:
                turn.llm_start = now
        elif f.kind == "delta":
            if turn.llm_first is None and f.text:
                turn.llm_first = now
            turn.agent_text += f.text
        elif f.kind == "stop":
            turn.llm_end = now
            if f.text:
                turn.agent_text = f.text

    def _audio(self, f: Frame, node_type: str) -> None:
        scope = f.scope
        if scope == NO_SCOPE:
            return  # user audio
        turn = self._turn_for_reply(scope)
        if turn is None:
            return
        now = self._now()
        if turn.tts_first_audio is None:
            turn.tts_first_audio = now
            turn.tts_node = node_type
        turn.tts_end = now

    def _interruption(self, f: Frame) -> None:
        assert isinstance(f, InterruptionFrame)
        turn = self._turn_of(f.interrupted_scope)
        if turn is not None:
            turn.interrupted = True

    def _control(self, f: Frame) -> None:
        assert isinstance(f, ControlFrame)
        if f.kind == "conversation_started":
            cid = f.data.get("conversation_id")
            if isinstance(cid, str) and cid:
                self.info.conversation_id = cid
        elif f.kind == "error":
            self._error(str(f.data.get("error_type", "error")))

    # -- scopes -----------------------------------------------------------------------------------------
    def _on_scope(self, scope: Scope) -> None:
        turn = self._turn_of(scope.id)
        if turn is None:
            return
        now = self._now()
        state = scope.state
        if state is ScopeState.CANCELLED:
            if turn.cancel_at is None:
                turn.cancel_at = now
                turn.interrupted = True
            if turn.reply_end is None:
                turn.reply_end = now
            self._maybe_flush(turn)
        elif state is ScopeState.DONE:
            if turn.reply_end is None:
                turn.reply_end = now
            self._maybe_flush(turn)
        elif state is ScopeState.PAUSED:
            turn.pause_at = now
            turn.burst_end = None
            turn.pauses += 1
        elif state is ScopeState.ACTIVE and turn.pause_at is not None:
            since = turn.burst_end if turn.burst_end is not None else turn.pause_at
            turn.resumes_ms.append(round((now - since) * 1000, 3))
            turn.pause_at = None
            turn.barge_in_onset = None  # that burst was not a barge-in

    # -- bookkeeping --------------------------------------------------------------------------------------
    def _register(self, turn: TurnRecord) -> None:
        turn.index = self._next_index
        self._next_index += 1
        self.turns[turn.scope] = turn

    def _root(self, scope: int) -> int:
        root = self._scope_of.get(scope)
        if root is not None:
            return root
        root = scope
        session = self._session
        if session is not None:
            s = session.scopes.get(scope)
            while s is not None and s.parent != NO_SCOPE and s.id not in self.turns:
                root = s.parent
                s = session.scopes.get(root)
        if len(self._scope_of) > 256:
            self._scope_of.clear()
        self._scope_of[scope] = root
        return root

    def _turn_of(self, scope: int) -> TurnRecord | None:
        if scope == NO_SCOPE:
            return None
        return self.turns.get(self._root(scope))

    def _turn_for_reply(self, scope: int) -> TurnRecord | None:
        """The turn of a reply; a reply nobody asked for (a first message) is a turn of its own."""
        if scope == NO_SCOPE:
            return None
        turn = self._turn_of(scope)
        if turn is None and not self._ended:
            turn = TurnRecord(scope=self._root(scope))
            self._register(turn)
        return turn

    def _maybe_flush(self, turn: TurnRecord) -> None:
        # A cut-off reply that reached the client is complete once its interruption has been sent.
        waiting = (
            turn.cancel_at is not None and turn.audio_sent is not None and turn.interruption_sent is None
        )
        if turn.reply_end is not None and not waiting:
            self._flush_soon(turn)

    def _flush_soon(self, turn: TurnRecord) -> None:
        if turn.flushed:
            return
        turn.flushed = True
        try:
            asyncio.get_running_loop().call_soon(self._flush, turn)
        except RuntimeError:  # no loop (a test driving the tracker by hand)
            self._flush(turn)

    def _flush(self, turn: TurnRecord) -> None:
        self.turns.pop(turn.scope, None)
        self.finished.append(turn)
        if len(self.finished) > 1000:
            del self.finished[:500]
        for sink in self.sinks:
            try:
                sink.turn(self.info, turn)
            except Exception:
                log.exception("telemetry sink %s failed on a turn", type(sink).__name__)

    def _error(self, kind: str) -> None:
        self.info.errors += 1
        for sink in self.sinks:
            try:
                sink.error(self.info, kind)
            except Exception:
                log.exception("telemetry sink %s failed on an error", type(sink).__name__)

    def _end(self, ok: bool) -> None:
        self._ended = True
        now = self._now()
        for turn in list(self.turns.values()):
            if turn.reply_end is None and turn.commit is not None:
                turn.reply_end = now  # the session ended under it (the client left, the server drained)
            if not turn.flushed:
                turn.flushed = True
                self._flush(turn)
        self.pending = None
        for sink in self.sinks:
            try:
                sink.session_ended(self.info, ok)
            except Exception:
                log.exception("telemetry sink %s failed at the session's end", type(sink).__name__)


def figures_of(turns: Sequence[TurnRecord]) -> list[dict[str, Any]]:
    """Each turn's index and figures (for tests and quick looks)."""
    return [{"turn": t.index, **t.figures()} for t in turns]
