"""``stt.groq``: transcripts of VAD speech segments from Groq's Whisper API (the official ``groq`` SDK).

Same ports and utterance rules as ``stt.whisper_local``, so the two swap in YAML: user ``audio`` and
the VAD's ``vad`` events in, one final :class:`TranscriptFrame` per utterance out, with ``confidence``
= exp(mean token log-probability) of the transcript (ARCHITECTURE.md §5), from ``verbose_json``'s
per-segment ``avg_logprob`` weighted by token counts. Segments Whisper itself marks as probably not
speech (``no_speech_prob`` high and ``avg_logprob`` low) are dropped, the usual filter against
hallucinations on short VAD segments.

Utterances: from a VAD ``start`` to the VAD ``end`` not followed by another ``start`` within
``endpoint_silence_ms`` of audio time, counted from the end of speech (as the turn policy counts);
a shorter pause is merged, so Whisper hears the sentence whole.
The audio goes up as 16 kHz mono PCM16 WAV (the API takes no raw PCM).

**Speculation** (``speculative: true``). Every VAD ``end`` is a tentative end of speech: the request
for the utterance so far goes out at once, while the silence is still being timed. Its result is sent
as a *tentative* transcript (``final=False``: the client sees ``tentative_user_transcript``, and an
LLM node with a ``preview`` input may start its reply early), and it becomes the final transcript when
the endpoint is confirmed. If speech resumes first, the early request is cancelled (or its answer
dropped) and the merged utterance is sent at its next end. With ``early_ms``, the request goes out
sooner still: once the VAD's scores have stayed below ``voiced_score`` that long after speech, before
the VAD's own hysteresis (``min_silence_ms``) confirms the end; a voiced window after it cancels that
request (the pause was inside the sentence) and the next pause asks again. ``early_score`` above
``voiced_score`` asks on the falling score instead: Silero's scores trail the speech by two or three
windows (0.99, 0.72, 0.28 after the last word), so the window that first drops below 0.9 already
holds the end of the speech, and asking there is one window (32 ms) sooner on many utterances. The
rule that keeps it safe is unchanged: the request's audio reaches the window that triggered it, and a
window at or above ``voiced_score`` after that cancels it and asks again, so a transcript that becomes
final has heard every voiced window.

``early_level_ms`` asks sooner still, on the level of the audio rather than the VAD's scores: once
the audio has been quiet that long after speech (each 10 ms frame below both the utterance's speech
level less 45 dB and the noise floor plus 6 dB, :mod:`ah.nodes.audio_level`; never digital silence),
the request goes out with the audio up to that moment. The level drops in the chunk where the speech
stops, while the scores trail it by two or three 32 ms windows and are only known once a whole window
has come. A pause inside the sentence that long costs a request: sound above the threshold after the
audio it heard cancels it (and a later quiet run asks again, once per run, at most
``early_level_max`` times an utterance: each request is billed, cancelled or not). Windows the VAD still
scores voiced after such a request are Silero's trail, not speech, when they began inside the audio
it heard or score below ``early_score`` over audio the level measured quiet; a window at or above
``early_score`` wholly after it cancels it as above (and the falling score asks again). Its tentative
transcript's ``t_end`` is the last voiced window it answers for, so the turn policy's own check
(a voiced window after a tentative transcript's end: the pause was inside the sentence) agrees.

**Faults.** The SDK retries 429 (honouring ``retry-after``), 5xx and connection errors, at most
``max_retries`` times: a transcription is idempotent. Every request has a deadline
(``timeout_s``, retries included). A transcription that still fails is dropped with an ``error`` event
on ``errors`` (``stt_error``, naming the node and the provider's message); the user's next utterance
is transcribed as usual.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import time
import wave
from dataclasses import dataclass
from typing import Any

import groq
import httpx
from groq.resources.audio import AsyncTranscriptions
from pydantic import Field

from ah.nodes.audio_level import FRAME, LevelMeter
from ah.nodes.cloud import describe, error_frame, key_check, models_check, provider_http_client, require_key
from ah.nodes.utterance_stt import UtteranceStt
from ah.runtime.sdk import (
    AudioFrame,
    ControlFrame,
    DoctorCheck,
    Input,
    Output,
    Params,
    SessionEvent,
    TranscriptFrame,
    VadFrame,
)

SR = 16000


class GroqSttParams(Params):
    model: str = Field("whisper-large-v3-turbo", description="Groq Whisper model.")
    language: str = Field("en", min_length=2, max_length=8, description="Spoken language (ISO 639-1).")
    prompt: str = Field("", description="Optional text that biases recognition (names, terms).")
    base_url: str | None = Field(None, description="API base URL (unset: GROQ_BASE_URL or Groq's).")
    api_key_env: str = Field("GROQ_API_KEY", description="Environment variable that holds the API key.")
    speculative: bool = Field(
        True, description="Transcribe at each tentative end of speech; redo it if speech resumes."
    )
    early_ms: int = Field(
        0,
        ge=0,
        le=2000,
        description="With speculative: also start the request once the VAD's scores have stayed below "
        "voiced_score this long after speech, before the VAD confirms the end of speech (0: at its "
        "confirmation only). Earlier transcripts, more requests (a pause inside a sentence costs one).",
    )
    voiced_score: float = Field(
        0.5, gt=0, lt=1, description="A VAD score at or above this marks a voiced window (for early_ms)."
    )
    early_score: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="With early_ms: a window scoring below this may end the speech, so the early request "
        "goes out once scores have stayed below it early_ms after speech (default: voiced_score). Above "
        "voiced_score, it asks on the VAD's falling scores, a window sooner; a voiced window after the "
        "request still cancels it, so the audio sent always holds every voiced window.",
    )
    early_level_ms: int = Field(
        0,
        ge=0,
        le=1000,
        description="With speculative: also start the early request once the audio has been quiet this long "
        "after speech (its level near the noise floor and far below the utterance's speech), before the "
        "VAD's scores fall (0: off). Sooner than the scores, which trail the speech by two or three "
        "windows; a pause inside the sentence this long costs a request (cancelled when sound resumes).",
    )
    early_level_max: int = Field(
        3,
        ge=1,
        le=20,
        description="With early_level_ms: at most this many level requests for one utterance (each is "
        "billed, cancelled or not); after that its end is found by the VAD's scores alone.",
    )
    endpoint_silence_ms: int = Field(
        300,
        ge=0,
        le=5000,
        description="Silence that closes an utterance. Keep ≤ the turn policy's: a turn waits for its final "
        "transcript, and this silence is timed on the VAD's 32 ms windows, so a window or two below the "
        "turn's has the final in when the turn's silence runs out.",
    )
    pad_ms: int = Field(100, ge=0, le=1000, description="Audio added before and after each utterance.")
    no_speech_threshold: float = Field(
        0.6, ge=0, le=1, description="Whisper's no-speech probability above which a quiet segment is dropped."
    )
    max_retries: int = Field(2, ge=0, le=10, description="SDK retries (429 with retry-after, 5xx, network).")
    timeout_s: float = Field(
        5.0, gt=0, le=120, description="Deadline for one transcription, retries included."
    )


@dataclass(slots=True)
class Recognition:
    text: str
    confidence: float | None
    ok: bool = True


def wav_bytes(pcm: bytes, sr: int = SR) -> bytes:
    """PCM16 mono as a WAV file in memory."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm)
    return buf.getvalue()


