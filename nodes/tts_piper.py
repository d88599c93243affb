"""``tts.piper``: the local neural voice (Piper, ONNX), streamed sentence by sentence.

The voice is loaded once per process and shared by every session (``inference.load_shared``; an
``onnxruntime`` session is safe to run from several threads). Synthesis runs on the ``piper`` worker
pool (``inference.run_blocking``), one piece of text at a time, so the first sentence is heard while
the LLM is still writing the rest (see :mod:`ah.nodes.tts_stream`).
Piper speaks at 22.05 kHz; each piece is resampled to 16 kHz with ``soxr`` as a whole (the piece is
synthesized whole anyway, and a whole-array resample needs no state and keeps lengths exact).

**Word timings come from the model.** Piper's VITS model computes how many audio frames each phoneme
lasts (its ``w_ceil`` tensor) but does not output it. ``PiperVoice.load(include_alignments=True)``
exposes it by editing the model with the ``onnx`` package, which is not a dependency here; the same
edit (one more graph output) is made below directly on the model's protobuf bytes, in memory, at
load. Each phoneme's sample count then gives the time of every phoneme word (phonemes between word
separators); each text word is matched to the phoneme words it produces (``42`` is spoken as two,
``e.g.`` as one) by phonemizing the words one by one. When that count does not add up, or the model
has no such output, timings fall back to proportional: the voiced part of the audio (leading and
trailing silence cut off by the envelope) spread over the words by their lengths. Characters share
their word's time evenly.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime
import soxr
from piper.config import PiperConfig, SynthesisConfig
from piper.voice import AudioChunk, PiperVoice
from pydantic import Field, field_validator

from ah.nodes.inference import load_shared, run_blocking
from ah.nodes.model_store import MANIFEST, require
from ah.nodes.tts_stream import SR, StreamingTts, StreamingTtsParams, Synthesis
from ah.runtime.sdk import Params

log = logging.getLogger("ah.nodes.tts_piper")

#: Worker pool (``ah.nodes.inference``) that loads the voice and runs synthesis, off the event loop.
POOL = "piper"
#: Voice name (graph param) → model name in the manifest (``ah models list``).
VOICES = {"joe": "piper-joe"}

# Phonemes that are pauses, not sounds of a word (Piper keeps punctuation in its phoneme string).
_PAUSES = frozenset(",.;:!?¡¿—–…\"'«»“”()[]")
# The model runs with one intra-op thread, not spinning: two threads are no faster for a sentence
# here (measured, 2 cores), and a spinning pool would take the CPU from the event loop.
_ORT_THREADS = 1


class PiperTtsParams(StreamingTtsParams):
    voice: str = Field("joe", description=f"Piper voice, one of: {', '.join(VOICES)}.")
    length_scale: float = Field(1.0, gt=0.1, le=5.0, description="Speaking time: > 1 slower, < 1 faster.")
    noise_scale: float = Field(0.667, ge=0.0, le=2.0, description="Variation of the voice (Piper's noise).")
    noise_w: float = Field(0.8, ge=0.0, le=2.0, description="Variation of phoneme lengths (Piper's noise_w).")
    volume: float = Field(0.9, gt=0.0, le=1.0, description="Peak level of each sentence (1: full scale).")

    @field_validator("voice")
    @classmethod
    def _known_voice(cls, v: str) -> str:
        if v not in VOICES:
            raise ValueError(f"unknown Piper voice {v!r}; known voices: {', '.join(sorted(VOICES))}")
        return v


# -- the shared voice ---------------------------------------------------------------------------------------------
#: (model path, seconds) of every load in this process, warm-up included.
loads: list[tuple[Path, float]] = []


def _load_and_warm(model: Path) -> PiperVoice:
    t0 = time.perf_counter()
    voice = load_voice(model)
    # One short synthesis now (the espeak phonemizer's start, ONNX's first run), not in the first reply.
    synthesize_piece(voice, "Hi.", SynthesisConfig())
    loads.append((model, time.perf_counter() - t0))
    log.info("loaded Piper voice %s in %.2f s", model.name, loads[-1][1])
    return voice


def load_voice(model: Path) -> PiperVoice:
    config = PiperConfig.from_dict(json.loads(Path(f"{model}.json").read_text(encoding="utf-8")))
    data = model.read_bytes()
    try:
        data = with_phoneme_durations(data)
    except ValueError as exc:  # already patched, or a model of another shape: timings may be proportional
        log.info("Piper voice %s: phoneme durations not added (%s)", model.name, exc)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = _ORT_THREADS
    opts.inter_op_num_threads = 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=config)


# -- phoneme durations: one more output on the ONNX graph, edited as protobuf wire format ---------------------------
# ModelProto.graph = 7; GraphProto.node = 1, .output = 12; NodeProto.output = 2, .op_type = 4;
# ValueInfoProto.name = 1. A repeated field may be appended anywhere in a message, so adding an output is
# appending one field to the graph and re-writing the graph's length prefix.


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _fields(buf: memoryview, start: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(field, wire type, value start, value end, key start) of each field in ``buf[start:end]``."""
    out = []
    i = start
    while i < end:
        key_at = i
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, j = _varint(buf, i)
        elif wt == 1:
            j = i + 8
        elif wt == 5:
            j = i + 4
        elif wt == 2:
            n, i = _varint(buf, i)
            j = i + n
        else:
            raise ValueError(f"unexpected protobuf wire type {wt}")
        out.append((num, wt, i, j, key_at))
        i = j
    return out


