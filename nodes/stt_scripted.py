"""``stt.scripted``: a deterministic "recogniser" that returns scripted text for each speech segment.

Named for what it is: it does not listen. It lets protocol and turn-taking tests run without a
model, with exact transcripts. Each VAD segment (start → end) yields the next line of ``lines``
(cycling), or ``[N.N s of speech]`` when there are none; an empty line sends nothing (noise, as a
real recogniser drops it). ``latency_ms`` delays each transcript, for scripted provider latencies.
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from ah.runtime.sdk import AudioFrame, Input, Node, Output, Params, TranscriptFrame, VadFrame


class ScriptedSttParams(Params):
    lines: list[str] = Field(
        default_factory=list, description="Transcript of each successive speech segment."
    )
    language: str = Field("en", description="Accepted for override tests; not used.")
    latency_ms: int = Field(
        0,
        ge=0,
        le=10000,
        description="Simulated recognition time: each transcript comes this long after its segment ends.",
    )


class ScriptedStt(Node[ScriptedSttParams]):
    """Emits the next scripted transcript at the end of each VAD speech segment."""

    summary = "scripted transcripts per speech segment (deterministic, no model)"
    params_model = ScriptedSttParams
    audio = Input(AudioFrame, required=False, doc="user audio (drained, not used)")
    vad = Input(VadFrame, doc="speech start / end")
    transcripts = Output(TranscriptFrame, doc="one final transcript per segment")

    async def run(self) -> None:
        lines = self.params.lines
        n = 0
        start = 0.0

        async def _drain() -> None:  # the audio is not listened to, but must not back up
            async for _ in self.audio:
                pass

        loop = asyncio.get_running_loop()
        later: list[asyncio.Task[None]] = []
        drainer = loop.create_task(_drain())
        try:
            async for ev in self.vad:
                if ev.kind == "start":
                    start = ev.t
                elif ev.kind == "end":
                    text = lines[n % len(lines)] if lines else f"[{ev.t - start:.1f} s of speech]"
                    n += 1
                    if lines and not text:
                        continue  # an empty line is a segment with no words: like Whisper, say nothing
                    frame = TranscriptFrame(text, True, 1.0, start, ev.t)
                    if self.params.latency_ms:
                        # Later segments keep their order: every one waits the same time.
                        later.append(loop.create_task(self._send_later(frame)))
                    else:
                        await self.transcripts.send(frame)
            for task in later:
                await task
        finally:
            drainer.cancel()
            for task in later:
                task.cancel()

    async def _send_later(self, frame: TranscriptFrame) -> None:
        await self.ctx.clock.sleep(self.params.latency_ms / 1000)
        await self.transcripts.send(frame)
