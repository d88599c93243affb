"""``tts.tone``: "speech" made of tones, one per word, with exact character timings.

Named for what it is: not a voice. It gives tests and demos agent audio whose length, timing and
alignment are known exactly, so playout, interruption and correction can be checked to the
millisecond. It keeps the contract of every TTS node: speak each sentence as soon as its text is
complete, in the text's scope, as 16 kHz ``SpeechFrame`` chunks with alignment, and mark the
reply's last chunk.
"""

from __future__ import annotations

import math
import re

import numpy as np
from pydantic import Field

from ah.runtime.sdk import Alignment, Input, Node, Output, Params, ReplyTextFrame, SpeechFrame

SR = 16000
SENTENCE_END = re.compile(r"[.!?;:]\s*$")


class ToneTtsParams(Params):
    ms_per_char: int = Field(60, ge=1, le=1000, description="Audio length of each character.")
    chunk_ms: int = Field(40, ge=10, le=1000, description="Audio chunk size sent downstream.")
    first_audio_ms: int = Field(30, ge=0, description="Simulated time to first audio of a sentence.")
    voice: str = Field("tone", description="Accepted for override tests; changes the base pitch.")
    amplitude: float = Field(0.2, ge=0, le=1)


class ToneTts(Node[ToneTtsParams]):
    """Turns reply text into tone 'speech' sentence by sentence, with character alignment."""

    summary = "tones per word with exact alignment (deterministic, not a voice)"
    params_model = ToneTtsParams
    text = Input(ReplyTextFrame, doc="reply text: start / delta / stop")
    speech = Output(SpeechFrame, doc="16 kHz speech chunks with text and alignment")

    async def run(self) -> None:
        pending: dict[int, str] = {}
        async for frame in self.text:
            scope = frame.scope
            if frame.kind == "start":
                pending[scope] = ""
            elif frame.kind == "delta":
                pending[scope] = pending.get(scope, "") + frame.text
                if SENTENCE_END.search(pending[scope]):
                    sentence, pending[scope] = pending[scope], ""
                    await self.ctx.scopes.run_in(scope, self._speak(sentence, scope))
            elif frame.kind == "stop":
                rest = pending.pop(scope, "")
                if rest.strip():
                    await self.ctx.scopes.run_in(scope, self._speak(rest, scope))
                await self.speech.send(SpeechFrame(b"", SR, last=True, scope=scope))

    async def _speak(self, sentence: str, scope: int) -> None:
        p = self.params
        await self.ctx.clock.sleep(p.first_audio_ms / 1000)
        base = 180 + (sum(map(ord, p.voice)) % 60)
        per_char = SR * p.ms_per_char // 1000
        pcm = np.zeros(per_char * len(sentence), dtype=np.float32)
        for w, m in enumerate(re.finditer(r"\S+", sentence)):
            a, b = m.start() * per_char, m.end() * per_char
            t = np.arange(b - a) / SR
            pcm[a:b] = np.sin(2 * math.pi * (base + 40 * (w % 5)) * t)
        samples = (pcm * p.amplitude * 32767).astype("<i2")
        chunk = SR * p.chunk_ms // 1000
        for start in range(0, len(samples), chunk):
            # Each character belongs to the chunk in which it starts; times are relative to the chunk.
            first = -(-start // per_char)
            last = min(len(sentence), -(-(start + chunk) // per_char))
            chars = list(sentence[first:last])
            starts = [(first + i) * p.ms_per_char - start * 1000 // SR for i in range(len(chars))]
            await self.speech.send(
                SpeechFrame(
                    samples[start : start + chunk].tobytes(),
                    SR,
                    text="".join(chars),
                    alignment=Alignment(chars, starts, [p.ms_per_char] * len(chars)),
                    scope=scope,
                )
            )
