"""``turn_policy.smart_turn``: an end-of-turn model decides how long to wait after the user stops.

At every end of speech the node runs Pipecat's smart-turn v3.2 (ARCHITECTURE.md §4; ONNX, 8 MB,
weights from the pinned ``pipecat-ai`` wheel via ``ah models pull``) on the user's utterance so far:
up to the last 8 s of audio as 80 Whisper log-mel bins x 800 frames, computed with faster-whisper's
feature extractor (already a dependency: no ``transformers`` needed). Its output is the probability
that the turn is complete:

* complete (``>= threshold``): the turn ends after ``complete_silence_ms`` of silence — sooner than
  plain silence endpointing;
* incomplete: it waits up to ``incomplete_silence_ms`` for the user to go on, so a pause in
  mid-sentence ("I would like to fly to Paris ... on the first of June") is not taken for the end.

Interruptions are handled as in ``turn_policy.overlap_aware`` (pause, then commit or resume).
Each prediction is reported as a ``turn`` session event ``smart_turn`` (probability, ms).

Input as in Pipecat's own analyser: the audio from the start of the utterance to now, cut to its last
8 s or zero-padded in front, normalised to zero mean and unit variance. The model judges natural
speech; on espeak-made audio it is unreliable (ARCHITECTURE.md §4), so tests use Piper-made speech.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ah.nodes.inference import load_shared, ort_session, run_blocking
from ah.nodes.model_store import require
from ah.nodes.turn_common import OverlapAwareBase, OverlapParams
from ah.runtime.sdk import AudioFrame, Input, Params, VirtualClock

SR = 16000
WINDOW_S = 8
MODEL = "smart-turn-v3.2"
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
POOL = "smart_turn"
KEEP_S = 12.0  # audio kept: the model sees 8 s, plus room for the VAD's look-back


class SmartTurnParams(OverlapParams):
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Probability at or above which the turn is complete."
    )
    complete_silence_ms: int = Field(
        200, ge=0, le=5000, description="Silence that ends a turn the model judges complete."
    )
    incomplete_silence_ms: int = Field(
        1500,
        ge=0,
        le=10000,
        description="Silence that ends a turn the model judges incomplete (the user may go on).",
    )
    pre_speech_ms: int = Field(
        200, ge=0, le=2000, description="Audio before the utterance's start given too."
    )
    trailing_silence_ms: int = Field(
        200,
        ge=0,
        le=2000,
        description="Silence after the end of speech the model hears (it was trained with Pipecat's 200 ms "
        "VAD stop; with more silence it calls more turns complete).",
    )
    inline: bool = Field(
        False,
        description="Run the model on the event loop (~45 ms a call) instead of its thread pool (always so "
        "on a virtual clock, where a thread hop would let simulated time run on).",
    )
    cpu_threads: int = Field(1, ge=1, le=16, description="ONNX Runtime intra-op threads.")


def model_path() -> Path:
    return require(MODEL) / MODEL_FILE


def _load(path: Path, threads: int) -> Any:
    from faster_whisper.feature_extractor import FeatureExtractor

    return ort_session(path, threads), FeatureExtractor(feature_size=80, chunk_length=WINDOW_S)


def features(extractor: Any, audio: np.ndarray) -> np.ndarray:
    """(1, 80, 800) log-mel features of the last 8 s of ``audio`` (float32, 16 kHz), as the model was trained."""
    n = WINDOW_S * SR
    x = audio[-n:].astype(np.float32)
    if len(x) < n:
        x = np.pad(x, (n - len(x), 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    mel: np.ndarray = np.asarray(extractor(x, padding=0), dtype=np.float32)[:, : WINDOW_S * 100]
    return mel[np.newaxis]


def predict(model: Any, audio: np.ndarray) -> float:
    """Probability that the utterance in ``audio`` (float32, 16 kHz) is a complete turn."""
    session, extractor = model
    # The output is named "logits" but is already the sigmoid's probability (as Pipecat reads it).
    out = session.run(None, {"input_features": features(extractor, audio)})[0]
    return float(np.asarray(out).reshape(-1)[0])


class SmartTurnPolicy(OverlapAwareBase):
    """Ends a turn early when the model says complete, waits longer when it says incomplete."""

    summary = "end of turn by the smart-turn v3.2 model; pause on overlap, commit or resume"
    params_model = SmartTurnParams
    audio = Input(AudioFrame, doc="user audio, 16 kHz (the VAD's passthrough)")

    @classmethod
    async def preload(cls, params: Params) -> None:
        assert isinstance(params, SmartTurnParams)
        path, threads = model_path(), params.cpu_threads
        await load_shared("smart-turn", path, lambda: _load(path, threads), pool=POOL, threads=threads)

    async def setup(self) -> None:
        path, threads = model_path(), self.params.cpu_threads
        self._model = await load_shared(
            "smart-turn", path, lambda: _load(path, threads), pool=POOL, threads=threads
        )

    async def run(self) -> None:
        self._buf = np.zeros(0, dtype=np.int16)
        self._received = 0  # samples received since the stream began
        self._arrived = asyncio.Event()
        self._ended = False

        async def _audio() -> None:
            keep = int(KEEP_S * SR)
            async for frame in self.audio:
                if frame.sample_rate != SR:
                    raise ValueError(
                        f"turn_policy.smart_turn needs {SR} Hz audio, got {frame.sample_rate} Hz"
                    )
                pcm = np.frombuffer(frame.pcm, dtype="<i2")
                self._buf = np.concatenate([self._buf, pcm])[-keep:]
                self._received += len(pcm)
                self._arrived.set()
            self._ended = True
            self._arrived.set()

        reader = asyncio.get_running_loop().create_task(_audio())
        try:
            await super().run()
        finally:
            reader.cancel()

    async def _utterance(self, speech_end: float) -> np.ndarray:
        """The utterance's audio, from just before its start to ``trailing_silence_ms`` after its end."""
        last = int((speech_end + self.params.trailing_silence_ms / 1000) * SR)
        while self._received < last and not self._ended:
            self._arrived.clear()
            await self._arrived.wait()
        start = self._utt_start if self._utt_start is not None else speech_end
        first = int(max(0.0, start - self.params.pre_speech_ms / 1000) * SR)
        have_from = self._received - len(self._buf)
        clip = self._buf[max(0, first - have_from) : max(0, last - have_from)]
        return clip.astype(np.float32) / 32768

    async def end_of_turn_wait(self, speech_end: float) -> float:
        audio = await self._utterance(speech_end)
        t = time.perf_counter()
        # On a virtual clock a hop to a thread would let simulated time run on while the model computes.
        if self.params.inline or isinstance(self.ctx.clock, VirtualClock):
            prob = predict(self._model, audio)
        else:
            prob = await run_blocking(POOL, predict, self._model, audio)
        ms = (time.perf_counter() - t) * 1000
        complete = prob >= self.params.threshold
        self.report(
            "smart_turn",
            probability=round(prob, 4),
            complete=complete,
            ms=round(ms, 1),
            audio_s=len(audio) / SR,
        )
        p = self.params
        return float(p.complete_silence_ms if complete else p.incomplete_silence_ms) / 1000