def recognition_of(tr: Any, no_speech_threshold: float) -> Recognition:
    """Text and confidence from a ``verbose_json`` transcription (segments are plain dicts)."""
    segments = getattr(tr, "segments", None) or []
    if not segments:
        text = str(getattr(tr, "text", "") or "").strip()
        return Recognition(text, None)
    texts: list[str] = []
    logprob = 0.0
    tokens = 0
    for seg in segments:
        seg = seg if isinstance(seg, dict) else dict(seg)
        text = str(seg.get("text", "")).strip()
        avg = float(seg.get("avg_logprob", 0.0))
        if not text or (float(seg.get("no_speech_prob", 0.0)) > no_speech_threshold and avg < -1.0):
            continue
        n = max(1, len(seg.get("tokens") or []))
        logprob += avg * n
        tokens += n
        texts.append(text)
    text = " ".join(texts)
    if not any(c.isalnum() for c in text):
        return Recognition("", None)
    return Recognition(text, math.exp(logprob / tokens))


class GroqStt(UtteranceStt[GroqSttParams]):
    """Final transcripts of VAD-delimited utterances from Groq Whisper, with ASR confidence."""

    summary = "Groq Whisper STT (groq SDK, verbose_json confidence), speculative at each end of speech"
    params_model = GroqSttParams
    audio = Input(AudioFrame, doc="user audio (16 kHz mono PCM16), usually the VAD's passthrough")
    vad = Input(VadFrame, doc="speech start / end / score, on the same audio time line")
    transcripts = Output(
        TranscriptFrame, doc="tentative (speculative) and final transcripts, with confidence"
    )
    errors = Output(ControlFrame, doc="error events (a transcription that failed for good)")
    label = "stt.groq"

    async def setup(self) -> None:
        p = self.params
        key = require_key(p.api_key_env, f"node {self.id!r}", f"Groq speech-to-text ({p.model})")
        self._client = groq.AsyncGroq(
            api_key=key,
            base_url=p.base_url,
            max_retries=p.max_retries,
            timeout=httpx.Timeout(p.timeout_s, connect=min(5.0, p.timeout_s)),
            http_client=provider_http_client(),  # shared TLS context; uploads in one write
        )
        # Not ``client.audio.transcriptions``: the client caches that resource, which points back at it,
        # so every ended session's client (and its connection pool) waited for a full collection.
        self._transcriptions = AsyncTranscriptions(self._client)

    @classmethod
    async def doctor(cls, params: Params) -> list[DoctorCheck]:
        assert isinstance(params, GroqSttParams)
        check, key = key_check(params.api_key_env, "Groq speech-to-text")
        if key is None:
            return [check]
        base = params.base_url or os.environ.get("GROQ_BASE_URL") or "https://api.groq.com"
        url = base.rstrip("/") + "/openai/v1/models"
        return [check, await models_check(url, {"Authorization": f"Bearer {key}"}, params.model, "Groq")]

    # -- running ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        self._last_voiced = 0.0  # audio time of the last voiced VAD window (for early_ms)
        self._last_strong = 0.0  # ... of the last window at or above early_score
        self._prev_score_t = 0.0  # ... of the end of the window before (the start of this one)
        # The early request out (``_job``): how far its audio goes, whether the level asked for it, and
        # the last voiced window it answers for (the t_end of its tentative transcript).
        self._job_upto = 0.0
        self._job_level = False
        self._job_vouched = 0.0
        self._meter = LevelMeter() if self.params.speculative and self.params.early_level_ms else None
        self._quiet_since: float | None = None  # audio time the current quiet run began (early_level_ms)
        self._level_asked: float | None = None  # ... the quiet run a level request was made for
        self._level_count = 0  # level requests made for the current utterance
        try:
            await super().run()
        finally:
            await self._client.close()

    def _on_speech_start(self, ev: VadFrame) -> None:
        self._last_voiced = self._last_strong = self._prev_score_t = self._vad_t
        self._quiet_since = None
        if self._meter is not None and self._utt_start is None:  # a new utterance
            self._meter.start_speech(ev.t)
            self._level_asked = None
            self._level_count = 0

    def _ask_early(self, t1: float, upto: float, *, level: bool) -> None:
        """Start the early request: the utterance so far, its speech to ``t1``, its audio to ``upto``."""
        start = self._utt_start or 0.0
        t1 = max(start, t1)
        self._job = self._start(start, t1, upto, speculative=True, cue="level" if level else "score")
        self._job_upto = max(t1, min(t1 + self.params.pad_ms / 1000, upto))
        self._job_level = level
        self._job_vouched = t1

    def _on_audio(self, pcm: bytes) -> None:
        meter = self._meter
        if meter is None:
            return
        if not self._speaking:  # no level is judged outside speech: the meter measures it later, at once
            self._quiet_since = None
            meter.feed(pcm, measure=False)
            return
        hold = self.params.early_level_ms / 1000
        for t, db in meter.feed(pcm):
            thr = meter.threshold(db)
            if thr is None:  # the noise is too loud to tell: the VAD's scores decide
                self._quiet_since = None
                continue
            frame_start = t - FRAME / SR
            if db >= thr:
                self._quiet_since = None
                if self._job_level and self._job is not None and frame_start >= self._job_upto - 1e-9:
                    self._drop_job()  # sound again after the audio it heard: a pause inside the sentence
                continue
            if self._quiet_since is None:
                self._quiet_since = frame_start
            if (
                self._job is None
                and self._level_asked != self._quiet_since  # one request per quiet run
                and self._level_count < self.params.early_level_max
                and t - self._quiet_since >= hold - 1e-9
            ):
                self._level_asked = self._quiet_since
                self._level_count += 1
                self._ask_early(self._quiet_since, t, level=True)

    def _on_score(self, ev: VadFrame) -> None:
        p = self.params
        window_start, self._prev_score_t = self._prev_score_t, ev.t
        if not p.speculative:
            return
        early_score = p.early_score if p.early_score is not None else p.voiced_score
        if ev.score >= p.voiced_score:
            self._last_voiced = ev.t
            if self._job is not None:
                # Voiced audio after what the request heard: that guess is stale. Except, for a request
                # the level asked for, Silero's trail: a window that began within its audio (the level
                # judges what came after), or one below early_score over audio the level measured quiet.
                trail = self._job_level and (
                    window_start < self._job_upto - 1e-9
                    or (ev.score < early_score and self._meter is not None and self._meter.t >= ev.t - 1e-9)
                )
                if trail:
                    self._job_vouched = ev.t
                else:
                    self._drop_job()
        if ev.score >= early_score:
            self._last_strong = ev.t
        elif p.early_ms and self._job is None and ev.t - self._last_strong >= p.early_ms / 1000 - 1e-9:
            # A likely end of speech, before the VAD's hysteresis confirms it: ask now, with the audio
            # up to this window (the VAD has judged no further).
            self._ask_early(self._last_voiced, self._vad_t, level=False)

    async def _transcribe(self, a: int, b: int, t0: float, t1: float, speculative: bool) -> Recognition:
        try:
            await self._audio.wait_for(b)
            pcm = self._audio.pcm(a, b)
        finally:
            self._audio.holds.remove(a)
        p = self.params
        started = time.perf_counter()
        try:
            async with asyncio.timeout(p.timeout_s):
                tr = await self._transcriptions.create(
                    file=("audio.wav", wav_bytes(pcm)),
                    model=p.model,
                    language=p.language,
                    response_format="verbose_json",
                    temperature=0.0,
                    prompt=p.prompt or groq.omit,
                )
            result = recognition_of(tr, p.no_speech_threshold)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # after the SDK's retries: this utterance is lost, the session is not
            what = (
                "TimeoutError: no answer within the deadline"
                if isinstance(exc, TimeoutError)
                else describe(exc)
            )
            self.ctx.logger.warning("%s: transcription failed: %s", self.id, what)
            result = Recognition("", None, ok=False)
            await self.errors.send(
                error_frame(
                    self.id, "stt_error", f"Groq transcription failed ({what}); please say that again"
                )
            )
        wall = time.perf_counter() - started
        self.ctx.emit(
            SessionEvent(
                "stt_run",
                data={"audio_s": len(pcm) / 2 / SR, "wall_s": wall, "text": result.text, "ok": result.ok},
            )
        )
        if speculative and result.text and self._job is asyncio.current_task():
            # Still the current guess (speech has not resumed): tell the client and the LLM early. Its
            # t_end is the last voiced window it answers for, so a turn policy that checks the VAD's
            # windows against it (a voiced one after it: the pause was inside the sentence) agrees.
            t_end = max(t1, self._job_vouched) if self._job_level else t1
            await self.transcripts.send(TranscriptFrame(result.text, False, result.confidence, t0, t_end))
        return result
