"""``tts.espeak``: the light voice — Debian's ``espeak-ng`` formant synthesizer, no model to load.

Robotic but intelligible, instant to start and cheap to run: for machines without the Piper voice,
for tests that need a second, different voice, and for load tests. Each piece of text is one
``espeak-ng --stdout`` process (text on stdin, so no text is ever read as an option), started from
a worker thread, whose WAV is resampled to 16 kHz with ``soxr``. espeak-ng does not report word times, so timings are
proportional: the voiced part of the audio (leading and trailing silence cut off by the envelope)
is spread over the words by their lengths. Same streaming contract as every TTS node
(:mod:`ah.nodes.tts_stream`).
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import soxr
from pydantic import Field

from ah.nodes.inference import run_blocking
from ah.nodes.tts_stream import SR, StreamingTts, StreamingTtsParams, Synthesis

INSTALL_HINT = "install espeak-ng (apt-get install espeak-ng)"
#: Worker pool (``ah.nodes.inference``) that runs espeak-ng and the resampling, off the event loop.
POOL = "espeak"


class EspeakTtsParams(StreamingTtsParams):
    voice: str = Field("en-us", description="espeak-ng voice (`espeak-ng --voices` lists them).")
    rate: int = Field(175, ge=80, le=500, description="Speaking rate, words per minute.")
    pitch: int = Field(50, ge=0, le=99, description="Pitch, 0-99.")


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM16 mono samples (float32) and rate of espeak-ng's streamed WAV (its sizes say 'unknown')."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not write a WAV file")
    i = 12
    rate = 0
    while i + 8 <= len(data):
        tag, size = data[i : i + 4], struct.unpack_from("<I", data, i + 4)[0]
        if tag == b"fmt ":
            channels, rate = struct.unpack_from("<HI", data, i + 10)
            if channels != 1 or struct.unpack_from("<H", data, i + 22)[0] != 16:
                raise ValueError("espeak-ng WAV is not 16-bit mono")
        elif tag == b"data":
            pcm = data[i + 8 :]
            pcm = pcm[: len(pcm) // 2 * 2]
            return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, rate
        i += 8 + size + (size & 1)
    raise ValueError("espeak-ng WAV has no data")


class EspeakTts(StreamingTts[EspeakTtsParams]):
    """espeak-ng formant voice (Debian package), sentence by sentence, 16 kHz, proportional alignment."""

    summary = "espeak-ng formant voice (light, no model), streamed by sentence, 16 kHz"
    params_model = EspeakTtsParams

    async def setup(self) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise RuntimeError(f"espeak-ng not found: {INSTALL_HINT}")
        self._exe = exe
        # Check the voice now, not at the first reply: an unknown one fails the session at start.
        done = await run_blocking(POOL, _espeak, [exe, "-q", "-v", self.params.voice], "x")
        if done.returncode != 0:
            raise ValueError(
                f"espeak-ng voice {self.params.voice!r}: {done.stderr.decode(errors='replace').strip()} "
                "(`espeak-ng --voices` lists them)"
            )

    async def synthesize(self, text: str) -> Synthesis:
        p = self.params
        cmd = [self._exe, "--stdout", "-v", p.voice, "-s", str(p.rate), "-p", str(p.pitch)]
        return await run_blocking(POOL, _synthesize, cmd, text)


def _espeak(cmd: list[str], text: str) -> subprocess.CompletedProcess[bytes]:
    # Started from a worker thread: spawning a process from a large one takes milliseconds, which the
    # event loop must not spend. A cancelled reply lets the process finish its piece (tens of ms).
    return subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60, check=False)


def _synthesize(cmd: list[str], text: str) -> Synthesis:
    done = _espeak(cmd, text)
    if done.returncode != 0:
        raise RuntimeError(
            f"espeak-ng failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}"
        )
    audio, rate = decode_wav(done.stdout)
    return Synthesis(soxr.resample(audio, rate, SR).astype(np.float32) if rate != SR else audio)
