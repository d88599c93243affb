"""What every utterance-based STT node shares: cutting the user's audio into utterances by the VAD.

Not a node type: the base of ``stt.whisper_local`` and ``stt.groq``, which differ only in how one
slice of audio becomes text. An utterance runs from a VAD ``start`` to the VAD ``end`` that is not
followed by another ``start`` within ``endpoint_silence_ms`` of audio time, counted from the end of
speech (as the turn policies count their silence). Decided on the VAD's own time line, it is exact
whatever the pace of the audio. A final transcript is only ever sent for a closed utterance, in
order, so nothing is sent twice.

Speculation (``speculative: true``): at each VAD ``end`` the utterance so far is transcribed at once,
while the silence is still being timed, and that run's result becomes the final transcript if the
endpoint is confirmed; speech resuming first cancels it. A subclass may start such a run sooner
(``_on_score``, ``_on_audio``), and it keeps what it started in ``_job``.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Protocol, TypeVar, cast

from ah.nodes.audio_buffer import SR, AudioBuffer
from ah.runtime.sdk import (
    AudioFrame,
    Input,
    Node,
    Output,
    Params,
    SessionEvent,
    TranscriptFrame,
    VadFrame,
)


class Heard(Protocol):
    """What a transcription run returns: its text ("" for nothing) and ASR confidence."""

    @property
    def text(self) -> str: ...
    @property
    def confidence(self) -> float | None: ...


class UtteranceParams(Protocol):
    """The params every utterance-based STT node has (each declares them in its own params model)."""

    speculative: bool
    endpoint_silence_ms: int
    pad_ms: int


P = TypeVar("P", bound=Params)


class UtteranceStt(Node[P]):
    """VAD events and audio in, one final transcript per utterance out; ``_transcribe`` is the engine."""

    audio = Input(AudioFrame, doc="user audio (16 kHz mono PCM16), usually the VAD's passthrough")
    vad = Input(VadFrame, doc="speech start / end / score, on the same audio time line")
    transcripts = Output(TranscriptFrame, doc="one final transcript per utterance, with confidence")
    #: The node type's name, for error messages.
    label: ClassVar[str] = "stt"

    @property
    def utterance_params(self) -> UtteranceParams:
        return cast(UtteranceParams, self.params)

    # -- engine: what a subclass provides ---------------------------------------------------------------------
    async def _transcribe(self, a: int, b: int, t0: float, t1: float, speculative: bool) -> Heard:
        """Transcribe samples ``[a, b)`` of ``self._audio`` (utterance bounds ``t0``..``t1`` in audio time).
        Must take ``a`` out of ``self._audio.holds`` once it has read the audio."""
        raise NotImplementedError

    def _on_score(self, ev: VadFrame) -> None:
        """A VAD score while the user speaks (hook for starting a speculative run early)."""

    def _on_speech_start(self, ev: VadFrame) -> None:
        """A VAD start (hook; ``self._utt_start`` is still None if it begins an utterance)."""

    def _on_audio(self, pcm: bytes) -> None:
        """User audio, as it arrives (hook; it is already in ``self._audio``)."""

    # -- running ------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        self._audio = AudioBuffer()
        self._finals: asyncio.Queue[tuple[asyncio.Task[Any], float, float] | None] = asyncio.Queue()
        self._utt_start: float | None = None  # audio time the current utterance began
        self._utt_end = 0.0
        self._utt_upto: float | None = 0.0  # how far the VAD had judged when the utterance ended
        self._speaking = False
        self._deadline: float | None = None  # VAD time at which the utterance is final
        self._vad_t = 0.0  # how far the VAD has reported
        self._job: asyncio.Task[Any] | None = None  # speculative transcription of it
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._audio_loop())
            tg.create_task(self._vad_loop())
            tg.create_task(self._emit_loop())

    async def _audio_loop(self) -> None:
        pad = self.utterance_params.pad_ms / 1000
        async for frame in self.audio:
            if frame.sample_rate != SR:
                raise ValueError(f"{self.label} needs {SR} Hz audio, got {frame.sample_rate} Hz")
            start = self._utt_start
            keep_from = int((start - pad) * SR) if start is not None else self._audio.received
            self._audio.append(frame.pcm, keep_from)
            self._on_audio(frame.pcm)
        self._audio.finish()

    async def _vad_loop(self) -> None:
        p = self.utterance_params
        gap = p.endpoint_silence_ms / 1000
        async for ev in self.vad:
            self._vad_t = max(self._vad_t, ev.t)
            if ev.kind == "score" and self._speaking:
                self._on_score(ev)
            elif ev.kind == "start":
                self._speaking = True
                self._on_speech_start(ev)
                self._deadline = None
                if self._utt_start is None:
                    self._utt_start = ev.t
                else:  # speech resumed: a transcript of the utterance so far is stale
                    self._drop_job()
            elif ev.kind == "end" and self._speaking:
                self._speaking = False
                self._utt_end = ev.t
                self._utt_upto = self._vad_t
                # Counted from the end of speech, as the turn policy counts its silence: counted from the
                # VAD's confirmation (its hysteresis later), every final transcript came that much late.
                self._deadline = ev.t + gap
                if p.speculative and self._job is None:  # (an early run may be out already)
                    self._job = self._start(self._utt_start or 0.0, ev.t, self._vad_t, speculative=True)
            if self._deadline is not None and self._vad_t >= self._deadline - 1e-9:
                self._close()
        # End of the stream: what was said so far is final.
        if self._utt_start is not None:
            if self._speaking:
                self._utt_end = max(self._vad_t, self._audio.received / SR)
                self._utt_upto = None  # up to the end of the audio
            self._close()
        self._finals.put_nowait(None)

    def _close(self) -> None:
        """The current utterance is final: queue its transcript (the speculative one if there is one)."""
        assert self._utt_start is not None
        job = self._job
        if job is None:
            job = self._start(self._utt_start, self._utt_end, self._utt_upto, speculative=False)
        self._finals.put_nowait((job, self._utt_start, self._utt_end))
        self._utt_start = None
        self._deadline = None
        self._job = None

    def _drop_job(self) -> None:
        """Cancel the speculative run out, if any: its transcript is stale."""
        if self._job is not None:
            self._job.cancel()
            self._job = None

    def _start(
        self, t0: float, t1: float, upto: float | None, *, speculative: bool, cue: str = ""
    ) -> asyncio.Task[Any]:
        """Transcribe [t0 - pad, t1 + pad], but no further than ``upto`` (what the VAD has judged):
        the trailing pad never delays the start, and the audio a run hears depends on the VAD's time
        line only, not on how far ahead the audio happens to be."""
        pad = self.utterance_params.pad_ms / 1000
        a = max(0, round((t0 - pad) * SR))
        b = round((t1 + pad) * SR)
        if upto is not None:
            b = max(min(b, round(upto * SR)), round(t1 * SR))
        self._audio.holds.append(a)
        # For metrics and tests: every run started, including speculative ones later discarded.
        self.ctx.emit(
            SessionEvent(
                "stt_started",
                data={
                    "t_start": t0,
                    "t_end": t1,
                    "audio_s": (b - a) / SR,
                    "speculative": speculative,
                    "cue": cue or ("vad_end" if speculative else "final"),
                },
            )
        )
        return self._tg.create_task(self._transcribe(a, b, t0, t1, speculative))

    async def _emit_loop(self) -> None:
        while (item := await self._finals.get()) is not None:
            job, t0, t1 = item
            result: Heard = await job
            if result.text:
                await self.transcripts.send(TranscriptFrame(result.text, True, result.confidence, t0, t1))
