"""``stt.whisper_local``: transcripts of VAD speech segments from a local Whisper (faster-whisper).

Same ports as ``stt.scripted``: user ``audio`` (the VAD's passthrough) and the VAD's ``vad`` events
in, one final :class:`TranscriptFrame` per utterance out, with ``confidence`` = exp(mean token
log-probability) of the transcript (ARCHITECTURE.md §5) and the utterance's audio-time bounds.

Utterances. The node keeps the last seconds of audio by audio time. An utterance runs from a VAD
``start`` to the VAD ``end`` that is not followed by another ``start`` within ``endpoint_silence_ms``
of audio (measured on the VAD's own time line, so it is exact whatever the pace of the audio): a short
pause inside a sentence is merged, and Whisper hears the sentence whole. A final transcript is only
ever sent for a closed utterance, so nothing is sent twice. Keep ``endpoint_silence_ms`` at or below
the turn policy's: a turn ends only once its final transcript is in, so a longer silence here would
delay every turn.

Speculation (``speculative: true``, the default). Every VAD ``end`` is a tentative end of speech: the
node starts transcribing the utterance so far at once, while the silence is still being timed, so
the transcript is ready when the endpoint is confirmed instead of a Whisper run (~0.4–0.5 s for
tiny.en on two cores with faster-whisper's 30 s window; ~0.15 s with the default ``window: fit``) later. If speech resumes first, the stale result is
discarded (a run not yet started is cancelled) and the merged utterance is transcribed at its next
end. With ``speculative: false`` transcription starts only once the endpoint is confirmed.

Models: ``tiny.en`` (default) and any other ``whisper-<name>`` entry of the model manifest
(``ah models list``), or a directory holding a CTranslate2 Whisper model. Each loads once per
process (shared by every session) and runs on the ``whisper`` thread pool, one transcription at a
time, off the event loop. Decoding is greedy (``beam_size`` 1), at temperature 0 only, without
timestamps and without conditioning on earlier text: deterministic, and bounded in time.

Session events, for metrics: ``stt_started`` (t_start, t_end, audio_s) for every run begun, discarded
speculative ones included, and ``stt_run`` (audio_s, infer_s: compute time, wall_s: including the
wait for the pool, text) for every run finished.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ah.nodes.inference import load_shared, run_blocking
from ah.nodes.model_store import MANIFEST, require
from ah.nodes.utterance_stt import UtteranceStt
from ah.runtime.sdk import AudioFrame, Input, Output, Params, SessionEvent, TranscriptFrame, VadFrame

# faster-whisper is given a local directory and never needs the hub; make sure nothing it imports tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SR = 16000
POOL = "whisper"


def known_models() -> list[str]:
    return [name.removeprefix("whisper-") for name in MANIFEST if name.startswith("whisper-")]


def _is_path(model: str) -> bool:
    return "/" in model or model.startswith(".")


class WhisperSttParams(Params):
    model: str = Field(
        "tiny.en",
        description="Whisper model: a name from `ah models list` without 'whisper-', or a CTranslate2 model dir.",
    )
    language: str = Field("en", min_length=2, max_length=8, description="Spoken language (ISO 639-1).")
    beam_size: int = Field(1, ge=1, le=10, description="Beam width (1: greedy, the fastest).")
    speculative: bool = Field(
        True, description="Start transcribing at each tentative end of speech; redo it if speech resumes."
    )
    endpoint_silence_ms: int = Field(
        300,
        ge=0,
        le=5000,
        description="Silence that closes an utterance; sooner speech is merged. Keep ≤ the turn policy's.",
    )
    pad_ms: int = Field(100, ge=0, le=1000, description="Audio added before and after each utterance.")
    window: Literal["fit", "30s"] = Field(
        "fit",
        description="Encoder input: 'fit' encodes the utterance plus 8 s of padding (~3x less work for a "
        "3 s turn; a doubtful decode is redone the standard way); '30s' pads every input to Whisper's "
        "30 s window, as faster-whisper does.",
    )
    cpu_threads: int = Field(
        1, ge=1, le=16, description="Compute threads (2 is ~25 % faster on 2 cores, loop lag higher)."
    )
    no_speech_threshold: float = Field(
        0.6, ge=0, le=1, description="Whisper's no-speech probability above which a quiet result is dropped."
    )

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        if not _is_path(v) and f"whisper-{v}" not in MANIFEST:
            raise ValueError(
                f"unknown Whisper model {v!r}; known: {', '.join(known_models())} (or a model directory)"
            )
        return v


@dataclass(slots=True)
class Recognition:
    text: str
    confidence: float | None


def model_path(model: str) -> Path:
    """The directory of Whisper model ``model``: :class:`ModelMissing` names the fix when it is absent."""
    if _is_path(model):
        path = Path(model).expanduser()
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"{path} is not a CTranslate2 Whisper model directory (no model.bin)")
        return path
    return require(f"whisper-{model}")  # missing: `ah models pull whisper-<name>`


def _load(path: str, threads: int) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)


def recognize(
    model: Any,
    audio: np.ndarray,
    *,
    language: str,
    beam_size: int,
    no_speech_threshold: float,
    window: str = "fit",
) -> Recognition:
    """Transcribe float32 16 kHz ``audio`` (blocking: run it on the pool)."""
    if window == "fit" and len(audio) < FIT_MAX_S * SR:
        quick = _recognize_fit(
            model, audio, language=language, beam_size=beam_size, no_speech_threshold=no_speech_threshold
        )
        if quick is not None:
            return quick
    segments, _info = model.transcribe(
        audio,
        language=language,
        beam_size=beam_size,
        temperature=0.0,
        without_timestamps=True,
        vad_filter=False,
        condition_on_previous_text=False,
        no_speech_threshold=no_speech_threshold,
    )
    texts: list[str] = []
    logprob = 0.0
    tokens = 0
    for seg in segments:
        text = seg.text.strip()
        if not text or (seg.no_speech_prob > no_speech_threshold and seg.avg_logprob < -1.0):
            continue
        # avg_logprob is the sum over the segment's tokens and its end token, divided by their count.
        n = len(seg.tokens) + 1
        logprob += seg.avg_logprob * n
        tokens += n
        texts.append(text)
    return _result(" ".join(texts), logprob / tokens if tokens else 0.0)


#: Longest utterance the ``fit`` window encodes as is; longer ones go through faster-whisper's 30 s windows.
FIT_MAX_S = 20.0
#: Silence (zero features, as faster-whisper pads) after the utterance, in 10 ms mel frames. Whisper
#: was trained on 30 s windows mostly padded: with less than ~8 s of padding after the speech, tiny.en
#: often fails to end its output and repeats the sentence (measured on the fixtures: 5 of 16 segments
#: repeat with 1-3 s of padding, none with 8 s).
FIT_MIN_PAD_FRAMES = 800
#: Windows are whole seconds, so the encoder sees few distinct shapes.
FIT_BUCKET_FRAMES = 100
#: Generous ceiling on tokens per second of speech (English runs at ~3-5); past it, the decode repeats.
FIT_MAX_TOKENS_PER_S = 12


def _recognize_fit(
    model: Any, audio: np.ndarray, *, language: str, beam_size: int, no_speech_threshold: float
) -> Recognition | None:
    """One decode over an encoder window just long enough for ``audio``; ``None``: use the 30 s path.

    Why: faster-whisper pads every input to 30 s of log-mel, so a 3 s turn pays for 30 s of encoder
    (~0.5 s of CPU for tiny.en here, the largest part of a turn's latency). CTranslate2's encoder
    accepts shorter inputs. Features are padded with zeros as faster-whisper pads its 30 s window, but
    only to the utterance plus ``FIT_MIN_PAD_FRAMES``; decoding, token suppression and the average
    log-probability follow faster-whisper's ``generate_with_fallback`` at temperature 0. A decode that
    runs past ``FIT_MAX_TOKENS_PER_S`` or repeats itself (faster-whisper's compression-ratio test) is
    thrown away and the utterance is transcribed again the standard way, so the shortcut can cost
    time but never accuracy. Measured on the fixtures (process CPU, 1 thread): ~0.16 s per utterance
    instead of ~0.53 s, the same text (``tests/test_stt_whisper.py``).
    """
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

    features = model.feature_extractor(audio)  # (n_mels, frames), normalised like faster-whisper's
    frames = features.shape[-1]
    width = -(-(frames + FIT_MIN_PAD_FRAMES) // FIT_BUCKET_FRAMES) * FIT_BUCKET_FRAMES
    padded = np.zeros((1, features.shape[0], width), dtype=np.float32)
    padded[0, :, :frames] = features
    encoded = model.model.encode(ctranslate2.StorageView.from_array(padded))
    tokenizer = Tokenizer(
        model.hf_tokenizer,
        model.model.is_multilingual,
        task="transcribe",
        language=language if model.model.is_multilingual else "en",
    )
    prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
    budget = int(len(audio) / SR * FIT_MAX_TOKENS_PER_S) + 8
    result = model.model.generate(
        encoded,
        [prompt],
        beam_size=beam_size,
        max_length=min(model.max_length, len(prompt) + budget),
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
    )[0]
    ids = result.sequences_ids[0]
    text = tokenizer.decode(ids).strip()
    if len(ids) >= budget or get_compression_ratio(text) > 2.4:
        return None  # ran on or repeated itself: not to be trusted
    # CTranslate2's score is the cumulative log-probability divided by the length (length_penalty 1);
    # faster-whisper's avg_logprob counts the end token too.
    avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1)
    if result.no_speech_prob > no_speech_threshold and avg_logprob < -1.0:
        return Recognition("", None)
    return _result(text, avg_logprob)


def _result(text: str, avg_logprob: float) -> Recognition:
    if not any(c.isalnum() for c in text):
        return Recognition("", None)
    return Recognition(text, math.exp(avg_logprob))


class WhisperSttLocal(UtteranceStt[WhisperSttParams]):
    """Final transcripts of VAD-delimited utterances from faster-whisper, with ASR confidence."""

    summary = "local Whisper STT (faster-whisper), tiny.en by default"
    params_model = WhisperSttParams
    audio = Input(AudioFrame, doc="user audio (16 kHz mono PCM16), usually the VAD's passthrough")
    vad = Input(VadFrame, doc="speech start / end / score, on the same audio time line")
    transcripts = Output(TranscriptFrame, doc="one final transcript per utterance, with confidence")
    label = "stt.whisper_local"

    @classmethod
    async def preload(cls, params: Params) -> None:
        assert isinstance(params, WhisperSttParams)
        path = model_path(params.model)
        threads = params.cpu_threads
        await load_shared(
            "faster-whisper", path, lambda: _load(str(path), threads), pool=POOL, threads=threads
        )

    async def setup(self) -> None:
        p = self.params
        path = model_path(p.model)
        if p.model.endswith(".en") and p.language != "en":
            raise ValueError(
                f"Whisper model {p.model!r} is English-only; language {p.language!r} needs another"
            )
        threads = p.cpu_threads
        self._model = await load_shared(
            "faster-whisper", path, lambda: _load(str(path), threads), pool=POOL, threads=threads
        )

    async def _transcribe(self, a: int, b: int, t0: float, t1: float, speculative: bool) -> Recognition:
        try:
            await self._audio.wait_for(b)
            samples = self._audio.slice(a, b)
        finally:
            self._audio.holds.remove(a)
        p = self.params
        model = self._model

        def work() -> tuple[Recognition, float]:  # on the pool: times the compute alone
            t = time.perf_counter()
            out = recognize(
                model,
                samples,
                language=p.language,
                beam_size=p.beam_size,
                no_speech_threshold=p.no_speech_threshold,
                window=p.window,
            )
            return out, time.perf_counter() - t

        t = time.perf_counter()
        result, infer_s = await run_blocking(POOL, work)
        # For metrics and tests: compute time, and time from asking to answer (queueing included).
        self.ctx.emit(
            SessionEvent(
                "stt_run",
                data={
                    "audio_s": len(samples) / SR,
                    "infer_s": infer_s,
                    "wall_s": time.perf_counter() - t,
                    "text": result.text,
                },
            )
        )
        return result
