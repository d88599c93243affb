"""Cloud latency benchmark: ``graphs/cloud.yaml`` through the real server (``ah run``), against the fake
Groq and ElevenLabs servers made as slow as the real services are published to be, driven by a
client that streams recorded speech in real time over the ElevenLabs Agents WebSocket.

Run: ``.venv/bin/python experiments/cloud_latency.py`` (52 turns per variant, 4 conversations at a
time, 13 variants: about 16 minutes). ``--turns 8`` for a quick look, ``--variants +level_cue`` for
graphs/cloud.yaml alone, ``--noise-dbfs -50`` to put a steady noise floor under everything the client
sends (the fixtures are clean speech over a -66 dBFS floor, and the client sends digital silence
between turns).

**The client** sends the microphone as ``user_audio_chunk`` messages of ``--chunk-ms`` audio, in real
time. The default, 25 ms, is what the official browser client sends (``@elevenlabs/client``:
``inputChunkDurationMs`` defaults to 25 ms, shared/reference/README.md and
elevenlabs-official-clients.md); the Python SDK sends 250 ms (4000 samples). The chunk size is a
measurement condition, not an overlap: the server cannot hear the end of speech before the chunk
that holds the silence after it has come, so every stage that waits on the VAD (the early STT
request, the end of the turn) moves in steps of the chunk. ``chunk_100ms`` and ``chunk_250ms`` run
graphs/cloud.yaml with bigger chunks, so the figure at each is on the table too.

**What is measured.** Response latency per turn (ARCHITECTURE.md §5): from the end of the user's
speech (when the chunk holding the last voiced sample, per ``tests/fixtures/audio/transcripts.json``,
was sent) to the first agent audio chunk the client receives. Mean, p50, p95, p99. The breakdown is a
timeline of the same turn, every instant relative to the end of speech, all on one clock
(``perf_counter`` is CLOCK_MONOTONIC: the same in the server process, the client and the fakes,
which run in this process on their own threads and loop):

  stt_request   the (last) transcription request reaches the fake Groq
  stt_done      its answer is sent
  llm_request   the chat request reaches the fake Groq (before ``turn_committed`` when preemptive)
  turn_committed  the client receives the final ``user_transcript``; the turn policy commits once
                  both it and the end-of-turn silence are in, so at this moment or later (when the
                  STT closes the utterance before the turn's silence runs out: since +final_first)
  llm_first_token the fake sends the first token
  tts_request   the first sentence reaches the fake ElevenLabs (``flush``)
  tts_first_audio the fake sends its first audio
  client_audio  the client receives it (= the response latency)

**Provider latencies** (log-normal, median and 95th percentile; network included, since the fakes
are local). Published figures, read 2026-11:

* Groq Whisper ``whisper-large-v3-turbo``: real-time speed factor 216 (Groq, "Speech to Text",
  https://console.groq.com/docs/speech-text); round trip ~180 ms for a 5 s clip and 150–250 ms
  "including network round-trip" measured by a third party (dictate.app, "Whisper API on Windows: How
  dictate.app Gets to 200ms", https://dictate-app.pages.dev/blog/whisper-api-windows-app.html, and
  https://alpha.hashtagplus.com/post/qI2TUxA7). Used: 190 ms median, 280 ms p95, plus audio/216.
* Groq ``llama-3.1-8b-instant``: time to first token p50 120 ms, p95 250 ms (uatgpt.com, "AI model
  latency comparison", https://uatgpt.com/ai-model-comparison/ai-model-latency-comparison/, citing
  Artificial Analysis); ~780 output tokens/s (kickllm.com, "LLM Speed Benchmark",
  https://kickllm.com/research/llm-speed-benchmark.html). Used: TTFT 120/250 ms, 1.7 ms per word
  (1.3 tokens a word).
* ElevenLabs Flash v2.5: "~75ms model inference" plus a network round trip of "typically 20–200ms"
  (ElevenLabs, "Understanding latency", https://elevenlabs.io/docs/eleven-api/concepts/latency). Used:
  time to first audio 135 ms median (75 + a 60 ms round trip), 250 ms p95; audio made at 10x real
  time (our assumption: the docs give no throughput). Opening a socket costs TCP + TLS + the HTTP
  upgrade, about three round trips: 150 ms median, 400 ms p95 (our estimate from the same range).

**Variants** (each a 3-line ``extends:`` of ``graphs/cloud.yaml``), each adding one overlap, so the
difference between neighbours is what that overlap buys:

  baseline      STT after the endpoint is confirmed, LLM after the turn, a new TTS socket per reply
  +spec_stt     STT starts at each tentative end of speech (``stt.speculative``)
  +preempt_llm  the LLM starts on that tentative transcript (``llm.preemptive``)
  +warm_tts     the TTS socket is open and its context initialised before the reply (``tts.warm``)
                (graphs/cloud.yaml until the held reply; ``turn_policy.silence``)
  +early_stt    the STT request goes out when the VAD's scores drop below 0.5 (``stt.early_ms: 32``),
                before the VAD confirms the end of speech (its 160 ms ``min_silence_ms``)
  +held_reply   the turn policy starts the reply on the tentative transcript, held (paused scope):
                the LLM streams and the TTS synthesises before the turn commits; released at the
                commit, dropped unheard if the user goes on (``turn_policy.overlap_aware``,
                ``preemptive: true``)
  +falling_score  the early STT request goes out at the first window below 0.9 (``stt.early_score``),
                a window before the first below 0.5 on most utterances (Silero's scores trail the
                speech: 0.99, 0.72, 0.28); a voiced window (>= 0.5) after it still cancels it
  +first_words  the reply's first piece goes to the TTS at the first word boundary past 24
                characters (``tts.first_piece_chars``), not at the end of its sentence
  +final_first  the STT closes the utterance after 350 ms of silence (``stt.endpoint_silence_ms``),
                the turn still after 400 ms: the STT decides on the VAD's 32 ms windows, so at an
                equal silence its final transcript came at the window after the turn's deadline,
                and a turn whose held reply was ready waited for it; now it is in when the turn's
                silence runs out
  +level_cue    the early STT request also goes out once the audio has been quiet for 50 ms after
                speech (``stt.early_level_ms``: each 10 ms frame near the noise floor and 45 dB under the
                speech), before Silero's scores fall; its trail does not cancel that request, sound
                after it does (a pause inside the sentence costs a request) = graphs/cloud.yaml as shipped
  held_only     off the chain: the held reply without the early STT request (against +warm_tts)
  chunk_100ms, chunk_250ms  off the chain: graphs/cloud.yaml, the client sending 100 / 250 ms chunks

Results: ``experiments/results/cloud_latency.json`` and ``cloud_latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fakes live in tests/fakes (shared with the tests)

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from tests.fakes import FakeElevenLabsTts, FakeGroq, GroqConfig, Latency, TtsConfig  # noqa: E402

GRAPH = ROOT / "graphs" / "cloud.yaml"
RESULTS = ROOT / "experiments" / "results" / "cloud_latency.json"
FIXTURES = ROOT / "tests" / "fixtures" / "audio"
UTTERANCES = [f"user_{i:02d}.wav" for i in range(1, 9)]
SR = 16000
now = time.perf_counter

# Published figures (see the docstring for the sources).
STT = Latency(190, 280)
STT_SPEED_FACTOR = 216.0
LLM_TTFT = Latency(120, 250)
LLM_WORD_GAP = Latency(1.7)
TTS_TTFA = Latency(135, 250)
TTS_CONNECT = Latency(150, 400)
TTS_RTF = 10.0

REPLIES = {
    "What is the weather like today?": "It is sunny and warm today, about twenty-four degrees. A good day for a walk.",
    "Can you tell me a joke?": "Why did the scarecrow win an award? Because he was outstanding in his field.",
    "Please book a table for two at seven.": "Done. I booked a table for two at seven tonight.",
    "How far is the moon from the earth?": "About three hundred and eighty-four thousand kilometres, on average.",
    "Turn off the lights in the kitchen.": "Okay, the kitchen lights are off.",
    "What time does the train leave tomorrow morning?": "The first train leaves at six forty-five tomorrow morning.",
    "Remind me to call my mother this evening.": "Sure, I will remind you at seven this evening.",
    "I would like to order a large pizza with mushrooms.": "A large mushroom pizza it is. It will be there in thirty minutes.",
}

SILENCE_TURN = {"type": "turn_policy.silence", "endpoint_silence_ms": 400, "barge_in_min_speech_ms": 300}
SENTENCES = {"first_piece_chars": 0}  # tts.elevenlabs: every piece a sentence (or a long clause)
STT_AT_TURN = {"endpoint_silence_ms": 400}  # stt.groq closes an utterance at the turn's silence
NO_LEVEL = {"early_level_ms": 0}  # stt.groq: the early request on the VAD's scores alone
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "baseline": {
        "stt": {"speculative": False, "early_ms": 0, **NO_LEVEL, **STT_AT_TURN},
        "turn": SILENCE_TURN,
        "llm": {"preemptive": False},
        "tts": {"warm": False, **SENTENCES},
    },
    "+spec_stt": {
        "stt": {"early_ms": 0, **NO_LEVEL, **STT_AT_TURN},
        "turn": SILENCE_TURN,
        "llm": {"preemptive": False},
        "tts": {"warm": False, **SENTENCES},
    },
    "+preempt_llm": {
        "stt": {"early_ms": 0, **NO_LEVEL, **STT_AT_TURN},
        "turn": SILENCE_TURN,
        "tts": {"warm": False, **SENTENCES},
    },
    "+warm_tts": {
        "stt": {"early_ms": 0, **NO_LEVEL, **STT_AT_TURN},
        "turn": SILENCE_TURN,
        "tts": SENTENCES,
    },
    "+early_stt": {
        "stt": {"early_score": None, **NO_LEVEL, **STT_AT_TURN},
        "turn": SILENCE_TURN,
        "tts": SENTENCES,
    },
    "+held_reply": {"stt": {"early_score": None, **NO_LEVEL, **STT_AT_TURN}, "tts": SENTENCES},
    "+falling_score": {"stt": {**NO_LEVEL, **STT_AT_TURN}, "tts": SENTENCES},
    "+first_words": {"stt": {**NO_LEVEL, **STT_AT_TURN}},
    "+final_first": {"stt": NO_LEVEL},
    "+level_cue": {},  # graphs/cloud.yaml as it is
    # Off the chain: the held reply without the early STT request (compared with +warm_tts).
    "held_only": {"stt": {"early_ms": 0, **NO_LEVEL, **STT_AT_TURN}, "tts": SENTENCES},
    # Off the chain: graphs/cloud.yaml with the client sending bigger chunks (a measurement condition,
    # not an overlap: compared with graphs/cloud.yaml at the default chunk).
    "chunk_100ms": {},
    "chunk_250ms": {},
}
BASE_OF = {"held_only": "+warm_tts", "chunk_100ms": "+level_cue", "chunk_250ms": "+level_cue"}
CHUNK_OF = {"chunk_100ms": 100, "chunk_250ms": 250}  # else --chunk-ms
MARKS = [
    "stt_request",
    "stt_done",
    "llm_request",
    "turn_committed",
    "llm_first_token",
    "tts_request",
    "tts_first_audio",
    "client_audio",
]


@dataclass
class Utterance:
    name: str
    text: str
    pcm: bytes
    speech_end_s: float  # last voiced sample, seconds into the file


@dataclass
class Turn:
    variant: str
    conversation: int
    utterance: str
    t_speech_end: float = 0.0
    latency_ms: float | None = None
    marks: dict[str, float | None] = field(default_factory=dict)  # ms after the end of speech
    preemptive: bool = False
    error: str = ""


def load_utterances() -> list[Utterance]:
    meta = json.loads((FIXTURES / "transcripts.json").read_text())
    out = []
    for name in UTTERANCES:
        with wave.open(str(FIXTURES / name)) as w:
            assert w.getframerate() == SR and w.getnchannels() == 1
            pcm = w.readframes(w.getnframes())
        out.append(Utterance(name, meta[name]["text"], pcm, meta[name]["speech"][-1][1]))
    return out


# -- the server ------------------------------------------------------------------------------------------------------
def write_variant(directory: Path, name: str, overrides: dict[str, dict[str, Any]]) -> Path:
    agent = "cloud_" + re.sub(r"\W", "", name) if overrides else "cloud"
    lines = [f"extends: {GRAPH}", f"graph: {agent}", "nodes:"]
    for node, params in overrides.items():
        params = dict(params)
        kind = params.pop("type", None)  # another node type replaces the node (its params with it)
        head = f"type: {kind}, " if kind else ""
        lines.append(f"  {node}: {{{head}params: {json.dumps(params)}}}")
    if not overrides:
        lines = [f"extends: {GRAPH}", "graph: cloud"]
    path = directory / f"{agent}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Server:
    """``ah run FILE --port 0`` in a subprocess; the port is read from its banner."""

    def __init__(self, graph: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ah.cli", "run", str(graph), "--port", "0"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        banner = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            banner += line
            if m := re.search(r"http://127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
            if line.lstrip().startswith("health:"):
                return
        self.proc.kill()
        raise RuntimeError(
            f"ah run did not start: {banner}{self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


# -- the client ------------------------------------------------------------------------------------------------------
class Client:
    """One conversation: a microphone streaming in real time, and a reader that times what comes back."""

    def __init__(
        self, ws: ClientConnection, chunk_ms: int, noise_dbfs: float | None = None, seed: int = 0
    ) -> None:
        self.ws = ws
        self.noise = None if noise_dbfs is None else 32768 * 10 ** (noise_dbfs / 20)  # RMS, in PCM units
        self.rng = np.random.default_rng(seed)
        self.chunk = SR * chunk_ms // 1000 * 2
        self.chunk_s = chunk_ms / 1000
        self.queue: bytearray = bytearray()
        self.mark_at: int | None = None  # byte offset in `queue` of the last voiced sample
        self.speech_end_sent: asyncio.Future[float] | None = None
        self.first_audio: dict[int, float] = {}
        self.last_audio_at = 0.0
        self.transcript_at: list[float] = []
        self.errors: list[dict[str, Any]] = []
        self.audio_event = asyncio.Event()

    async def mic(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            data = bytes(self.queue[: self.chunk])
            del self.queue[: self.chunk]
            data += bytes(self.chunk - len(data))
            if self.noise is not None:  # a microphone's noise floor, under the speech and between turns
                x = np.frombuffer(data, "<i2") + self.rng.standard_normal(len(data) // 2) * self.noise
                data = np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
            await self.ws.send(json.dumps({"user_audio_chunk": base64.b64encode(data).decode()}))
            if self.mark_at is not None:
                self.mark_at -= self.chunk
                if self.mark_at < 0 and self.speech_end_sent is not None and not self.speech_end_sent.done():
                    self.speech_end_sent.set_result(now())
                    self.mark_at = None
            next_at += self.chunk_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def reader(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                t = now()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "audio":
                    eid = int(msg["audio_event"]["event_id"])
                    self.first_audio.setdefault(eid, t)
                    self.last_audio_at = t
                    self.audio_event.set()
                elif kind == "user_transcript":
                    self.transcript_at.append(t)
                elif kind == "ping":
                    eid = msg["ping_event"]["event_id"]
                    await self.ws.send(json.dumps({"type": "pong", "event_id": eid}))
                elif kind == "error":
                    self.errors.append(msg["error_event"])

    async def say(self, utt: Utterance) -> float:
        """Queue an utterance; returns when its last voiced sample was sent."""
        self.speech_end_sent = asyncio.get_running_loop().create_future()
        self.mark_at = len(self.queue) + int(utt.speech_end_s * SR) * 2
        self.queue += utt.pcm
        return await self.speech_end_sent

    async def reply_after(self, t: float, within: float = 15.0) -> tuple[int, float]:
        deadline = time.monotonic() + within
        while True:
            new = [(eid, ta) for eid, ta in self.first_audio.items() if ta > t]
            if new:
                return min(new, key=lambda x: x[1])
            if time.monotonic() > deadline:
                raise TimeoutError("no agent audio")
            self.audio_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.audio_event.wait(), 0.5)

    async def quiet(self, seconds: float) -> None:
        """Until no agent audio has come for ``seconds`` (the reply has been received and played)."""
        while (left := self.last_audio_at + seconds - now()) > 0:
            self.audio_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.audio_event.wait(), left)


async def conversation(
    port: int,
    agent: str,
    variant: str,
    index: int,
    turns: int,
    utts: list[Utterance],
    chunk_ms: int,
    tick: Any,
    noise_dbfs: float | None = None,
) -> list[Turn]:
    url = f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id={agent}"
    out: list[Turn] = []
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        meta = json.loads(await ws.recv())
        assert meta["type"] == "conversation_initiation_metadata", meta
        client = Client(ws, chunk_ms, noise_dbfs, seed=index)
        tasks = [asyncio.create_task(client.mic()), asyncio.create_task(client.reader())]
        await asyncio.sleep(0.5 + 0.37 * index)  # stagger the conversations
        try:
            for k in range(turns):
                utt = utts[(index * 3 + k) % len(utts)]
                turn = Turn(variant, index, utt.name)
                errors_before = len(client.errors)
                t_end = await client.say(utt)
                turn.t_speech_end = t_end
                try:
                    _eid, t_audio = await client.reply_after(t_end)
                    turn.latency_ms = (t_audio - t_end) * 1000
                except TimeoutError:
                    turn.error = "no reply"
                if len(client.errors) > errors_before:
                    turn.error = turn.error or str(client.errors[-1].get("message", ""))[:100]
                commit = [t for t in client.transcript_at if t > t_end]
                turn.marks["turn_committed"] = (commit[0] - t_end) * 1000 if commit else None
                turn.marks["client_audio"] = turn.latency_ms
                out.append(turn)
                await client.quiet(0.4)
                await asyncio.sleep(0.3)
                tick()
        finally:
            for task in tasks:
                task.cancel()
    return out


def attach_fake_marks(
    turns: list[Turn], utts: list[Utterance], groq: FakeGroq, tts: FakeElevenLabsTts
) -> None:
    """Each turn's provider instants, from the fakes' request logs. Conversations run at once, so a
    request is matched by its text as well as its time: the transcript the fake gave, the reply it
    wrote, the sentence it spoke (the conversations say different things at any one time)."""
    text_of = {u.name: u.text for u in utts}
    stt = sorted(groq.of("/transcriptions"), key=lambda r: r.t_start)
    chats = sorted(groq.of("/chat/completions"), key=lambda r: r.t_start)
    gens = sorted(tts.generations, key=lambda g: g.t_request)
    for turn in turns:
        t0 = turn.t_speech_end
        t_audio = t0 + (turn.latency_ms or 0) / 1000
        said = text_of[turn.utterance]
        reply = REPLIES.get(said, "")
        # The chat request the reply came from: the last one for this text before its first audio.
        llm = [r for r in chats if r.text == reply and t0 - 1.0 < r.t_start < t_audio]
        chat = llm[-1] if llm else None
        # The transcription it answered: the last one of this utterance that was answered before it (a
        # cancelled speculative request has no end; a later turn may say the same words).
        st = [
            r
            for r in stt
            if r.text == said
            and t0 - 1.5 < r.t_start
            and r.t_end is not None
            and r.t_end <= (chat.t_start if chat is not None else t_audio)
        ]
        req = st[-1] if st else None
        gen = next(
            (
                g
                for g in gens
                if reply.startswith(g.text.strip())
                and chat is not None
                and chat.t_start < g.t_request < t_audio
            ),
            None,
        )

        def ms(t: float | None, t0: float = t0) -> float | None:
            return None if t is None else (t - t0) * 1000

        turn.marks.update(
            stt_request=ms(req.t_start if req else None),
            stt_done=ms(req.t_end if req else None),
            llm_request=ms(chat.t_start if chat else None),
            llm_first_token=ms(chat.t_first_byte if chat else None),
            tts_request=ms(gen.t_request if gen else None),
            tts_first_audio=ms(gen.t_first_audio if gen else None),
        )
        commit = turn.marks.get("turn_committed")
        turn.preemptive = bool(chat and commit is not None and (chat.t_start - t0) * 1000 < commit)


# -- running a variant --------------------------------------------------------------------------------------------
def transcriber(utts: list[Utterance]) -> Any:
    """The fake's STT: which fixture the uploaded audio came from. The server forwards the client's
    16 kHz PCM unchanged, so a slice of the upload is found byte for byte in its fixture; under a noise
    floor (``--noise-dbfs``), by its correlation with the fixtures."""
    fixtures = [np.frombuffer(u.pcm, "<i2").astype(np.float64) for u in utts]

    def transcribe(wav_bytes: bytes) -> str:
        import io

        with wave.open(io.BytesIO(wav_bytes)) as w:
            frames = w.readframes(w.getnframes())
        mid = len(frames) // 4 * 2
        probe = frames[mid : mid + 1600]
        for u in utts:
            if probe and probe in u.pcm:
                return u.text
        # Under noise: the probe's best normalised correlation with each fixture, searched near where it
        # must be (the upload starts about 130 ms before the speech: the VAD's and the STT's pads).
        n = len(frames) // 2
        at = round(SR * 0.37) + mid // 2
        p = np.frombuffer(probe, "<i2").astype(np.float64)
        if not p.any():
            return "Sorry?"
        best, text = 0.0, "Sorry?"
        for u, x in zip(utts, fixtures, strict=True):
            lo, hi = max(0, at - SR // 5), min(len(x), at + SR // 5 + len(p))
            if hi - lo < len(p) or n < len(p):
                continue
            seg = x[lo:hi]
            size = 1 << (len(seg) + len(p)).bit_length()
            corr = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(p, size)), size)
            corr = corr[: len(seg) - len(p) + 1]
            csum = np.concatenate(([0.0], np.cumsum(seg * seg)))
            energy = csum[len(p) :] - csum[: -len(p)]
            score = float(np.max(corr / (np.sqrt(np.maximum(energy, 0) * (p @ p)) + 1e-9)))
            if score > best:
                best, text = score, u.text
        return text if best > 0.5 else "Sorry?"

    return transcribe


def run_variant(
    name: str,
    overrides: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    utts: list[Utterance],
    progress: Any,
) -> tuple[list[Turn], dict[str, Any]]:
    groq_cfg = GroqConfig(
        ttft=LLM_TTFT,
        token_gap=LLM_WORD_GAP,
        stt=STT,
        stt_speed_factor=STT_SPEED_FACTOR,
        reply_fn=lambda messages: REPLIES.get(
            str(messages[-1]["content"]).strip(), "Sure, I can help with that."
        ),
        transcribe_fn=transcriber(utts),
        seed=args.seed,
    )
    tts_cfg = TtsConfig(
        connect=TTS_CONNECT, ttfa=TTS_TTFA, rtf=TTS_RTF, ms_per_char=args.ms_per_char, seed=args.seed
    )
    with FakeGroq(groq_cfg) as groq, FakeElevenLabsTts(tts_cfg) as tts, tempfile.TemporaryDirectory() as tmp:
        graph = write_variant(Path(tmp), name, overrides)
        env = {
            "GROQ_API_KEY": "gsk_bench",
            "GROQ_BASE_URL": groq.base_url,
            "ELEVENLABS_API_KEY": "xi_bench",
            "ELEVENLABS_BASE_URL": tts.url,
        }
        server = Server(graph, env)
        agent = graph.stem
        per = -(-args.turns // args.concurrency)
        task = progress.add_task(name, total=per * args.concurrency)

        async def main() -> list[Turn]:
            results = await asyncio.gather(
                *(
                    conversation(
                        server.port,
                        agent,
                        name,
                        i,
                        per,
                        utts,
                        CHUNK_OF.get(name, args.chunk_ms),
                        lambda: progress.advance(task),
                        args.noise_dbfs,
                    )
                    for i in range(args.concurrency)
                )
            )
            return [t for r in results for t in r]

        try:
            turns = asyncio.run(main())
        finally:
            log = server.stop()
        attach_fake_marks(turns, utts, groq, tts)
        info = {
            "tts_connections": len(tts.connections),
            "stt_requests": len(groq.of("/transcriptions")),
            "llm_requests": len(groq.of("/chat/completions")),
            "tts_generations": len(tts.generations),
            "server_errors": [ln for ln in log.splitlines() if "Traceback" in ln or "failed" in ln][:5],
        }
        return turns, info


# -- reporting ----------------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def summarize(turns: list[Turn]) -> dict[str, Any]:
    lat = [t.latency_ms for t in turns if t.latency_ms is not None]
    marks: dict[str, dict[str, float]] = {}
    for m in MARKS:
        vals = [t.marks[m] for t in turns if t.marks.get(m) is not None]
        if vals:
            marks[m] = {"mean": round(statistics.fmean(vals), 1), "p50": round(pct(vals, 50), 1)}  # type: ignore[arg-type]

    # What each overlap moves, free of most of the providers' sampling noise: the mean gap between
    # neighbouring instants of the same turn, and how long ready audio waited for the turn to end.
    def gap(a: str | None, b: str) -> float | None:
        vals = [
            t.marks[b] - (t.marks[a] if a else 0.0)  # type: ignore[operator]
            for t in turns
            if t.marks.get(b) is not None and (a is None or t.marks.get(a) is not None)
        ]
        return round(statistics.fmean(vals), 1) if vals else None

    stages = {
        "detect (speech end -> STT request)": gap(None, "stt_request"),
        "STT": gap("stt_request", "stt_done"),
        "STT done -> LLM request": gap("stt_done", "llm_request"),
        "LLM first token": gap("llm_request", "llm_first_token"),
        "first token -> TTS request": gap("llm_first_token", "tts_request"),
        "TTS first audio": gap("tts_request", "tts_first_audio"),
        "ready audio waits for the turn": gap("tts_first_audio", "client_audio"),
    }
    held = [
        t
        for t in turns
        if t.latency_ms is not None
        and t.marks.get("tts_first_audio") is not None
        and t.latency_ms - t.marks["tts_first_audio"] > 4  # type: ignore[operator]
    ]
    return {
        "turns": len(turns),
        "answered": len(lat),
        "errors": [t.error for t in turns if t.error],
        "latency_ms": {
            "mean": round(statistics.fmean(lat), 1) if lat else None,
            # The standard error of the mean: the providers' latencies are drawn, so another run of the
            # same variant differs by about this much (1 SE) from sampling alone.
            "sem": round(statistics.stdev(lat) / len(lat) ** 0.5, 1) if len(lat) > 1 else None,
            "p50": round(pct(lat, 50), 1),
            "p95": round(pct(lat, 95), 1),
            "p99": round(pct(lat, 99), 1),
            "min": round(min(lat), 1) if lat else None,
            "max": round(max(lat), 1) if lat else None,
        },
        "timeline_ms_after_speech_end": marks,
        "stages_ms": stages,
        "held_by_the_turn_share": round(len(held) / max(1, len(lat)), 3),
        "preemptive_share": round(sum(t.preemptive for t in turns) / max(1, len(turns)), 3),
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    for i, n in enumerate(names):
        lat = summary[n]["_latencies"]
        ax1.boxplot(lat, positions=[i], widths=0.6, whis=(1, 99), showfliers=True)
        ax1.scatter([i], [summary[n]["latency_ms"]["mean"]], marker="D", color="tab:red", zorder=3)
    ax1.axhline(600, ls="--", color="tab:green", lw=1, label="goal mean 600 ms")
    ax1.axhline(900, ls=":", color="tab:orange", lw=1, label="goal p99 900 ms")
    ax1.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax1.set_ylabel("response latency (ms), whiskers p1–p99, ◆ mean")
    ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title("End of user speech → first agent audio")
    colors = dict(zip(MARKS, plt.get_cmap("tab10").colors, strict=False))
    for i, n in enumerate(names):
        tl = summary[n]["timeline_ms_after_speech_end"]
        for m in MARKS:
            if m in tl:
                ax2.scatter(tl[m]["mean"], i, color=colors[m], s=60, label=m if i == 0 else None, zorder=3)
        pts = [tl[m]["mean"] for m in MARKS if m in tl]
        ax2.plot([min(pts), max(pts)], [i, i], color="grey", lw=1, zorder=1)
    ax2.set_yticks(range(len(names)), names)
    ax2.set_xlabel("mean time after the end of speech (ms)")
    ax2.set_title("Where the time goes (means)")
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=52, help="turns per variant (≥ 50 for the report)")
    ap.add_argument("--concurrency", type=int, default=4, help="conversations at a time")
    ap.add_argument(
        "--chunk-ms",
        type=int,
        default=25,
        help="client audio chunk (25 ms: what @elevenlabs/client sends from a browser; the Python SDK sends 250)",
    )
    ap.add_argument("--ms-per-char", type=float, default=40.0, help="fake TTS speaking rate")
    ap.add_argument(
        "--noise-dbfs",
        type=float,
        default=None,
        help="add a steady noise floor of this level (RMS) to everything the client sends, e.g. -50",
    )
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    console = Console()
    utts = load_utterances()
    summary: dict[str, Any] = {}
    all_turns: list[Turn] = []
    infos: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:>13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for name in args.variants.split(","):
            turns, info = run_variant(name, VARIANTS[name], args, utts, progress)
            all_turns += turns
            infos[name] = info
            summary[name] = summarize(turns)
            summary[name]["_latencies"] = [t.latency_ms for t in turns if t.latency_ms is not None]
    table = Table(title="Response latency, ms (end of user speech → first agent audio at the client)")
    for col in [
        "variant",
        "turns",
        "mean",
        "p50",
        "p95",
        "p99",
        "STT done",
        "LLM req",
        "commit",
        "LLM 1st",
        "TTS req",
        "TTS 1st",
    ]:
        table.add_column(col, justify="right")
    for name, s in summary.items():
        tl = s["timeline_ms_after_speech_end"]
        cell = lambda m, tl=tl: f"{tl[m]['mean']:.0f}" if m in tl else "-"  # noqa: E731
        lat = s["latency_ms"]
        table.add_row(
            name,
            f"{s['answered']}/{s['turns']}",
            f"{lat['mean']:.0f}",
            f"{lat['p50']:.0f}",
            f"{lat['p95']:.0f}",
            f"{lat['p99']:.0f}",
            *(cell(m) for m in MARKS[1:-1]),  # stt_done .. tts_first_audio
        )
    console.print(table)
    stages = Table(title="Mean gaps between a turn's instants, ms (what each overlap moves)")
    stage_names = list(next(iter(summary.values()))["stages_ms"])
    for col in ["variant", "± SE", *stage_names, "held by the turn"]:
        stages.add_column(col, justify="right")
    for name, s in summary.items():
        stages.add_row(
            name,
            f"{s['latency_ms']['sem']}",
            *(f"{v:.0f}" if v is not None else "-" for v in s["stages_ms"].values()),
            f"{s['held_by_the_turn_share']:.0%}",
        )
    console.print(stages)
    chain = [n for n in summary if n not in BASE_OF]
    pairs = [*itertools.pairwise(chain), *((BASE_OF[n], n) for n in summary if n in BASE_OF)]
    for a, b in pairs:
        if a in summary and b in summary:
            d = summary[a]["latency_ms"]["mean"] - summary[b]["latency_ms"]["mean"]
            console.print(f"  {b:>13} buys {d:6.0f} ms of mean latency over {a}")
    for n, info in infos.items():
        console.print(
            f"  {n:>13}: {info['stt_requests']} STT, {info['llm_requests']} LLM requests, "
            f"{info['tts_generations']} TTS generations for {summary[n]['turns']} turns "
            f"({info['stt_requests'] / max(1, summary[n]['turns']):.2f} STT requests a turn)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(summary, png)
    for s in summary.values():
        del s["_latencies"]
    doc = {
        "benchmark": "cloud_latency",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python experiments/cloud_latency.py " + " ".join(sys.argv[1:]),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "provider_latencies": {
            "stt": str(STT) + f" + audio/{STT_SPEED_FACTOR:g}",
            "llm_ttft": str(LLM_TTFT),
            "llm_word_gap": str(LLM_WORD_GAP),
            "tts_ttfa": str(TTS_TTFA),
            "tts_connect": str(TTS_CONNECT),
            "tts_rtf": TTS_RTF,
        },
        "params": {k: str(v) for k, v in vars(args).items()},
        "summary": summary,
        "fakes": infos,
        "turns": [asdict(t) for t in all_turns],
    }
    args.out.write_text(json.dumps(doc, indent=1))
    console.print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