def with_phoneme_durations(model: bytes) -> bytes:
    """The model with its per-phoneme frame counts (the one ``Ceil`` tensor) as a second output."""
    buf = memoryview(model)
    graph = [f for f in _fields(buf, 0, len(buf)) if f[0] == 7 and f[1] == 2]
    if len(graph) != 1:
        raise ValueError("no graph in the model")
    _, _, g_start, g_end, g_key = graph[0]
    ceil: list[bytes] = []
    outputs: list[bytes] = []
    for num, wt, s, e, _ in _fields(buf, g_start, g_end):
        if num == 1 and wt == 2:  # a node
            fields = _fields(buf, s, e)
            if any(n == 4 and bytes(buf[a:b]) == b"Ceil" for n, _, a, b, _ in fields):
                ceil += [bytes(buf[a:b]) for n, _, a, b, _ in fields if n == 2]
        elif num == 12 and wt == 2:  # an output
            outputs += [bytes(buf[a:b]) for n, _, a, b, _ in _fields(buf, s, e) if n == 1]
    if len(ceil) != 1:
        raise ValueError(f"expected one Ceil tensor, found {len(ceil)}")
    if ceil[0] in outputs:
        raise ValueError("phoneme durations are already an output")
    value_info = b"\x0a" + _enc_varint(len(ceil[0])) + ceil[0]
    new_graph = bytes(buf[g_start:g_end]) + b"\x62" + _enc_varint(len(value_info)) + value_info
    return bytes(buf[:g_key]) + b"\x3a" + _enc_varint(len(new_graph)) + new_graph + bytes(buf[g_end:])


async def shared_voice(voice: str) -> PiperVoice:
    """The process's one copy of a voice, loaded on the Piper pool (off the event loop) on first use.

    Raises ``ModelMissing`` saying ``run `ah models pull piper-joe``` when the model is not pulled.
    """
    name = VOICES[voice]
    path = require(name) / next(f.name for f in MANIFEST[name].files if f.name.endswith(".onnx"))
    return await load_shared("piper", path, functools.partial(_load_and_warm, path), pool=POOL)


# -- synthesis (in a worker thread) -------------------------------------------------------------------------------
def _phoneme_words(phonemes: list[list[str]]) -> int:
    """How many spoken words a phonemized text has (groups between spaces that are not only pauses)."""
    count = 0
    for sentence in phonemes:
        for group in "".join(sentence).split(" "):
            if any(p not in _PAUSES for p in group):
                count += 1
    return count


def _word_spans(voice: PiperVoice, text: str, chunks: list[AudioChunk]) -> list[tuple[float, float]] | None:
    """When each word of ``text`` is spoken (seconds), from the model's phoneme durations."""
    sr = voice.config.sample_rate
    spoken: list[tuple[int, int]] = []  # sample spans of the phoneme words
    offset = 0
    for chunk in chunks:
        if chunk.phoneme_alignments is None:
            return None
        current: list[int] | None = None
        t = offset
        for a in chunk.phoneme_alignments:
            n = int(a.num_samples)
            if a.phoneme in (" ", "^", "$"):  # word separator, start and end of the sentence
                if current is not None:
                    spoken.append((current[0], current[1]))
                    current = None
            elif a.phoneme not in _PAUSES:
                if current is None:
                    current = [t, t + n]
                else:
                    current[1] = t + n
            t += n
        if current is not None:
            spoken.append((current[0], current[1]))
        offset += len(chunk.audio_float_array)
    words = text.split()
    counts = [_phoneme_words(voice.phonemize(w)) for w in words]
    if sum(counts) != len(spoken):
        return None
    spans: list[tuple[float, float]] = []
    i = 0
    for c in counts:
        if c == 0:  # a word that is not spoken ("-"): it takes no time
            at = spans[-1][1] if spans else (spoken[0][0] / sr if spoken else 0.0)
            spans.append((at, at))
        else:
            spans.append((spoken[i][0] / sr, spoken[i + c - 1][1] / sr))
        i += c
    return spans


def synthesize_piece(voice: PiperVoice, text: str, config: SynthesisConfig) -> Synthesis:
    chunks = list(voice.synthesize(text, config, include_alignments=True))
    if not chunks:
        return Synthesis(np.zeros(0, dtype=np.float32), [])
    audio = np.concatenate([c.audio_float_array for c in chunks])
    rate = voice.config.sample_rate
    audio16 = soxr.resample(audio, rate, SR).astype(np.float32) if rate != SR else audio
    return Synthesis(audio16, _word_spans(voice, text, chunks))


class PiperTts(StreamingTts[PiperTtsParams]):
    """Piper neural voice (local, ONNX), sentence by sentence, 16 kHz, with word timings from the model."""

    summary = "Piper neural voice (local), streamed by sentence, 16 kHz, word-timed alignment"
    params_model = PiperTtsParams

    @classmethod
    async def preload(cls, params: Params) -> None:
        """Load the voice when a server starts, so that the first conversation does not wait for it."""
        if isinstance(params, PiperTtsParams):
            await shared_voice(params.voice)

    async def setup(self) -> None:
        p = self.params
        self.voice = await shared_voice(p.voice)  # model missing: fails the session now, naming the command
        self._config = SynthesisConfig(
            length_scale=p.length_scale, noise_scale=p.noise_scale, noise_w_scale=p.noise_w, volume=p.volume
        )

    async def synthesize(self, text: str) -> Synthesis:
        return await run_blocking(POOL, synthesize_piece, self.voice, text, self._config)
