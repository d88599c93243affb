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
