"""Conversation scripts: YAML files of user utterances, each timed against what the agent does.

A script says what the simulated user says (audio files, made with a voice other than the agent's) and
when, relative to the conversation or to the agent::

    scenario: barge_in_800ms
    category: barge_in          # clean | barge_in | noise | backchannel | pause
    description: The user cuts in 800 ms after the agent starts answering.
    audio_dir: audio            # where ``say`` files are, relative to this file
    steps:
      - say: user_01.wav
        text: What is the weather like today?
      - say: interrupt_01.wav
        text: Wait, stop, I meant tomorrow.
        role: barge_in          # turn | barge_in | noise | backchannel
        after: agent_audio      # start | previous | agent_audio | agent_done
        delay_ms: 800

``after`` is the trigger: ``start`` (the conversation began), ``previous`` (the previous utterance's
audio ended), ``agent_audio`` (the first agent audio the listener hears after the previous utterance),
``agent_done`` (the agent has gone quiet after answering). ``role`` says what the utterance should do,
which is what the metrics judge: a ``turn`` and a ``barge_in`` should get an answer (a barge-in should
also stop the agent), a ``noise`` or a ``backchannel`` should not stop the agent for good.

Where the speech is in each file is found from the audio itself (20 ms frames above ``-45 dBFS``,
gaps under 150 ms bridged), so a pause inside an utterance stays a pause.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SR = 16000
FRAME = 320  # 20 ms
VOICED_DBFS = -45.0
BRIDGE_S = 0.15

Role = Literal["turn", "barge_in", "noise", "backchannel"]
Trigger = Literal["start", "previous", "agent_audio", "agent_done"]
Category = Literal["clean", "barge_in", "noise", "backchannel", "pause"]


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    say: str = Field(description="Audio file (16 kHz mono PCM16 WAV), relative to audio_dir.")
    text: str = Field("", description="What is said ('' for noise): scripted STT line, and for reports.")
    parts: list[str] | None = Field(
        None, description="The transcript of each speech segment when the audio has pauses (scripted STT)."
    )
    role: Role = "turn"
    after: Trigger = "previous"
    delay_ms: int = Field(0, ge=0, le=60000)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenario: str
    category: Category
    description: str = ""
    audio_dir: str = "audio"
    steps: list[Step] = Field(min_length=1)
    tail_ms: int = Field(1500, ge=0, le=30000, description="How long the agent must stay quiet at the end.")
    max_s: float = Field(60.0, gt=0, le=600, description="The scenario is cut off after this long.")
    #: Where the file was (audio paths are relative to it); not part of the YAML.
    path: str = ""

    def audio_path(self, step: Step) -> Path:
        base = Path(self.path).parent if self.path else Path.cwd()
        return (base / self.audio_dir / step.say).resolve()

    def stt_lines(self) -> list[str]:
        """The scripted recogniser's lines for this script: one per speech segment, in order."""
        lines: list[str] = []
        for step in self.steps:
            lines.extend(step.parts if step.parts is not None else [step.text])
        return lines


class ScriptError(ValueError):
    """A script that cannot be played: the message names the file and what is wrong."""


@dataclass(slots=True)
class Clip:
    """A step's audio, and where the speech is in it (seconds from the clip's start)."""

    pcm: bytes
    voiced: list[tuple[float, float]]

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / SR

    @property
    def onset(self) -> float | None:
        return self.voiced[0][0] if self.voiced else None

    @property
    def speech_end(self) -> float | None:
        return self.voiced[-1][1] if self.voiced else None


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a script; every problem is a :class:`ScriptError` naming the file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ScriptError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScriptError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScriptError(f"{p}: expected a mapping with scenario, category and steps")
    try:
        sc = Scenario.model_validate({**data, "path": str(p.resolve())})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ScriptError(f"{p}: {where}: {first['msg']}") from None
    for i, step in enumerate(sc.steps):
        if not sc.audio_path(step).is_file():
            raise ScriptError(f"{p}: steps.{i}.say: no audio file {sc.audio_path(step)}")
    return sc


def voiced_spans(samples: np.ndarray) -> list[tuple[float, float]]:
    """Where ``samples`` (int16, 16 kHz) has sound: 20 ms frames above ``VOICED_DBFS``, short gaps bridged."""
    n = len(samples) // FRAME
    if n == 0:
        return []
    frames = samples[: n * FRAME].astype(np.float64).reshape(n, FRAME) / 32768
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = 20 * np.log10(np.maximum(rms, 1e-9)) >= VOICED_DBFS
    spans: list[tuple[float, float]] = []
    for i in np.flatnonzero(loud):
        a, b = i * FRAME / SR, (i + 1) * FRAME / SR
        if spans and a - spans[-1][1] <= BRIDGE_S + 1e-9:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return [(round(float(a), 3), round(float(b), 3)) for a, b in spans]


def load_clip(path: Path) -> Clip:
    try:
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != SR:
                raise ScriptError(
                    f"{path}: needs 16 kHz mono 16-bit WAV, got {w.getframerate()} Hz, "
                    f"{w.getnchannels()} channel(s), {8 * w.getsampwidth()}-bit"
                )
            pcm = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ScriptError(f"{path}: not a WAV file: {exc}") from None
    return Clip(pcm, voiced_spans(np.frombuffer(pcm, dtype="<i2")))
