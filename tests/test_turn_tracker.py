"""The turn tracker's reading of a session, on a virtual clock: every figure of a turn is exact.

Frames are sent through the tracker's taps for the ports of a real session of the AH-001 graph, as
its nodes would send them, with the clock advanced between them; scope changes go through the
session's real scope registry. So each §5 figure can be checked to the millisecond.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ah.runtime.clock import VirtualClock
from ah.runtime.frames import (
    ControlFrame,
    InterruptionFrame,
    ReplyTextFrame,
    SpeechFrame,
    TranscriptFrame,
    UserTurnFrame,
    VadFrame,
)
from ah.runtime.graph_loader import load_graph
from ah.runtime.node import SessionEvent
from ah.runtime.session import Session
from ah.telemetry.record import TurnRecord
from ah.telemetry.turns import SessionInfo, TurnTracker

GRAPH = Path(__file__).resolve().parents[1] / "experiments" / "AH-001" / "base.yaml"


class Collect:
    def __init__(self) -> None:
        self.turns: list[TurnRecord] = []
        self.errors: list[str] = []
        self.ended: list[bool] = []

    def session_started(self, info: SessionInfo) -> None:
        pass

    def turn(self, info: SessionInfo, turn: TurnRecord) -> None:
        self.turns.append(turn)

    def error(self, info: SessionInfo, kind: str) -> None:
        self.errors.append(kind)

    def session_ended(self, info: SessionInfo, ok: bool) -> None:
        self.ended.append(ok)


class Rig:
    def __init__(self) -> None:
        self.clock = VirtualClock(100.0)
        self.sink = Collect()
        self.tracker = TurnTracker([self.sink])
        graph = load_graph(GRAPH)
        self.session = Session(graph, clock=self.clock, attachments={}, observers=[self.tracker])
        self.scopes = self.session.scopes
        self.taps: dict[str, Any] = {}
        for nid, port in (("vad", "events"), ("stt", "transcripts"), ("turn", "turns"), ("turn", "interruptions"),
                          ("llm", "text"), ("tts", "speech"), ("client", "events")):  # fmt: skip
            spec = graph.nodes[nid].cls.outputs[port]
            self.taps[f"{nid}.{port}"] = self.tracker.tap(nid, graph.nodes[nid].type_name, spec)

    def at(self, t: float) -> None:
        self.clock.advance(100.0 + t - self.clock.now())

    def send(self, port: str, frame: Any) -> None:
        self.taps[port](frame)

    def event(self, kind: str, **data: Any) -> None:
        self.tracker.on_event(SessionEvent(kind, "out", data))

    def user_turn(self, start: float, end: float, text: str, *, commit: float) -> int:
        """Speech from ``start`` to ``end`` (the VAD confirms it 160 ms later), committed at ``commit``."""
        self.at(start + 0.064)
        self.send("vad.events", VadFrame("start", start, 0.9, confirmed_at=start + 0.064))
        self.at(end + 0.16)
        self.send("vad.events", VadFrame("end", end, 0.1, confirmed_at=end + 0.16))
        self.at(end + 0.26)
        self.send("stt.transcripts", TranscriptFrame(text, True, 0.8, start, end))
        self.at(commit)
        scope = self.scopes.open("reply")
        self.send("turn.turns", UserTurnFrame(text, scope=scope, t_end_of_speech=end))
        return scope

    def reply(self, scope: int, *, first_token: float, first_audio: float, sent: float) -> None:
        self.at(first_token)
        self.send("llm.text", ReplyTextFrame("", kind="start", scope=scope))
        self.send("llm.text", ReplyTextFrame("Sunny ", kind="delta", scope=scope))
        self.at(first_audio)
        self.send("tts.speech", SpeechFrame(bytes(640), scope=scope))
        self.at(sent)
        self.event("reply_audio_started", scope=scope)
        self.send("llm.text", ReplyTextFrame("Sunny today.", kind="stop", scope=scope))


def test_a_turn_heard_to_the_end() -> None:
    r = Rig()
    r.send("client.events", ControlFrame("conversation_started", {"conversation_id": "conv_x"}))
    scope = r.user_turn(1.0, 2.0, "What is the weather?", commit=2.4)
    r.reply(scope, first_token=2.6, first_audio=2.7, sent=2.702)
    r.at(5.0)
    r.scopes.finish(scope)  # heard to the end
    (turn,) = r.sink.turns
    assert turn.index == 0 and not turn.interrupted and r.tracker.info.conversation_id == "conv_x"
    assert turn.figures() == {
        "response_latency_ms": 702.0,
        "endpointing_ms": 400.0,
        "stt_ms": 100.0,
        "llm_ttft_ms": 200.0,
        "tts_ttfa_ms": 100.0,
        "engine_ms": 2.0,
        "agent_speech_ms": 2298.0,
        "asr_confidence": 0.8,
    }
    assert (turn.speech_start, turn.speech_end) == (pytest.approx(101.0), pytest.approx(102.0))
    assert turn.user_text == "What is the weather?" and turn.agent_text == "Sunny today."


def test_barge_in_cancel_tail_and_the_next_turn() -> None:
    r = Rig()
    first = r.user_turn(1.0, 2.0, "What is the weather?", commit=2.4)
    r.reply(first, first_token=2.6, first_audio=2.7, sent=2.7)
    # The user talks over the reply at 3.5 s; the policy cancels it 300 ms later.
    r.at(3.564)
    r.send("vad.events", VadFrame("start", 3.5, 0.9, confirmed_at=3.564))
    r.at(3.8)
    r.scopes.cancel(first)
    r.send("turn.interruptions", InterruptionFrame(first))
    assert not r.sink.turns, "not finished before the interruption has been sent"
    r.at(3.803)
    r.event("interruption_sent", scope=first, event_id=2, last_audio_t=100.0 + 3.801)
    assert len(r.sink.turns) == 1, "a cut-off reply is complete once its interruption has been sent"
    r.at(4.16 + 0.16)
    r.send("vad.events", VadFrame("end", 4.16, 0.1, confirmed_at=4.32))
    r.send("stt.transcripts", TranscriptFrame("Tomorrow.", True, None, 3.5, 4.16))
    r.at(4.6)
    second = r.scopes.open("reply")
    r.send("turn.turns", UserTurnFrame("Tomorrow.", scope=second))
    first_turn = r.sink.turns[0]
    f = first_turn.figures()
    assert first_turn.interrupted
    assert f["barge_in_reaction_ms"] == 300.0
    assert f["cancel_tail_ms"] == 1.0
    assert f["interruption_event_ms"] == 3.0
    assert f["agent_speech_ms"] == 1100.0
    r.tracker.on_event(SessionEvent("session_ended", "", {"ok": True}))
    second_turn = r.sink.turns[1]
    assert second_turn.index == 1 and second_turn.speech_start == pytest.approx(103.5)
    assert second_turn.figures()["endpointing_ms"] == pytest.approx(440.0)
    assert r.sink.ended == [True]


def test_pause_and_resume_after_a_cough() -> None:
    r = Rig()
    scope = r.user_turn(1.0, 2.0, "Tell me a story.", commit=2.4)
    r.reply(scope, first_token=2.6, first_audio=2.7, sent=2.7)
    r.at(3.064)
    r.send("vad.events", VadFrame("start", 3.0, 0.9, confirmed_at=3.064))
    r.at(3.1)
    r.scopes.pause(scope)
    r.at(3.46)
    r.send("vad.events", VadFrame("end", 3.3, 0.1, confirmed_at=3.46))  # the cough ended at 3.3 s
    r.at(4.0)
    r.scopes.resume(scope)
    r.at(6.0)
    r.scopes.finish(scope)
    (turn,) = r.sink.turns
    assert turn.pauses == 1 and not turn.interrupted
    assert turn.figures()["false_interruption_resume_ms"] == 700.0
    assert "cancel_tail_ms" not in turn.figures()


def test_errors_are_counted_and_typed_turns_time_from_the_commit() -> None:
    r = Rig()
    r.send("client.events", ControlFrame("error", {"error_type": "rate_limited"}))
    r.tracker.on_event(SessionEvent("node_failed", "llm", {}))
    assert r.sink.errors == ["rate_limited", "node_failed"]
    r.at(1.0)
    scope = r.scopes.open("reply")
    r.send("turn.turns", UserTurnFrame("hello", typed=True, scope=scope))
    r.reply(scope, first_token=1.05, first_audio=1.1, sent=1.1)
    r.scopes.finish(scope)
    (turn,) = r.sink.turns
    assert turn.typed and turn.figures()["response_latency_ms"] == 100.0
    assert "endpointing_ms" not in turn.figures()


def test_speech_that_does_not_interrupt_does_not_start_the_barge_in_clock() -> None:
    r = Rig()
    scope = r.user_turn(1.0, 2.0, "Tell me a story.", commit=2.4)
    r.reply(scope, first_token=2.6, first_audio=2.7, sent=2.7)
    # A short "mm" over the reply (too short to interrupt), then a real barge-in later.
    r.at(3.064)
    r.send("vad.events", VadFrame("start", 3.0, 0.9, confirmed_at=3.064))
    r.at(3.26)
    r.send("vad.events", VadFrame("end", 3.1, 0.1, confirmed_at=3.26))
    r.at(4.064)
    r.send("vad.events", VadFrame("start", 4.0, 0.9, confirmed_at=4.064))
    r.at(4.3)
    r.scopes.cancel(scope)
    r.tracker.on_event(SessionEvent("session_ended", "", {"ok": True}))
    assert r.sink.turns[0].figures()["barge_in_reaction_ms"] == pytest.approx(300.0)


def test_a_final_transcript_after_a_commit_on_the_tentative_one_belongs_to_that_turn() -> None:
    """cloud.yaml commits on stt.groq's tentative transcript; the final one comes after the commit.

    It used to start a phantom next turn, whose stale transcript time gave the real next turn a
    negative stt_ms (seen as -3.8 s in the capacity benchmark's per-turn files).
    """
    r = Rig()
    for k, (start, end) in enumerate(((1.0, 2.0), (6.0, 7.0))):
        r.at(start + 0.064)
        r.send("vad.events", VadFrame("start", start, 0.9, confirmed_at=start + 0.064))
        r.at(end + 0.16)
        r.send("vad.events", VadFrame("end", end, 0.1, confirmed_at=end + 0.16))
        r.send("stt.transcripts", TranscriptFrame("hello there", False, 0.8, start, end))  # tentative
        r.at(end + 0.4)
        scope = r.scopes.open("reply")
        r.send("turn.turns", UserTurnFrame("hello there", scope=scope, t_end_of_speech=end))
        r.at(end + 0.45)
        r.send("stt.transcripts", TranscriptFrame("hello there", True, 0.9, start, end))  # final, late
        r.reply(scope, first_token=end + 0.5, first_audio=end + 0.6, sent=end + 0.602)
        r.at(end + 3.0)
        r.scopes.finish(scope)
        assert len(r.sink.turns) == k + 1
    for turn in r.sink.turns:
        figures = turn.figures()
        assert figures["stt_ms"] == pytest.approx(290.0)  # VAD end seen at +160 ms, final at +450 ms
        assert figures["asr_confidence"] == pytest.approx(0.9)
