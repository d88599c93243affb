"""``vad.energy``: voice activity from signal energy. No model, fully deterministic.

Good for tests, demos and clean close-talk audio; ``vad.silero`` is the one for real rooms. The
output contract is the one every VAD node keeps: audio passes through unchanged (so STT can hang
off the VAD), and ``events`` carries ``start``/``end`` (with audio timestamps) and ``score``.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from ah.runtime.sdk import AudioFrame, Input, Node, Output, Params, VadFrame

WINDOW = 512  # samples: 32 ms at 16 kHz, the window silero uses too


class EnergyVadParams(Params):
    threshold_dbfs: float = Field(-40.0, le=0, description="Level above which a window counts as speech.")
    min_speech_ms: int = Field(64, ge=0, description="Speech this long starts a segment.")
    min_silence_ms: int = Field(160, ge=0, description="Silence this long ends a segment.")


class EnergyVad(Node[EnergyVadParams]):
    """Speech start/end from RMS level over 32 ms windows, with hysteresis in time."""

    summary = "voice activity from signal energy (deterministic)"
    params_model = EnergyVadParams
    audio = Input(AudioFrame, doc="16 kHz mono PCM16")
    audio_out = Output(AudioFrame, doc="the same audio, for STT")
    events = Output(VadFrame, doc="start / end / score")

    async def run(self) -> None:
        p = self.params
        buf = np.zeros(0, dtype=np.int16)
        samples = 0
        speaking = False
        run_ms = 0.0  # how long the current evidence (speech while silent, silence while speaking) lasts
        win_ms = WINDOW / 16
        async for frame in self.audio:
            await self.audio_out.send(frame)
            buf = np.concatenate([buf, np.frombuffer(frame.pcm, dtype="<i2")])
            while len(buf) >= WINDOW:
                win, buf = buf[:WINDOW], buf[WINDOW:]
                samples += WINDOW
                rms = float(np.sqrt(np.mean(win.astype(np.float64) ** 2))) / 32768
                dbfs = 20 * math.log10(rms) if rms > 0 else -120.0
                score = 1 / (1 + math.exp(-(dbfs - p.threshold_dbfs) / 3))
                t = samples / 16000
                await self.events.send(VadFrame("score", t, score))
                voiced = dbfs >= p.threshold_dbfs
                if voiced != speaking:
                    run_ms += win_ms
                    needed = p.min_speech_ms if not speaking else p.min_silence_ms
                    if run_ms >= needed:
                        speaking = voiced
                        run_ms = 0.0
                        # Timestamps point at where the change began, not where it was confirmed.
                        at = t - (needed / 1000 if needed else win_ms / 1000)
                        await self.events.send(
                            VadFrame("start" if speaking else "end", max(0.0, at), score, confirmed_at=t)
                        )
                else:
                    run_ms = 0.0
        if speaking:
            await self.events.send(VadFrame("end", samples / 16000, 0.0))
