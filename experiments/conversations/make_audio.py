"""Make the user audio of the conversation corpus: Piper "joe" changed in pitch and tempo, and noises.

ARCHITECTURE.md §8: the agent speaks with Piper joe, so the simulated users must sound different. Each
line is synthesised with joe, then resampled as if recorded at another rate (a tape-speed change):
``SPEEDS`` gives two user voices, one higher and faster (x1.15), one lower and slower (x0.88). Noises
(cough, knock, clap, breath, chair) are made from seeded random numbers. Everything is deterministic,
16 kHz mono PCM16 WAV, with 0.3 s of silence before and after and a faint noise floor. Run once (the
WAVs are committed)::

    .venv/bin/python experiments/conversations/make_audio.py
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np
import soxr

from ah.nodes.model_store import require

HERE = Path(__file__).resolve().parent / "audio"
SR = 16000
EDGE_S = 0.3
NOISE_DBFS = -66.0
SPEEDS = {"a": 1.15, "b": 0.88}

QUESTIONS = [
    "What is the weather like today?",
    "Can you tell me a joke?",
    "How far is the moon from the earth?",
    "What time does the train leave tomorrow morning?",
    "Please book a table for two at seven.",
    "Remind me to call my mother this evening.",
    "What is the capital of Australia?",
    "How do I make a cup of green tea?",
]
INTERRUPTIONS = [
    "Wait, stop, I meant tomorrow.",
    "No, that is not what I asked.",
    "Sorry, can you repeat that?",
    "Actually, cancel that please.",
    "Hold on, what about the weekend?",
    "Stop.",
]
BACKCHANNELS = ["Mm-hmm.", "Yeah.", "Right.", "Okay.", "Uh-huh.", "I see."]
# (first part, second part, pause in seconds)
PAUSED = [
    ("I would like to fly to Paris", "on the first of June.", 0.7),
    ("Can you book me a table", "for four people tonight?", 0.8),
    ("My phone number is", "five five five, one two three four.", 0.9),
    ("I was thinking about", "going to the beach this weekend.", 0.7),
    ("Tell me about", "the history of ancient Rome.", 0.6),
    ("Set an alarm for", "half past six tomorrow.", 0.8),
]


def _voice() -> object:
    from piper import PiperVoice

    d = require("piper-joe")
    return PiperVoice.load(d / "en_US-joe-medium.onnx", d / "en_US-joe-medium.onnx.json")


def _speak(voice: object, text: str, speed: float) -> np.ndarray:
    from piper import SynthesisConfig

    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=True, volume=0.7)
    chunks = list(voice.synthesize(text, syn_config=cfg))  # type: ignore[attr-defined]
    audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    shifted = soxr.resample(audio, chunks[0].sample_rate * speed, SR, quality="HQ").astype(np.float32)
    voiced = np.flatnonzero(np.abs(shifted) > 0.01)
    return shifted[voiced[0] : voiced[-1] + 1]


def _word_gaps(x: np.ndarray, level: float = 0.01, min_gap_s: float = 0.03) -> list[tuple[int, int]]:
    """Quiet stretches inside ``x`` (10 ms frames below ``level``): the boundaries between words."""
    fr = SR // 100
    n = len(x) // fr
    quiet = np.sqrt((x[: n * fr].reshape(n, fr) ** 2).mean(axis=1)) < level
    gaps: list[tuple[int, int]] = []
    i = 0
    while i < n:
        j = i
        while j < n and quiet[j]:
            j += 1
        if j > i and i > 0 and j < n and (j - i) / 100 >= min_gap_s:
            gaps.append((i * fr, j * fr))
        i = max(j, i + 1)
    return gaps


def _speak_with_pause(voice: object, first: str, rest: str, pause_s: float, speed: float) -> list[np.ndarray]:
    """The whole sentence synthesised at once (so the first part keeps its mid-sentence melody), with
    ``pause_s`` of silence put into the word boundary nearest to where ``first`` ends."""
    text = f"{first} {rest}"
    x = _speak(voice, text, speed)
    at = len(first) / len(text) * len(x)
    a, b = min(_word_gaps(x), key=lambda g: abs((g[0] + g[1]) / 2 - at))
    return [x[:a], _gap(pause_s), x[b:]]


def _floor(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 10 ** (NOISE_DBFS / 20)).astype(np.float32)


def _write(name: str, parts: list[np.ndarray], seed: int) -> None:
    edge = np.zeros(int(EDGE_S * SR), np.float32)
    audio = np.concatenate([edge, *parts, edge])
    audio = audio + _floor(len(audio), seed)
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(HERE / name), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


def _burst(rng: np.random.Generator, dur: float, level: float, smooth: int, decay: float) -> np.ndarray:
    n = int(dur * SR)
    x = np.convolve(rng.standard_normal(n + 64), np.hanning(smooth), mode="same")[:n]
    t = np.arange(n) / SR
    env = (1 - np.exp(-t / 0.004)) * np.exp(-t / max(decay, 1e-3))
    return (x / np.max(np.abs(x)) * env * level).astype(np.float32)


def _gap(s: float) -> np.ndarray:
    return np.zeros(int(s * SR), np.float32)


def noises() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    return {
        "noise_cough.wav": [_burst(rng, 0.18, 0.5, 9, 0.06), _gap(0.08), _burst(rng, 0.12, 0.35, 9, 0.04)],
        "noise_knock.wav": [x for _ in range(3) for x in (_burst(rng, 0.05, 0.6, 31, 0.012), _gap(0.16))],
        "noise_clap.wav": [_burst(rng, 0.06, 0.7, 3, 0.015)],
        "noise_breath.wav": [_burst(rng, 0.5, 0.08, 41, 0.3)],
        "noise_chair.wav": [_burst(rng, 0.35, 0.25, 61, 0.2)],
        "noise_sneeze.wav": [_burst(rng, 0.1, 0.2, 21, 0.08), _gap(0.05), _burst(rng, 0.2, 0.6, 5, 0.07)],
    }


def main() -> int:
    HERE.mkdir(parents=True, exist_ok=True)
    voice = _voice()
    seed = 1000
    for prefix, lines in (("q", QUESTIONS), ("i", INTERRUPTIONS), ("b", BACKCHANNELS)):
        for n, text in enumerate(lines, 1):
            for v, speed in SPEEDS.items():
                seed += 1
                _write(f"{prefix}{n:02d}{v}.wav", [_speak(voice, text, speed)], seed)
    for n, (a, b, pause) in enumerate(PAUSED, 1):
        for v, speed in SPEEDS.items():
            seed += 1
            _write(f"p{n:02d}{v}.wav", _speak_with_pause(voice, a, b, pause, speed), seed)
    for name, parts in noises().items():
        seed += 1
        _write(name, parts, seed)
    files = sorted(HERE.glob("*.wav"))
    print(f"wrote {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.2f} MB, to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
