"""The recent user audio of one session, addressed by sample index: what STT nodes cut utterances from.

Not a node type: a helper shared by the STT nodes (``stt.whisper_local``, ``stt.groq``), which all
keep the audio of the utterance in progress while the VAD decides where it ends, and transcribe a
slice of it, sometimes speculatively, while more keeps arriving. Kept bounded: only what a pending
job still needs (``holds``), the utterance in progress (``keep_from``) and a short pre-roll (a VAD
``start`` points back in time) survive, never more than ``max_s`` seconds.
"""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt

SR = 16000
#: Audio kept before "now" while no one speaks: a VAD start points back in time.
PREROLL_S = 2.0
#: Never keep more than this, however long someone talks.
MAX_BUFFER_S = 120.0


class AudioBuffer:
    """16 kHz PCM16 mono audio by sample index from the start of the stream."""

    def __init__(self, preroll_s: float = PREROLL_S, max_s: float = MAX_BUFFER_S) -> None:
        self.buf = bytearray()
        self.first = 0  # sample index of buf[0]
        self.received = 0
        self.done = False
        self.holds: list[int] = []  # sample indices a pending job still needs
        self.more = asyncio.Event()
        self._preroll = int(preroll_s * SR)
        self._max = int(max_s * SR)

    def append(self, pcm: bytes, keep_from: int) -> None:
        """Add audio; drop what is older than ``keep_from``, the pre-roll and every hold."""
        self.buf += pcm
        self.received += len(pcm) // 2
        floor = min([keep_from, self.received - self._preroll, *self.holds])
        floor = max(floor, self.received - self._max)
        if floor > self.first:
            del self.buf[: (floor - self.first) * 2]
            self.first = floor
        self.more.set()

    def finish(self) -> None:
        """The stream has ended: waiters stop waiting for audio that will never come."""
        self.done = True
        self.more.set()

    async def wait_for(self, sample: int) -> None:
        """Until audio up to ``sample`` has arrived (or the stream has ended)."""
        while self.received < sample and not self.done:
            self.more.clear()
            await self.more.wait()

    def pcm(self, a: int, b: int) -> bytes:
        """Samples ``[a, b)`` as PCM16 bytes (clipped to what is kept)."""
        a = max(a, self.first)
        b = min(b, self.received)
        return bytes(self.buf[(a - self.first) * 2 : (b - self.first) * 2]) if b > a else b""

    def slice(self, a: int, b: int) -> npt.NDArray[np.float32]:
        """Samples ``[a, b)`` as float32 in [-1, 1)."""
        return np.frombuffer(self.pcm(a, b), dtype="<i2").astype(np.float32) / 32768.0
