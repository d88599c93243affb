"""What one turn was, as times on the session clock, and the §5 figures computed from them.

A :class:`TurnRecord` is filled in by :class:`ah.telemetry.turns.TurnTracker` while the turn happens
(slotted, cheap to update from frame taps) and turned into :class:`TurnMetrics` — the pydantic form
that crosses boundaries (the per-turn JSONL files, ``ah ab``) — once the turn is over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

#: The per-turn figures, in milliseconds unless named otherwise, each defined in ARCHITECTURE.md §5.
FIGURES: dict[str, str] = {
    "response_latency_ms": "end of user speech -> first agent audio sent (typed turns: from the commit)",
    "endpointing_ms": "end of user speech -> turn committed",
    "stt_ms": "VAD end of speech -> final transcript",
    "llm_ttft_ms": "turn committed -> first LLM text",
    "tts_ttfa_ms": "first LLM text -> first TTS audio",
    "engine_ms": "first TTS audio -> first audio sent to the client (channels, pacing, wire)",
    "agent_speech_ms": "first audio sent -> reply heard to the end, or cut off",
    "barge_in_reaction_ms": "onset of interrupting speech -> reply cancelled (server side)",
    "cancel_tail_ms": "reply cancelled -> its last audio frame left the server",
    "interruption_event_ms": "reply cancelled -> interruption event sent to the client",
    "false_interruption_resume_ms": "end of the burst that paused the reply -> reply resumed",
    "asr_confidence": "exp(mean token log-probability) of the final transcript(s), 0..1",
}


@dataclass(slots=True)
class TurnRecord:
    """One user turn and the agent reply to it. Times are session-clock seconds; None: did not happen."""

    scope: int = 0
    index: int = -1
    typed: bool = False
    user_text: str = ""
    agent_text: str = ""
    speech_start: float | None = None
    speech_end: float | None = None  # the last voiced moment (VAD audio time mapped to the clock)
    vad_end_seen: float | None = None  # when the VAD reported that end
    stt_end: float | None = None  # final transcript
    confidences: list[float] = field(default_factory=list)
    commit: float | None = None
    llm_start: float | None = None
    llm_first: float | None = None
    llm_end: float | None = None
    tts_first_audio: float | None = None
    tts_end: float | None = None
    audio_sent: float | None = None  # first audio message to the client
    reply_end: float | None = None  # heard to the end, or cancelled
    interrupted: bool = False
    barge_in_onset: float | None = None
    cancel_at: float | None = None
    interruption_sent: float | None = None
    last_audio_at: float | None = None
    pause_at: float | None = None
    burst_end: float | None = None
    resumes_ms: list[float] = field(default_factory=list)
    pauses: int = 0
    stt_node: str = ""
    llm_node: str = ""
    tts_node: str = ""
    flushed: bool = False

    @property
    def start(self) -> float | None:
        return _first(self.speech_start, self.commit, self.llm_start, self.llm_first)

    @property
    def end(self) -> float | None:
        times = [
            t
            for t in (
                self.reply_end,
                self.interruption_sent,
                self.last_audio_at,
                self.tts_end,
                self.llm_end,
                self.audio_sent,
                self.commit,
                self.stt_end,
                self.speech_end,
            )
            if t is not None
        ]
        return max(times) if times else None

    def figures(self) -> dict[str, float]:
        """The §5 figures this turn has (a turn without a barge-in has no cancel tail, and so on)."""
        out: dict[str, float] = {}

        def ms(key: str, a: float | None, b: float | None) -> None:
            if a is not None and b is not None:
                out[key] = round((b - a) * 1000, 3)

        ms("response_latency_ms", self.speech_end if not self.typed else self.commit, self.audio_sent)
        ms("endpointing_ms", self.speech_end, self.commit)
        ms("stt_ms", self.vad_end_seen, self.stt_end)
        ms("llm_ttft_ms", self.commit if self.commit is not None else self.llm_start, self.llm_first)
        ms("tts_ttfa_ms", self.llm_first, self.tts_first_audio)
        ms("engine_ms", self.tts_first_audio, self.audio_sent)
        ms("agent_speech_ms", self.audio_sent, self.reply_end)
        if self.cancel_at is not None:
            ms("barge_in_reaction_ms", self.barge_in_onset, self.cancel_at)
            if self.audio_sent is not None:
                tail = (self.last_audio_at or self.cancel_at) - self.cancel_at
                out["cancel_tail_ms"] = round(max(0.0, tail) * 1000, 3)
            ms("interruption_event_ms", self.cancel_at, self.interruption_sent)
        if self.resumes_ms:
            out["false_interruption_resume_ms"] = round(max(self.resumes_ms), 3)
        if self.confidences:
            out["asr_confidence"] = round(sum(self.confidences) / len(self.confidences), 4)
        return out


def _first(*times: float | None) -> float | None:
    for t in times:
        if t is not None:
            return t
    return None


class TurnMetrics(BaseModel):
    """One line of a session's per-turn metrics file (and the unit ``ah ab`` pairs and compares)."""

    model_config = ConfigDict(extra="allow")

    conversation_id: str
    session_id: str
    graph: str
    variant: str
    turn: int
    typed: bool = False
    interrupted: bool = False
    pauses: int = 0
    #: Seconds from the session's start to the start of this turn (ordering, plots).
    t_start_s: float | None = None
    figures: dict[str, float] = {}
    stt_node: str = ""
    llm_node: str = ""
    tts_node: str = ""
    #: Only when PII is switched on (``telemetry.pii``): what the user and the agent said.
    user_text: str | None = None
    agent_text: str | None = None
