"""``vad.silero``: voice activity from the Silero VAD v6 network (ONNX Runtime), streamed per session.

Same contract as ``vad.energy``: audio passes through unchanged on ``audio_out`` (so STT can hang off
the VAD), and ``events`` carries a ``score`` per 32 ms window (the speech probability, 0..1, sent to
the client as ``vad_score``) and ``start`` / ``end`` of speech, stamped with audio time in seconds
from the start of the stream.

The model sees 512-sample windows (32 ms at 16 kHz) plus the 64 samples before each one, and carries
a recurrent state from window to window. The network is loaded once per process and shared by every
session; the state and the context live in the node, so sessions never see each other's audio.

Decisions, with hysteresis in level and in time (Silero's own streaming rules): speech begins when
windows reach ``threshold`` and stay at or above ``neg_threshold`` for ``min_speech_ms``; it ends
after ``min_silence_ms`` below ``neg_threshold``. Timestamps point at where the change began, widened
by ``speech_pad_ms`` (the end is never later than the audio seen).

Where the model runs: not on the event loop. Every session's windows go to the process's
:class:`~ah.nodes.vad_batcher.WindowBatcher`, which scores the windows of all sessions waiting at that
moment in one ONNX call on the ``vad`` pool (see that module for why: at 100 sessions, scoring inline
was ~40 % of the loop's core; batched, a window costs less than half as much, on the other core).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, model_validator

from ah.nodes.inference import load_shared, ort_session
from ah.nodes.model_store import require
from ah.nodes.vad_batcher import SileroState, batcher
from ah.runtime.sdk import AudioFrame, Input, Node, Output, Params, VadFrame

SR = 16000
WINDOW = 512  # samples per decision: 32 ms
POOL = "vad"
MODEL = "silero-vad"


class SileroVadParams(Params):
    threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability at which speech begins.")
    neg_threshold: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Probability below which a window is silence (default: threshold - 0.15).",
    )
    min_speech_ms: int = Field(96, ge=0, le=5000, description="Speech this long starts a segment.")
    min_silence_ms: int = Field(160, ge=0, le=5000, description="Silence this long ends a segment.")
    speech_pad_ms: int = Field(30, ge=0, le=500, description="Widen each segment by this much on both sides.")

    @model_validator(mode="after")
    def _hysteresis(self) -> SileroVadParams:
        if self.neg_threshold is not None and self.neg_threshold > self.threshold:
            raise ValueError(
                f"neg_threshold ({self.neg_threshold}) must not exceed threshold ({self.threshold})"
            )
        return self

    @property
    def low(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(0.01, self.threshold - 0.15)


def _load_model() -> Any:
    path = require(MODEL) / "silero_vad.onnx"
    return ort_session(path, threads=1)


class _Decider:
    """Start / end decisions from window probabilities (pure, so the rules are testable alone)."""

    def __init__(self, p: SileroVadParams) -> None:
        self.high = p.threshold
        self.low = p.low
        self.min_speech = p.min_speech_ms / 1000
        self.min_silence = p.min_silence_ms / 1000
        self.pad = p.speech_pad_ms / 1000
        self.speaking = False
        self.candidate: float | None = None  # where possible speech began
        self.silent_since: float | None = None  # where possible silence began, while speaking
        self.windows = 0

    def feed(self, prob: float) -> VadFrame | None:
        start = self.windows * WINDOW / SR
        self.windows += 1
        end = self.windows * WINDOW / SR
        if not self.speaking:
            if prob >= self.high and self.candidate is None:
                self.candidate = start
            elif prob < self.low:
                self.candidate = None
            if self.candidate is not None and end - self.candidate >= self.min_speech - 1e-9:
                self.speaking = True
                at = max(0.0, self.candidate - self.pad)
                self.candidate = self.silent_since = None
                return VadFrame("start", at, prob, confirmed_at=end)
        else:
            if prob >= self.high:
                self.silent_since = None
            elif prob < self.low and self.silent_since is None:
                self.silent_since = start
            if self.silent_since is not None and end - self.silent_since >= self.min_silence - 1e-9:
                self.speaking = False
                at = min(end, self.silent_since + self.pad)
                self.silent_since = None
                # When it was sure: a turn policy counts its silence from ``at``, not from now.
                return VadFrame("end", at, prob, confirmed_at=end)
        return None

    def finish(self, total_s: float) -> VadFrame | None:
        """The stream ended: close an open segment."""
        if not self.speaking:
            return None
        self.speaking = False
        at = total_s if self.silent_since is None else min(total_s, self.silent_since + self.pad)
        return VadFrame("end", at, 0.0)


class SileroVad(Node[SileroVadParams]):
    """Speech start/end and per-window speech probability from Silero VAD v6 (ONNX, shared per process)."""

    summary = "voice activity from the Silero VAD network (ONNX)"
    params_model = SileroVadParams
    audio = Input(AudioFrame, doc="16 kHz mono PCM16")
    audio_out = Output(AudioFrame, doc="the same audio, for STT")
    events = Output(VadFrame, doc="start / end / score (speech probability per 32 ms window)")

    @classmethod
    async def preload(cls, params: Params) -> None:
        await load_shared("onnx", require(MODEL) / "silero_vad.onnx", _load_model, pool=POOL)

    async def setup(self) -> None:
        path = require(MODEL)  # missing: fails the session now, naming `ah models pull silero-vad`
        self._model = await load_shared("onnx", path / "silero_vad.onnx", _load_model, pool=POOL)

    async def run(self) -> None:
        scorer = batcher(self._model, POOL)
        state = SileroState()
        decider = _Decider(self.params)
        pending = b""  # PCM16 of a window not yet whole
        step = WINDOW * 2
        async for first in self.audio:
            # Frames that queued while the last windows were scored go in one request: a session
            # whose VAD fell behind (a loaded loop, a slow batch) catches up in one batch, not in one
            # round trip per frame, which under load is no faster than the frames come in.
            frames = [first]
            while (more := self.audio.recv_nowait()) is not None:
                frames.append(more)
            for frame in frames:
                if frame.sample_rate != SR:
                    raise ValueError(f"vad.silero needs {SR} Hz audio, got {frame.sample_rate} Hz")
                await self.audio_out.send(frame)
            pcm = b"".join([pending, *(frame.pcm for frame in frames)])
            whole = len(pcm) // step * step
            if not whole:
                pending = pcm
                continue
            pending = pcm[whole:]
            batch = np.frombuffer(pcm, dtype="<i2", count=whole // 2)  # a view: the pool converts it
            probs = await scorer.score(state, batch)
            for prob in probs:
                await self.events.send(VadFrame("score", decider.windows * WINDOW / SR + WINDOW / SR, prob))
                change = decider.feed(prob)
                if change is not None:
                    await self.events.send(change)
        last = decider.finish((decider.windows * WINDOW + len(pending) // 2) / SR)
        if last is not None:
            await self.events.send(last)
