"""Frames: the values that travel along edges.

Frames are slotted dataclasses because they are the hot path (pydantic is for what crosses a
boundary). Every frame carries the id of the cancellation scope that produced it, so a cancel can
find and purge it wherever it is queued; ``scope == 0`` means "belongs to no reply" (user audio,
transcripts) and is never cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_SCOPE = 0


@dataclass(slots=True, kw_only=True)
class Frame:
    """Base of every frame type. A port typed ``Frame`` accepts any frame."""

    scope: int = NO_SCOPE


@dataclass(slots=True)
class AudioFrame(Frame):
    """PCM16 little-endian mono audio. Inside a graph audio is 16 kHz (ARCHITECTURE.md §3)."""

    pcm: bytes
    sample_rate: int = 16000

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


@dataclass(slots=True)
class TextFrame(Frame):
    """A piece of text: an LLM token run, a sentence, a transcript."""

    text: str


# --------------------------------------------------------------------------------------------------
# The voice-agent vocabulary. These are data, not behaviour: any node kind may produce or consume
# them, and protocol nodes translate them to and from a wire format.


@dataclass(slots=True)
class Alignment:
    """Character timings of a piece of agent speech, relative to the start of that audio chunk."""

    chars: list[str]
    char_start_times_ms: list[int]
    char_durations_ms: list[int]


@dataclass(slots=True)
class SpeechFrame(AudioFrame):
    """Agent speech: audio plus, where the TTS knows it, the text and character timings it speaks."""

    text: str = ""
    alignment: Alignment | None = None
    #: The reply's last chunk: once it has been heard, the reply's scope is finished.
    last: bool = False


@dataclass(slots=True)
class VadFrame(Frame):
    """Voice activity: ``kind`` is ``start``, ``end`` or ``score``; ``t`` is audio time in seconds."""

    kind: str
    t: float
    score: float = 0.0
    #: Audio time at which the VAD was sure (``t`` plus its hysteresis); 0 when not known. Lets a turn
    #: policy count its silence from the end of speech rather than from the VAD's confirmation.
    confirmed_at: float = 0.0


@dataclass(slots=True)
class TranscriptFrame(Frame):
    """What the user said. ``final`` transcripts close a user turn; others are tentative."""

    text: str
    final: bool = True
    confidence: float | None = None
    t_start: float = 0.0
    t_end: float = 0.0


@dataclass(slots=True)
class UserTurnFrame(Frame):
    """A committed user turn for the LLM: spoken (from STT) or typed (``user_message``)."""

    text: str
    typed: bool = False
    t_end_of_speech: float | None = None
    #: A preemptive turn: its reply starts held (paused) before the turn is final, and is dropped (its
    #: scope cancelled before it was ever resumed) if the user goes on; an LLM keeps a dropped one out
    #: of its history.
    held: bool = False


@dataclass(slots=True)
class ReplyTextFrame(TextFrame):
    """Agent text as it is generated. ``kind``: ``start`` | ``delta`` | ``stop``; ``stop`` carries the full text."""

    kind: str = "delta"


@dataclass(slots=True)
class InterruptionFrame(Frame):
    """A reply was cut off by the user. ``heard`` is the part of the reply the user actually heard."""

    interrupted_scope: int
    original: str = ""
    heard: str = ""


@dataclass(slots=True)
class ControlFrame(Frame):
    """Conversation-level signals that are not speech: ``kind`` names it, ``data`` carries its fields.

    Kinds used by the built-in nodes: ``conversation_started`` (data: overrides, dynamic_variables,
    text_only), ``contextual_update`` (text), ``user_activity``, ``client_tool_call`` /
    ``client_tool_result``, ``feedback``, ``error`` (code, error_type, message), ``end``.
    """

    kind: str
    data: dict[str, object]
