"""Small utility nodes: sources, sinks and transforms for demos, tests and benchmarks."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from ah.runtime.sdk import AudioFrame, Frame, Input, Node, Output, Params, SessionEvent


class Passthrough(Node[Params]):
    """Forwards every frame unchanged. The unit of the engine benchmark's per-hop cost."""

    summary = "forward frames unchanged"
    inp = Input(Frame, doc="any frame")
    out = Output(Frame, doc="the same frames, in order")

    async def run(self) -> None:
        send = self.out.send
        async for frame in self.inp:
            await send(frame)


class ToneParams(Params):
    frequency_hz: float = Field(440.0, gt=0, le=8000, description="Pitch of the tone.")
    duration_s: float = Field(1.0, gt=0, le=3600, description="How long to play.")
    frame_ms: int = Field(20, ge=5, le=200, description="Frame size.")
    amplitude: float = Field(0.3, ge=0, le=1.0, description="Peak level, 0..1.")
    realtime: bool = Field(True, description="Pace frames to the session clock, like a microphone.")


class ToneSource(Node[ToneParams]):
    """A sine tone as 16 kHz PCM16 frames, paced like a live microphone when ``realtime``."""

    summary = "generate a sine tone (16 kHz PCM16)"
    params_model = ToneParams
    audio = Output(AudioFrame, doc="16 kHz mono PCM16")

    async def run(self) -> None:
        p = self.params
        sr = 16000
        n = sr * p.frame_ms // 1000
        frames = max(1, round(p.duration_s * 1000 / p.frame_ms))
        clock = self.ctx.clock
        start = clock.now()
        for i in range(frames):
            t = (np.arange(n) + i * n) / sr
            pcm = (np.sin(2 * math.pi * p.frequency_hz * t) * p.amplitude * 32767).astype("<i2").tobytes()
            await self.audio.send(AudioFrame(pcm, sr))
            if p.realtime:
                await clock.sleep_until(start + (i + 1) * p.frame_ms / 1000)


class GainParams(Params):
    gain: float = Field(1.0, ge=0, le=100, description="Linear gain applied to every sample.")


class Gain(Node[GainParams]):
    """Scales audio by a constant gain (clipped to PCM16)."""

    summary = "scale audio by a constant gain"
    params_model = GainParams
    audio_in = Input(AudioFrame, doc="16 kHz mono PCM16")
    audio_out = Output(AudioFrame, doc="scaled audio")

    async def run(self) -> None:
        g = self.params.gain
        async for frame in self.audio_in:
            x = np.frombuffer(frame.pcm, dtype="<i2").astype(np.float32) * g
            pcm = np.clip(x, -32768, 32767).astype("<i2").tobytes()
            await self.audio_out.send(AudioFrame(pcm, frame.sample_rate, scope=frame.scope))


class SinkParams(Params):
    report: bool = Field(True, description="Log a one-line summary when the stream ends.")


class Sink(Node[SinkParams]):
    """Consumes frames and reports how many arrived (and how much audio)."""

    summary = "consume frames and report a summary"
    params_model = SinkParams
    inp = Input(Frame, doc="any frame")

    async def run(self) -> None:
        count = 0
        audio_s = 0.0
        async for frame in self.inp:
            count += 1
            if isinstance(frame, AudioFrame):
                audio_s += frame.duration_s
        if self.params.report:
            self.ctx.logger.info("%s received %d frames (%.2f s of audio)", self.id, count, audio_s)
        self.ctx.emit(SessionEvent("sink_summary", data={"frames": count, "audio_s": round(audio_s, 3)}))
