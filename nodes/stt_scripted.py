"""``stt.scripted``: a deterministic "recogniser" that returns scripted text for each speech segment.

Named for what it is: it does not listen. It lets protocol and turn-taking tests run without a
model, with exact transcripts. Each VAD segment (start → end) yields the next line of ``lines``
(cycling), or ``[N.N s of speech]`` when there are none.
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

        drainer = asyncio.get_running_loop().create_task(_drain())
        try:
            async for ev in self.vad:
                if ev.kind == "start":
                    start = ev.t
                elif ev.kind == "end":
                    text = lines[n % len(lines)] if lines else f"[{ev.t - start:.1f} s of speech]"
                    n += 1
                    await self.transcripts.send(TranscriptFrame(text, True, 1.0, start, ev.t))
        finally:
            drainer.cancel()
