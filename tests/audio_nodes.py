"""Audio helpers for the model-node tests: the fixtures, a WAV source node, and graph helpers.

``test.wav_source`` plays WAV files into a graph as 16 kHz PCM16 :class:`AudioFrame` s of ``frame_ms``,
like a microphone would (paced on the session clock when ``realtime``), with ``gap_s`` of silence
between files. ``test.recorder`` (from :mod:`tests.runtime_nodes`) reports every frame it receives as a
``frame`` session event.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ah.runtime.graph_loader import Graph, load_graph
from ah.runtime.sdk import AudioFrame, Node, Output, Params
from ah.runtime.session import Session
from tests.runtime_nodes import registry

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
SR = 16000


def fixture_meta() -> dict[str, dict[str, Any]]:
    """``transcripts.json``: per file, its text, where the speech was placed (s) and its duration."""
    meta: dict[str, dict[str, Any]] = json.loads((FIXTURES / "transcripts.json").read_text())
    return meta


def utterances() -> list[str]:
    """The clean single-utterance fixtures, in order."""
    return sorted(name for name in fixture_meta() if name.startswith("user_"))


def read_wav(name: str) -> np.ndarray:
    """A fixture's (or a WAV file's, given a path) samples as int16."""
    with wave.open(str(FIXTURES / name), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2), name
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def energy_bounds(name: str, level_dbfs: float = -45.0, hop_ms: int = 10) -> tuple[float, float]:
    """Where the speech in a fixture really is: first and last 10 ms hop above ``level_dbfs``."""
    x = read_wav(name).astype(np.float64) / 32768
    hop = SR * hop_ms // 1000
    n = len(x) // hop
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms, 1e-9)) > level_dbfs)
    return float(loud[0] * hop / SR), float((loud[-1] + 1) * hop / SR)


class WavSourceParams(Params):
    files: list[str] = Field(description="Fixture names (in tests/fixtures/audio) or paths, played in order.")
    frame_ms: int = Field(20, ge=1, le=1000)
    gap_s: float = Field(0.0, ge=0, description="Silence between files.")
    realtime: bool = Field(False, description="Pace frames to the session clock, like a microphone.")


class WavSource(Node[WavSourceParams]):
    """Plays WAV files as 16 kHz PCM16 frames, then ends."""

    params_model = WavSourceParams
    audio = Output(AudioFrame)

    async def run(self) -> None:
        p = self.params
        parts: list[np.ndarray] = []
        for i, name in enumerate(p.files):
            if i and p.gap_s:
                parts.append(np.zeros(round(p.gap_s * SR), dtype="<i2"))
            parts.append(read_wav(name))
        pcm = np.concatenate(parts).astype("<i2").tobytes()
        step = SR * p.frame_ms // 1000 * 2
        clock = self.ctx.clock
        t0 = clock.now()
        for k, i in enumerate(range(0, len(pcm), step)):
            await self.audio.send(AudioFrame(pcm[i : i + step], SR))
            if p.realtime:
                await clock.sleep_until(t0 + (k + 1) * p.frame_ms / 1000)


REGISTRY = registry()
REGISTRY.register("test.wav_source", WavSource)


def graph(text: str, name: str = "audio_test.yaml") -> Graph:
    return load_graph(name, REGISTRY, text=text)


def session(text: str, **kwargs: Any) -> Session:
    return Session(graph(text), **kwargs)
