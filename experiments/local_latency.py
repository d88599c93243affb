"""Local latency benchmark: the default voice agent (all local models) through the real server, driven by
the official ElevenLabs Python SDK streaming recorded speech in real time.

Run it with ``.venv/bin/python experiments/local_latency.py`` (``--turns 24 --chunk-ms 250`` by default;
about 3–4 minutes). It reports, per ARCHITECTURE.md §5, the **response latency** (the end of the user's
speech — the last voiced sample, as sent by the client — to the first agent audio chunk the client
receives) as mean/p50/p95/p99, with the server-side breakdown per turn, the server's peak memory,
CPU per session and event-loop lag, and the WER of the user transcripts as a side figure.

Processes (one clock: ``perf_counter`` is CLOCK_MONOTONIC on Linux, the same in every process):

* the **server**: this file re-run as ``--_serve``. It installs measurement wrappers (in that process
  only; nothing in ``src/ah`` changes) and then runs exactly ``ah run GRAPH --port 0`` (the CLI's own
  ``main``: models preloaded, uvloop, the banner, SIGTERM drain). At exit it writes what it recorded:
    - frames as they leave a node, by wrapping ``OutputPort.send``: the VAD's ``start``/``end``, the
      STT's transcripts, the turn policy's committed turns, the LLM's text deltas, the TTS's first
      ``SpeechFrame`` of each reply, the transport's user audio (arrival times);
    - the STT's runs (``WhisperSttLocal._start`` / ``_transcribe`` / ``_close``: speculative or not,
      used or discarded), the turn policy's endpoint timer (``_endpoint_after_silence``) and who
      committed the turn (``_commit``: the timer, or the transcript arriving after it), the LLM's
      job (``_generate``, ``_generate_blocking`` on its pool thread), each Piper synthesis (its
      ``synthesize`` and the ``synthesize_piece`` call on the pool thread), every first ``audio``
      message per reply sent by ``ProtocolState.send``, and every ``SessionEvent`` (``stt_run``,
      ``llm_reply``, ...);
    - an event-loop lag probe (10 ms sleeps, overshoot) and, every 0.5 s, CPU time per thread
      (the model pools ``ah-whisper``, ``ah-llama``, ``ah-piper``, ``ah-vad``, the loop, the rest).
* the **client** (this process): one ``elevenlabs.conversational_ai.conversation.Conversation``
  (sync, ``ElevenLabs(api_key="x", base_url=...)``, ``requires_auth=False``) per conversation, with an
  ``AudioInterface`` that streams ``tests/fixtures/audio/user_0N.wav`` as a microphone would: chunks
  of ``--chunk-ms`` (250 ms, the SDK's recommendation) handed to the SDK when their last sample has
  been "captured" in real time. After each utterance it keeps streaming silence until the agent's
  reply has been received and played out (a simulated player fed by ``output()``), then a short gap,
  then the next utterance, so no reply is cut by barge-in. A warm-up conversation (one turn, not
  reported) goes first: Whisper and the LLM load in the first session's set-up.

Per turn: ``speech_end_sent`` = when the chunk holding the last voiced sample (``transcripts.json``)
was handed to the SDK; ``first_audio`` = the first ``output()`` call after it; latency = the
difference. ``latency_from_capture`` counts instead from when that sample would have been spoken into
a live microphone (it adds the chunking delay, up to one chunk). The breakdown is a chain of
server-side instants between the two, so its parts add up to the latency exactly:

  vad_detect       speech end (client)  -> the VAD's ``end`` frame (hop to the server, chunking, the
                   VAD's ``min_silence_ms`` hysteresis)
  endpoint_wait    VAD ``end``           -> turn committed (the turn policy's silence timer, or the
                   final transcript if it comes later)
  llm_first_token  turn committed        -> the LLM's first text delta
  tts_first_audio  first text delta      -> the TTS's first SpeechFrame (waiting for the first
                   sentence/clause of the reply, then synthesizing it)
  engine_tail      first SpeechFrame     -> first audio at the client (channel hop, pacing, JSON and
                   base64, the socket, the SDK's decoding)

STT runs beside that chain: from the speculative start (at the VAD ``end``) to the transcript; its
overlap with the endpoint wait is reported, and what it adds beyond the silence timer.

Results go to ``experiments/results/local_latency.json`` (and a PNG beside it when matplotlib exists).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SELF = str(Path(__file__).resolve())
DEFAULT_GRAPH = ROOT / "graphs" / "default.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "local_latency.json"
FIXTURES = ROOT / "tests" / "fixtures" / "audio"
UTTERANCES = [f"user_{i:02d}.wav" for i in range(1, 9)]
SR = 16000
QUIET_CORES = 0.25  # a turn is "quiet" when other processes used less than this around it
LAG_INTERVAL_S = 0.010
THREAD_CPU_INTERVAL_S = 0.5
now = time.perf_counter  # CLOCK_MONOTONIC on Linux: the same clock in every process


# ---------------------------------------------------------------------------------------------------
# The server process: `ah run` plus wrappers.


class Rec:
    """(perf_counter, kind, data) of everything measured in the server; list.append is atomic, so the
    pool threads may record too."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.lag: list[tuple[float, float]] = []
        self.threads: list[tuple[float, dict[str, float]]] = []
        self.audio_in: list[tuple[float, int]] = []

    def __call__(self, kind: str, t: float | None = None, **data: Any) -> None:
        self.events.append((now() if t is None else t, kind, data))


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, grouped: model pools by name, the loop, the rest."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "native")
        m = re.match(r"ah-([a-z]+)", name)
        # "native": threads no Python code started (CTranslate2's, ONNX Runtime's, llama.cpp's).
        group = (
            m.group(1) if m else ("loop" if name == "MainThread" else name if name == "native" else "other")
        )
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _instrument(rec: Rec) -> None:
    import ah.nodes.tts_piper as tts_piper
    from ah.nodes.elevenlabs.state import ProtocolState
    from ah.nodes.llm_local import LocalLlm
    from ah.nodes.stt_whisper import WhisperSttLocal
    from ah.nodes.turn_silence import SilenceTurnPolicy
    from ah.runtime.frames import (
        AudioFrame,
        ReplyTextFrame,
        SpeechFrame,
        TranscriptFrame,
        UserTurnFrame,
        VadFrame,
    )
    from ah.runtime.ports import OutputPort
    from ah.runtime.session import Session
    from ah.server.app import AgentServer

    # -- frames leaving nodes ------------------------------------------------------------------------
    send_orig = OutputPort.send
    first_speech: set[tuple[int, int]] = set()  # (port, scope): scope ids restart in every session

    def send(self: Any, frame: Any) -> Any:
        tp = type(frame)
        if tp is AudioFrame:
            if self.name == "audio":
                rec.audio_in.append((now(), len(frame.pcm) // 2))
        elif tp is VadFrame:
            if frame.kind != "score":
                rec("vad_" + frame.kind, t_audio=frame.t)
        elif tp is SpeechFrame:
            key = (id(self), frame.scope)
            if key not in first_speech and frame.pcm:
                first_speech.add(key)
                rec("tts_first_speech", scope=frame.scope)
        elif tp is ReplyTextFrame:
            rec("llm_" + frame.kind, scope=frame.scope, text=frame.text)
        elif tp is TranscriptFrame:
            rec("transcript", text=frame.text, final=frame.final, t0=frame.t_start, t1=frame.t_end)
        elif tp is UserTurnFrame:
            rec("commit", scope=frame.scope, text=frame.text, typed=frame.typed)
        return send_orig(self, frame)

    OutputPort.send = send  # type: ignore[method-assign]

    # -- STT -----------------------------------------------------------------------------------------
    start_orig = WhisperSttLocal._start
    close_orig = WhisperSttLocal._close
    transcribe_orig = WhisperSttLocal._transcribe
    closing: set[int] = set()

    def _start(self: Any, t0: float, t1: float, upto: float | None) -> Any:
        task = start_orig(self, t0, t1, upto)
        rec("stt_start", speculative=id(self) not in closing, t0=t0, t1=t1, task=id(task))
        return task

    def _close(self: Any) -> None:
        rec("stt_close", had_speculative=self._job is not None, vad_t=self._vad_t)
        closing.add(id(self))
        try:
            close_orig(self)
        finally:
            closing.discard(id(self))

    async def _transcribe(self: Any, a: int, b: int) -> Any:
        task = id(asyncio.current_task())
        try:
            result = await transcribe_orig(self, a, b)
        except asyncio.CancelledError:
            rec("stt_cancelled", task=task)
            raise
        rec("stt_done", task=task, text=result.text, audio_s=(b - a) / SR)
        return result

    WhisperSttLocal._start = _start  # type: ignore[method-assign]
    WhisperSttLocal._close = _close  # type: ignore[method-assign]
    WhisperSttLocal._transcribe = _transcribe  # type: ignore[method-assign]

    # -- turn policy ---------------------------------------------------------------------------------
    timer_orig = SilenceTurnPolicy._endpoint_after_silence
    commit_orig = SilenceTurnPolicy._commit

    async def _endpoint_after_silence(self: Any, already_silent_s: float = 0.0) -> None:
        rec("turn_timer_start", already=already_silent_s, nominal_s=self.params.endpoint_silence_ms / 1000)
        try:
            await timer_orig(self, already_silent_s)
        except asyncio.CancelledError:
            rec("turn_timer_cancelled")
            raise
        rec("turn_timer_end", pending=bool(self._pending))

    async def _commit(self: Any) -> None:
        by = "timer" if asyncio.current_task() is self._endpoint else "transcript"
        rec("commit_call", by=by, pending=len(self._pending))
        await commit_orig(self)

    SilenceTurnPolicy._endpoint_after_silence = _endpoint_after_silence  # type: ignore[method-assign]
    SilenceTurnPolicy._commit = _commit  # type: ignore[method-assign]

    # -- LLM -----------------------------------------------------------------------------------------
    generate_orig = LocalLlm._generate
    blocking_orig = LocalLlm._generate_blocking

    async def _generate(self: Any, messages: Any, scope: int, said: Any) -> None:
        rec("llm_generate", scope=scope, messages=len(messages))
        await generate_orig(self, messages, scope, said)

    def _generate_blocking(self: Any, model: Any, messages: Any, stop: Any, pipe: Any) -> Any:
        t0, c0 = now(), time.thread_time()
        stats = blocking_orig(self, model, messages, stop, pipe)
        rec(
            "llm_thread",
            t=t0,
            end=now(),
            cpu=time.thread_time() - c0,  # llama.cpp computes in this thread (n_threads=1)
            tokens=stats.tokens,
            prompt_tokens=stats.prompt_tokens,
        )
        return stats

    LocalLlm._generate = _generate  # type: ignore[method-assign]
    LocalLlm._generate_blocking = _generate_blocking  # type: ignore[method-assign]

    # -- TTS -----------------------------------------------------------------------------------------
    synth_orig = tts_piper.PiperTts.synthesize
    piece_orig = tts_piper.synthesize_piece

    async def synthesize(self: Any, text: str) -> Any:
        t0 = now()
        out = await synth_orig(self, text)
        rec("tts_synth", t=t0, end=now(), chars=len(text), audio_s=len(out.audio) / SR, text=text)
        return out

    def synthesize_piece(voice: Any, text: str, config: Any) -> Any:
        t0, c0 = now(), time.thread_time()
        out = piece_orig(voice, text, config)
        rec("tts_piece", t=t0, end=now(), cpu=time.thread_time() - c0, chars=len(text))
        return out

    tts_piper.PiperTts.synthesize = synthesize  # type: ignore[method-assign]
    tts_piper.synthesize_piece = synthesize_piece

    # -- protocol out ------------------------------------------------------------------------------
    psend_orig = ProtocolState.send
    first_audio: set[tuple[int, int]] = set()

    async def psend(self: Any, message: dict[str, Any]) -> bool:
        kind = message.get("type")
        if kind == "audio":
            key = (id(self), int(message["audio_event"]["event_id"]))
            if key not in first_audio:
                first_audio.add(key)
                t0 = now()
                ok = await psend_orig(self, message)
                rec("out_first_audio", t=t0, sent=now(), event_id=key[1])
                return ok
        elif kind in (
            "user_transcript",
            "agent_response",
            "interruption",
            "conversation_initiation_metadata",
        ):
            rec("out_" + str(kind))
        return await psend_orig(self, message)

    ProtocolState.send = psend  # type: ignore[method-assign]

    # -- session events, and the probes started with the server ------------------------------------------
    emit_orig = Session._emit

    def _emit(self: Any, event: Any) -> None:
        if event.kind == "session_started":  # sessions run one after another here: ids may be reused
            first_speech.clear()
            first_audio.clear()
        if event.kind not in ("stt_started",):
            rec(
                "ev_" + event.kind,
                **{k: v for k, v in event.data.items() if isinstance(v, int | float | str)},
            )
        emit_orig(self, event)

    Session._emit = _emit  # type: ignore[method-assign]

    start_server_orig = AgentServer.start

    async def start(self: Any) -> None:
        await start_server_orig(self)
        loop = asyncio.get_running_loop()

        async def lag_probe() -> None:
            while True:
                t0 = now()
                await asyncio.sleep(LAG_INTERVAL_S)
                t1 = now()
                rec.lag.append((t1, max(0.0, t1 - t0 - LAG_INTERVAL_S)))

        async def thread_cpu() -> None:
            while True:
                rec.threads.append((now(), _thread_cpu()))
                await asyncio.sleep(THREAD_CPU_INTERVAL_S)

        self._bench_probes = [loop.create_task(lag_probe()), loop.create_task(thread_cpu())]

    AgentServer.start = start  # type: ignore[method-assign]


EXPERIMENTS = {
    "first_piece_chars=N": "tts: cut a reply's FIRST piece at a word boundary once it is N characters long "
    "(TextSplitter; today the first piece waits for a sentence end, or a comma after min_clause_chars)",
    "llm_batch_threads=N": "llm.local: Llama(n_threads_batch=N); llama-cpp-python defaults it to cpu_count() "
    "(2 here) whatever n_threads is, so the prompt is evaluated by 2 spinning ggml threads",
    "vad_confirmed_at": "vad.silero: stamp end frames with confirmed_at (the audio time the VAD was sure), as "
    "vad.energy does, so turn_policy.silence counts its silence from the end of speech",
}


def _experiments(specs: list[str]) -> None:
    """Prototypes of code changes, applied in the server process only (``--experiment``)."""
    for spec in specs:
        name, _, value = spec.partition("=")
        if name == "first_piece_chars":
            from ah.nodes.tts_stream import TextSplitter

            n = int(value)
            cut_orig = TextSplitter._cut

            def _cut(self: Any, n: int = n, cut_orig: Any = cut_orig) -> int | None:
                cut = cut_orig(self)
                if cut is None and not getattr(self, "_bench_first_done", False):
                    b = self.buf
                    space = b.rstrip().rfind(" ")
                    if len(b[:space].strip()) >= n:
                        cut = space
                if cut is not None:
                    self._bench_first_done = True
                return cut

            TextSplitter._cut = _cut  # type: ignore[method-assign]
        elif name == "llm_batch_threads":
            import llama_cpp

            n = int(value)
            init_orig = llama_cpp.Llama.__init__

            def init(self: Any, *a: Any, n: int = n, init_orig: Any = init_orig, **kw: Any) -> None:
                kw["n_threads_batch"] = n
                init_orig(self, *a, **kw)

            llama_cpp.Llama.__init__ = init  # type: ignore[method-assign]
        elif name == "vad_confirmed_at":
            import ah.nodes.vad_silero as vs

            feed_orig = vs._Decider.feed

            def feed(self: Any, prob: float, feed_orig: Any = feed_orig) -> Any:
                frame = feed_orig(self, prob)
                if frame is not None and frame.kind == "end":
                    frame.confirmed_at = self.windows * vs.WINDOW / vs.SR
                return frame

            vs._Decider.feed = feed  # type: ignore[method-assign]
        else:
            raise SystemExit(f"unknown experiment {spec!r}; known: {', '.join(EXPERIMENTS)}")


def serve_child(stats_file: str, argv: list[str]) -> None:
    rec = Rec()
    _instrument(rec)
    experiments = os.environ.get("AH_BENCH_EXPERIMENTS", "")
    _experiments([e for e in experiments.split(",") if e])
    from ah.cli.main import main as ah_main

    sys.argv = ["ah", *argv]
    try:
        ah_main()
    finally:
        rec.threads.append((now(), _thread_cpu()))
        Path(stats_file).write_text(
            json.dumps(
                {
                    "events": rec.events,
                    "lag": rec.lag,
                    "threads": rec.threads,
                    "audio_in": rec.audio_in,
                },
                default=str,
            )
        )


# ---------------------------------------------------------------------------------------------------
# The client: the official SDK and a microphone that plays WAV files in real time.


@dataclass
class Turn:
    conversation: int
    index: int
    file: str
    text: str
    speech_end_in_file_s: float
    utt_start: float = 0.0  # first chunk of the utterance handed to the SDK
    speech_end_sent: float | None = None  # the chunk holding the last voiced sample handed to the SDK
    speech_end_capture: float | None = None  # when that sample would have been spoken into a live mic
    first_audio: float | None = None
    last_audio: float | None = None
    audio_s: float = 0.0
    play_end: float = 0.0
    transcripts: list[str] = field(default_factory=list)
    transcript_at: float | None = None
    response: str | None = None
    response_at: float | None = None
    interruptions: int = 0
    done_at: float | None = None
    timed_out: bool = False
    # filled in by the analysis
    latency_s: float | None = None
    latency_from_capture_s: float | None = None
    wer: float | None = None
    server: dict[str, Any] = field(default_factory=dict)


def _read_wav(name: str) -> bytes:
    with wave.open(str(FIXTURES / name)) as w:
        if w.getframerate() != SR or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{name}: expected 16 kHz mono PCM16")
        return w.readframes(w.getnframes())


class RealTimeMic:
    """An SDK ``AudioInterface``: streams the planned utterances at real-time pace, silence between them,
    and plays agent audio into a simulated output (to know when a reply has been heard)."""

    def __init__(
        self,
        turns: list[Turn],
        chunk_ms: int,
        gap_s: float,
        turn_timeout_s: float,
        on_turn: Any,
    ) -> None:
        self.turns = turns
        self.chunk = SR * chunk_ms // 1000
        self.gap_s = gap_s
        self.turn_timeout_s = turn_timeout_s
        self.on_turn = on_turn
        self.lock = threading.Lock()
        self.current: Turn | None = None
        self.stopped = threading.Event()
        self.finished = threading.Event()
        self.error: str | None = None
        self.stray_audio = 0  # audio chunks received when no turn was waiting for one
        self._thread: threading.Thread | None = None

    # -- AudioInterface ----------------------------------------------------------------------------
    def start(self, input_callback: Any) -> None:
        self._send_cb = input_callback
        self._thread = threading.Thread(target=self._feed, name="bench-mic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def output(self, audio: bytes) -> None:
        t = now()
        with self.lock:
            turn = self.current
            if turn is None or turn.speech_end_sent is None:
                self.stray_audio += 1
                return
            if turn.first_audio is None:
                turn.first_audio = t
            turn.last_audio = t
            dur = len(audio) / 2 / SR
            turn.audio_s += dur
            turn.play_end = max(turn.play_end, t) + dur

    def interrupt(self) -> None:
        with self.lock:
            if self.current is not None:
                self.current.interruptions += 1
                self.current.play_end = now()

    # -- SDK callbacks -----------------------------------------------------------------------------
    def on_transcript(self, text: str) -> None:
        with self.lock:
            if self.current is not None:
                self.current.transcripts.append(text)
                self.current.transcript_at = now()

    def on_response(self, text: str) -> None:
        with self.lock:
            if self.current is not None and self.current.response is None:
                self.current.response = text
                self.current.response_at = now()

    # -- the microphone thread ------------------------------------------------------------------------
    def _feed(self) -> None:
        try:
            self._script()
        except Exception as exc:  # reported, not raised in the SDK's thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished.set()

    def _script(self) -> None:
        n = self.chunk
        pending = bytearray()
        t0 = now()
        sent = 0  # samples handed to the SDK
        mark: list[int | None] = [None]  # stream sample index of the current turn's last voiced sample

        def push(pcm: bytes) -> None:
            nonlocal sent
            pending.extend(pcm)
            while len(pending) >= 2 * n and not self.stopped.is_set():
                chunk = bytes(pending[: 2 * n])
                del pending[: 2 * n]
                due = t0 + (sent + n) / SR  # a microphone delivers a chunk once its last sample is captured
                delay = due - now()
                if delay > 0:
                    time.sleep(delay)
                t = now()
                self._send_cb(chunk)
                m = mark[0]
                if m is not None and sent <= m < sent + n:
                    turn = self.current
                    assert turn is not None
                    with self.lock:
                        turn.speech_end_sent = t
                        turn.speech_end_capture = t0 + (m + 1) / SR
                    mark[0] = None
                sent += n

        silence = bytes(2 * n)
        for turn in self.turns:
            if self.stopped.is_set():
                return
            pcm = _read_wav(turn.file)
            with self.lock:
                self.current = turn
            turn.utt_start = now()
            mark[0] = sent + len(pending) // 2 + round(turn.speech_end_in_file_s * SR) - 1
            push(pcm)
            while not self.stopped.is_set():
                push(silence)
                t = now()
                with self.lock:
                    heard = (
                        turn.response_at is not None
                        and turn.first_audio is not None
                        and t >= turn.play_end + 0.1
                    )
                    empty = (
                        turn.response_at is not None
                        and turn.first_audio is None
                        and t - turn.response_at > 2.0
                    )
                if heard or empty:
                    turn.done_at = t
                    break
                if turn.speech_end_sent is not None and t - turn.speech_end_sent > self.turn_timeout_s:
                    turn.timed_out = True
                    break
            self.on_turn(turn)
            gap_end = now() + self.gap_s
            while now() < gap_end and not self.stopped.is_set():
                push(silence)
        with self.lock:
            self.current = None
        push(silence)


def run_conversation(
    base_url: str, agent_id: str, turns: list[Turn], args: argparse.Namespace, on_turn: Any
) -> dict[str, Any]:
    from elevenlabs import ElevenLabs
    from elevenlabs.conversational_ai.conversation import Conversation

    mic = RealTimeMic(turns, args.chunk_ms, args.gap_s, args.turn_timeout_s, on_turn)
    disconnected: list[Any] = []
    conv = Conversation(
        ElevenLabs(api_key="x", base_url=base_url),
        agent_id,
        requires_auth=False,
        audio_interface=mic,
        callback_agent_response=mic.on_response,
        callback_user_transcript=mic.on_transcript,
        callback_disconnect=disconnected.append,
    )
    started = now()
    conv.start_session()
    while not mic.finished.wait(0.2):
        if disconnected:
            break
    ended = now()
    conv.end_session()
    conv.wait_for_session_end()
    return {
        "started": started,
        "ended": ended,
        "error": mic.error,
        "disconnected_early": [str(d) for d in disconnected if d.reason != "user"],
        "stray_audio_chunks": mic.stray_audio,
        "conversation_id": conv._conversation_id,
    }


# ---------------------------------------------------------------------------------------------------
# Measurement helpers.


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_busy_s() -> float:
    """CPU seconds spent busy by the whole machine (all processes, all cores) since boot."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in parts]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Every 0.5 s: the server's RSS, the machine's busy CPU, this process's CPU, the load average."""

    def __init__(self, server_pid: int) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.pid = server_pid
        self.samples: list[dict[str, float]] = []
        self.halt = threading.Event()

    def snap(self) -> dict[str, float]:
        return {
            "t": now(),
            "rss_mb": proc_status_mb(self.pid, "VmRSS"),
            "server_cpu_s": proc_cpu_s(self.pid),
            "client_cpu_s": time.process_time(),
            "machine_busy_s": machine_busy_s(),
            "load1": os.getloadavg()[0],
        }

    def run(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(OSError):
                self.samples.append(self.snap())
            self.halt.wait(0.5)


def pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def dist(values: list[float], scale: float = 1.0, digits: int = 1) -> dict[str, Any]:
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    v = np.asarray(values, dtype=float) * scale
    return {
        "n": len(v),
        "mean": round(float(v.mean()), digits),
        "p50": round(float(np.percentile(v, 50)), digits),
        "p95": round(float(np.percentile(v, 95)), digits),
        "p99": round(float(np.percentile(v, 99)), digits),
        "min": round(float(v.min()), digits),
        "max": round(float(v.max()), digits),
    }


def wer(ref: str, hyp: str) -> float:
    norm = lambda s: re.sub(r"[^a-z0-9' ]+", " ", s.lower()).split()  # noqa: E731
    r, h = norm(ref), norm(hyp)
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)] / max(1, len(r))


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    versions = {}
    for pkg in (
        "elevenlabs",
        "faster-whisper",
        "ctranslate2",
        "llama_cpp_python",
        "piper-tts",
        "onnxruntime",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "git_head": commit,
        "perf_counter_clock": time.get_clock_info("perf_counter").implementation,
    }


# ---------------------------------------------------------------------------------------------------
# Analysis: the server's instants for each turn.


def _first(
    events: list[tuple[float, str, dict[str, Any]]], kind: str, a: float, b: float, **match: Any
) -> Any:
    for t, k, d in events:
        if k == kind and a <= t <= b and all(d.get(x) == y for x, y in match.items()):
            return t, d
    return None


def _last(events: list[tuple[float, str, dict[str, Any]]], kind: str, a: float, b: float) -> Any:
    found = None
    for t, k, d in events:
        if k == kind and a <= t <= b:
            found = (t, d)
    return found


def analyse_turn(turn: Turn, events: list[tuple[float, str, dict[str, Any]]], end: float) -> dict[str, Any]:
    """The chain of server instants between the end of the user's speech and the first agent audio."""
    a = turn.utt_start
    s: dict[str, Any] = {}
    commit = _first(events, "commit", a, end)
    if commit is None or turn.first_audio is None or turn.speech_end_sent is None:
        return {"missing": "commit" if commit is None else "first audio"}
    t_commit, cd = commit
    scope = cd["scope"]
    vad_end = _last(events, "vad_end", a, t_commit)
    vad_ends = sum(1 for t, k, _ in events if k == "vad_end" and a <= t <= t_commit)
    timer = _last(events, "turn_timer_start", a, t_commit)
    timer_end = _first(events, "turn_timer_end", timer[0], end) if timer else None
    commit_call = _last(events, "commit_call", a, t_commit)
    transcript = _last(events, "transcript", a, t_commit)
    delta = _first(events, "llm_delta", t_commit, end, scope=scope)
    gen = _first(events, "llm_generate", t_commit, end, scope=scope)
    thread = _first(events, "llm_thread", t_commit, end)
    reply_ev = _first(events, "ev_llm_reply", t_commit, end, scope=scope)
    speech = _first(events, "tts_first_speech", t_commit, end, scope=scope)
    out = _first(events, "out_first_audio", t_commit, end)
    if None in (vad_end, delta, speech):
        return {"missing": "vad end / llm delta / tts speech"}
    t_vad, t_delta, t_speech = vad_end[0], delta[0], speech[0]
    synth = _first(events, "tts_synth", t_delta, t_speech)
    piece = _first(events, "tts_piece", t_delta, t_speech)
    # STT: the runs started for this utterance, the one whose text made the transcript.
    starts = [(t, d) for t, k, d in events if k == "stt_start" and a <= t <= t_commit]
    dones = {d["task"]: t for t, k, d in events if k == "stt_done" and a <= t <= end}
    cancelled = {d["task"] for t, k, d in events if k == "stt_cancelled" and a <= t <= end}
    used = None
    if transcript is not None:
        done_before = [
            (dones[d["task"]], t, d)
            for t, d in starts
            if d["task"] in dones and dones[d["task"]] <= transcript[0]
        ]
        if done_before:
            used = max(done_before, key=lambda x: x[0])
    runs = [e for e in events if e[1] == "ev_stt_run" and a <= e[0] <= end]
    used_run = None
    if used is not None:
        used_run = min(runs, key=lambda e: abs(e[0] - used[0]), default=None)
    close = _last(events, "stt_close", a, t_commit)
    ms = lambda x: None if x is None else round(x * 1000, 1)  # noqa: E731
    s["vad_detect_ms"] = ms(t_vad - turn.speech_end_sent)
    s["endpoint_wait_ms"] = ms(t_commit - t_vad)
    s["llm_first_token_ms"] = ms(t_delta - t_commit)
    s["tts_first_audio_ms"] = ms(t_speech - t_delta)
    s["engine_tail_ms"] = ms(turn.first_audio - t_speech)
    s["vad_end_events"] = vad_ends
    # endpointing detail
    if timer is not None:
        s["turn_timer_hop_ms"] = ms(timer[0] - t_vad)  # VAD end frame -> the turn policy's timer starts
        s["turn_timer_nominal_ms"] = ms(timer[1]["nominal_s"] - timer[1]["already"])
        if timer_end is not None:
            s["turn_timer_ms"] = ms(timer_end[0] - timer[0])
    s["committed_by"] = commit_call[1]["by"] if commit_call else None
    if transcript is not None:
        s["transcript_after_vad_end_ms"] = ms(transcript[0] - t_vad)
        s["transcript_text"] = transcript[1]["text"]
    if close is not None:
        s["stt_close_after_vad_end_ms"] = ms(close[0] - t_vad)
        s["stt_speculative_used"] = bool(close[1]["had_speculative"])
    s["stt_runs"] = len(starts)
    s["stt_runs_discarded"] = sum(
        1 for _, d in starts if d["task"] in cancelled or (used is not None and d["task"] != used[2]["task"])
    )
    if used is not None:
        t_done, t_start, d = used
        s["stt_speculative"] = d["speculative"]
        s["stt_start_after_vad_end_ms"] = ms(t_start - t_vad)
        s["stt_ms"] = ms(t_done - t_start)
        lo, hi = max(t_start, t_vad), min(t_done, t_commit)
        s["stt_overlap_with_endpoint_wait_ms"] = ms(max(0.0, hi - lo))
        if timer_end is not None:
            s["stt_beyond_timer_ms"] = ms(max(0.0, transcript[0] - timer_end[0]))
        if used_run is not None:
            s["stt_infer_ms"] = ms(used_run[2].get("infer_s"))
            s["stt_pool_ms"] = ms(used_run[2].get("wall_s"))
            s["stt_audio_s"] = used_run[2].get("audio_s")
    # LLM detail
    if gen is not None:
        s["llm_hop_ms"] = ms(gen[0] - t_commit)  # commit -> the LLM node starts the reply
    if thread is not None:
        s["llm_pool_wait_ms"] = ms(thread[0] - (gen[0] if gen else t_commit))
        s["llm_prompt_tokens"] = thread[1]["prompt_tokens"]
        s["llm_tokens"] = thread[1]["tokens"]
        s["llm_gen_total_ms"] = ms(thread[1]["end"] - thread[0])
        if thread[1].get("cpu") is not None and thread[1]["end"] > thread[0]:
            # CPU the generating thread got / wall time: well below 1 means it waited for a core.
            s["llm_cpu_share"] = round(thread[1]["cpu"] / (thread[1]["end"] - thread[0]), 2)
    if reply_ev is not None:
        s["llm_prompt_ms"] = reply_ev[1].get("prompt_ms")  # thread: lock -> first token
        s["llm_first_batch_ms"] = reply_ev[1].get("first_token_ms")
        s["llm_tokens_per_s"] = reply_ev[1].get("tokens_per_s")
    # TTS detail
    if synth is not None:
        s["tts_wait_first_piece_ms"] = ms(synth[0] - t_delta)  # the LLM writing the first sentence/clause
        s["tts_synth_ms"] = ms(synth[1]["end"] - synth[0])
        s["tts_first_piece_chars"] = synth[1]["chars"]
        s["tts_first_piece_audio_s"] = round(synth[1]["audio_s"], 3)
        s["tts_first_piece_text"] = synth[1]["text"]
        s["tts_frame_hop_ms"] = ms(t_speech - synth[1]["end"])
    if piece is not None:
        s["tts_piece_compute_ms"] = ms(piece[1]["end"] - piece[0])
        s["tts_piece_cpu_ms"] = ms(piece[1]["cpu"])
        if piece[1]["end"] > piece[0]:
            s["tts_cpu_share"] = round(piece[1]["cpu"] / (piece[1]["end"] - piece[0]), 2)
    # engine tail detail
    if out is not None:
        s["out_hop_ms"] = ms(out[0] - t_speech)  # SpeechFrame -> protocol_out sends it
        s["out_send_ms"] = ms(out[1]["sent"] - out[0])
        s["socket_to_sdk_ms"] = ms(turn.first_audio - out[1]["sent"])
    return s


def summarise(
    turns: list[Turn],
    warm: list[Turn],
    convs: list[dict[str, Any]],
    stats: dict[str, Any],
    sampler: Sampler,
    window: tuple[float, float],
    server_pid_cpu: tuple[float, float],
) -> dict[str, Any]:
    events = [tuple(e) for e in stats.get("events", [])]
    events.sort(key=lambda e: e[0])
    for i, turn in enumerate(turns):
        end = (
            turns[i + 1].utt_start
            if i + 1 < len(turns) and turns[i + 1].conversation == turn.conversation
            else (turn.done_at or turn.utt_start + 60)
        )
        if turn.first_audio is not None and turn.speech_end_sent is not None:
            turn.latency_s = turn.first_audio - turn.speech_end_sent
            turn.latency_from_capture_s = turn.first_audio - (turn.speech_end_capture or turn.speech_end_sent)
        turn.wer = round(wer(turn.text, " ".join(turn.transcripts)), 3)
        turn.server = analyse_turn(turn, events, end)  # type: ignore[arg-type]
    for w in warm:
        if w.first_audio is not None and w.speech_end_sent is not None:
            w.latency_s = w.first_audio - w.speech_end_sent
        w.wer = round(wer(w.text, " ".join(w.transcripts)), 3)
        w.server = analyse_turn(w, events, w.done_at or w.utt_start + 60)  # type: ignore[arg-type]
    ok = [t for t in turns if t.latency_s is not None and not t.timed_out and not t.interruptions]
    smp = sampler.samples
    for t in turns:
        if t.speech_end_sent is None or t.first_audio is None:
            continue
        # Cores other processes (other agents on this shared machine) used around this turn's wait.
        near = [x for x in smp if t.speech_end_sent - 0.5 <= x["t"] <= t.first_audio + 0.5]
        if len(near) >= 2:
            span = near[-1]["t"] - near[0]["t"]
            busy = (near[-1]["machine_busy_s"] - near[0]["machine_busy_s"]) / span
            own = (
                near[-1]["server_cpu_s"]
                - near[0]["server_cpu_s"]
                + near[-1]["client_cpu_s"]
                - near[0]["client_cpu_s"]
            ) / span
            t.server["other_processes_cores"] = round(max(0.0, busy - own), 2)
    quiet = [t for t in ok if t.server.get("other_processes_cores", 9.0) < QUIET_CORES]
    a, b = window
    lag = [d for t, d in stats.get("lag", []) if a <= t <= b]
    threads = stats.get("threads", [])
    in_win = [(t, c) for t, c in threads if a <= t <= b]
    thread_cpu: dict[str, float] = {}
    if len(in_win) >= 2:
        first, last = in_win[0][1], in_win[-1][1]
        span = in_win[-1][0] - in_win[0][0]
        thread_cpu = {k: round((last.get(k, 0.0) - first.get(k, 0.0)) / span, 3) for k in last}
    samples = [s for s in sampler.samples if a <= s["t"] <= b]
    contention = {}
    if len(samples) >= 2:
        s0, s1 = samples[0], samples[-1]
        span = s1["t"] - s0["t"]
        machine = (s1["machine_busy_s"] - s0["machine_busy_s"]) / span
        server = (s1["server_cpu_s"] - s0["server_cpu_s"]) / span
        client = (s1["client_cpu_s"] - s0["client_cpu_s"]) / span
        contention = {
            "machine_busy_cores": round(machine, 3),
            "server_cores": round(server, 3),
            "client_cores": round(client, 3),
            "other_processes_cores": round(max(0.0, machine - server - client), 3),
            "load1_mean": round(sum(s["load1"] for s in samples) / len(samples), 2),
            "load1_max": round(max(s["load1"] for s in samples), 2),
        }
    keys = [
        "vad_detect_ms",
        "endpoint_wait_ms",
        "llm_first_token_ms",
        "tts_first_audio_ms",
        "engine_tail_ms",
    ]
    detail_keys = [
        "turn_timer_hop_ms",
        "turn_timer_ms",
        "transcript_after_vad_end_ms",
        "stt_close_after_vad_end_ms",
        "stt_start_after_vad_end_ms",
        "stt_ms",
        "stt_infer_ms",
        "stt_pool_ms",
        "stt_overlap_with_endpoint_wait_ms",
        "stt_beyond_timer_ms",
        "llm_hop_ms",
        "llm_pool_wait_ms",
        "llm_prompt_ms",
        "llm_first_batch_ms",
        "llm_prompt_tokens",
        "llm_tokens",
        "llm_tokens_per_s",
        "llm_gen_total_ms",
        "llm_cpu_share",
        "tts_wait_first_piece_ms",
        "tts_synth_ms",
        "tts_piece_compute_ms",
        "tts_piece_cpu_ms",
        "tts_cpu_share",
        "tts_first_piece_chars",
        "tts_first_piece_audio_s",
        "tts_frame_hop_ms",
        "out_hop_ms",
        "out_send_ms",
        "socket_to_sdk_ms",
        "other_processes_cores",
    ]
    breakdown = {k: dist([t.server.get(k) for t in ok], 1, 1) for k in keys}
    detail = {k: dist([t.server.get(k) for t in ok], 1, 1) for k in detail_keys}
    by = [t.server.get("committed_by") for t in ok]
    spec_used = [t.server.get("stt_speculative_used") for t in ok]
    per_conv_cpu = [c.get("server_cpu_s") for c in convs]
    all_text = [t for t in turns if t.transcripts or t.latency_s is not None]
    ref_words = sum(len(t.text.split()) for t in all_text)
    errors = sum((t.wer or 0) * len(t.text.split()) for t in all_text)
    return {
        "turns": {
            "total": len(turns),
            "measured": len(ok),
            "timed_out": sum(t.timed_out for t in turns),
            "interrupted": sum(1 for t in turns if t.interruptions),
            "no_audio": sum(1 for t in turns if t.first_audio is None),
        },
        "response_latency_ms": dist([t.latency_s for t in ok], 1000, 1),
        "response_latency_from_capture_ms": dist([t.latency_from_capture_s for t in ok], 1000, 1),
        "response_latency_quiet_turns_ms": dist([t.latency_s for t in quiet], 1000, 1),
        "breakdown_quiet_turns_ms": {k: dist([t.server.get(k) for t in quiet], 1, 1) for k in keys},
        "breakdown_ms": breakdown,
        "breakdown_mean_sum_ms": round(sum(breakdown[k].get("mean", 0.0) for k in keys), 1),
        "detail_ms": detail,
        "committed_by": {k: by.count(k) for k in set(by)},
        "stt_speculative_used": {str(k): spec_used.count(k) for k in set(spec_used)},
        "transcript_wer": {
            "corpus": round(errors / max(1, ref_words), 4),
            "per_turn": dist([t.wer for t in all_text], 1, 3),
            "exact": sum(1 for t in all_text if t.wer == 0),
        },
        "reply_audio_s": dist([t.audio_s for t in ok], 1, 2),
        "server": {
            "rss_peak_mb": round(max((s["rss_mb"] for s in sampler.samples), default=0.0), 1),
            "rss_hwm_mb": server_pid_cpu[1],
            "cpu_s_per_session": dist(per_conv_cpu, 1, 2),
            "cpu_s_per_turn": round(sum(per_conv_cpu) / max(1, len(turns)), 3),
            "cores_used": round(server_pid_cpu[0] / max(1e-9, b - a), 3),
            "event_loop_lag_ms": dist(lag, 1000, 2),
            "thread_cores": thread_cpu,
        },
        "machine_during_run": contention,
    }


# ---------------------------------------------------------------------------------------------------
# Output.


def text_histogram(values_ms: list[float], width: int = 40, bin_ms: int = 100, cap_ms: int = 2500) -> str:
    if not values_ms:
        return "(no data)"
    over = sorted(v for v in values_ms if v >= cap_ms)
    values_ms = [v for v in values_ms if v < cap_ms]
    if not values_ms:
        return f"  ≥{cap_ms} ms: {len(over)} ({', '.join(f'{v:.0f}' for v in over)})"
    lo = int(min(values_ms) // bin_ms) * bin_ms
    hi = int(max(values_ms) // bin_ms) * bin_ms
    bins = list(range(lo, hi + bin_ms, bin_ms))
    counts = [sum(1 for v in values_ms if b <= v < b + bin_ms) for b in bins]
    top = max(counts)
    lines = []
    for b, c in zip(bins, counts, strict=True):
        bar = "█" * round(c / top * width) if c else ""
        lines.append(f"  {b:5d}–{b + bin_ms:<5d} ms │{bar} {c}")
    if over:
        lines.append(f"  ≥{cap_ms:<10d} ms │ {len(over)}: {', '.join(f'{v:.0f}' for v in over)}")
    return "\n".join(lines)


def plot(turns: list[Turn], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [t for t in turns if t.latency_s is not None and "vad_detect_ms" in t.server]
    if not ok:
        return False
    keys = ["vad_detect_ms", "endpoint_wait_ms", "llm_first_token_ms", "tts_first_audio_ms", "engine_tail_ms"]
    labels = ["VAD detect", "endpoint wait", "LLM first token", "TTS first audio", "engine tail"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    bottom = [0.0] * len(ok)
    for k, lab in zip(keys, labels, strict=True):
        vals = [t.server.get(k, 0.0) for t in ok]
        ax1.bar(range(len(ok)), vals, bottom=bottom, label=lab)
        bottom = [x + y for x, y in zip(bottom, vals, strict=True)]
    ax1.scatter(
        range(len(ok)), [t.latency_s * 1000 for t in ok], color="black", marker="_", s=120, label="latency"
    )
    ax1.axhline(1000, color="red", lw=0.8, ls="--")
    ax1.set_xlabel("turn")
    ax1.set_ylabel("ms from end of user speech")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title("per-turn breakdown")
    ax2.hist([t.latency_s * 1000 for t in ok], bins=15)
    ax2.axvline(1000, color="red", lw=0.8, ls="--")
    ax2.set_xlabel("response latency, ms")
    ax2.set_title("distribution")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def print_report(console: Any, result: dict[str, Any], turns: list[Turn]) -> None:
    from rich.table import Table

    r = result
    lat = r["response_latency_ms"]
    t = Table(title="response latency: end of user speech (as sent) -> first agent audio at the client")
    for c in ("figure", "n", "mean", "p50", "p95", "p99", "max"):
        t.add_column(c, justify="right" if c != "figure" else "left")

    def row(label: str, d: dict[str, Any], fmt: str = "{:.0f}") -> None:
        if not d.get("n"):
            t.add_row(label, "0", "", "", "", "", "")
            return
        t.add_row(label, str(d["n"]), *(fmt.format(d[k]) for k in ("mean", "p50", "p95", "p99", "max")))

    row("[bold]response latency ms[/bold]", lat)
    row("  from capture (live mic) ms", r["response_latency_from_capture_ms"])
    row(f"  quiet turns (others < {QUIET_CORES} cores) ms", r["response_latency_quiet_turns_ms"])
    names = {
        "vad_detect_ms": "  VAD detect (end of speech → VAD end)",
        "endpoint_wait_ms": "  endpoint wait (VAD end → commit)",
        "llm_first_token_ms": "  LLM first token (commit → 1st delta)",
        "tts_first_audio_ms": "  TTS first audio (1st delta → SpeechFrame)",
        "engine_tail_ms": "  engine tail (SpeechFrame → client)",
    }
    for k, label in names.items():
        row(label, r["breakdown_ms"][k])
    d = r["detail_ms"]
    t.add_section()
    for k, label, *fmt in [
        ("stt_ms", "STT: speculative start → transcript"),
        ("stt_infer_ms", "  Whisper compute"),
        ("stt_overlap_with_endpoint_wait_ms", "  overlapped with endpoint wait"),
        ("stt_beyond_timer_ms", "  beyond the silence timer"),
        ("turn_timer_ms", "turn policy silence timer"),
        ("turn_timer_hop_ms", "  VAD end → timer start (hop)"),
        ("llm_pool_wait_ms", "LLM: pool wait"),
        ("llm_prompt_ms", "  prompt eval → 1st token (thread)"),
        ("llm_prompt_tokens", "  prompt tokens"),
        ("llm_tokens_per_s", "  tokens/s"),
        ("llm_cpu_share", "  CPU share of its thread", "{:.2f}"),
        ("tts_wait_first_piece_ms", "TTS: waiting for 1st sentence/clause"),
        ("tts_synth_ms", "  Piper synth of it"),
        ("tts_first_piece_chars", "  its length, chars"),
        ("tts_cpu_share", "  CPU share of its thread", "{:.2f}"),
        ("out_hop_ms", "engine: SpeechFrame → protocol send"),
        ("out_send_ms", "  protocol send"),
        ("socket_to_sdk_ms", "  socket → SDK output()"),
        ("other_processes_cores", "other processes' cores around the turn", "{:.2f}"),
    ]:
        row(label, d[k], *fmt)
    console.print(t)
    srv = r["server"]
    m = r["machine_during_run"]
    console.print(
        f"turns {r['turns']['measured']}/{r['turns']['total']} measured "
        f"(timed out {r['turns']['timed_out']}, interrupted {r['turns']['interrupted']}); "
        f"committed by {r['committed_by']}; speculative STT used {r['stt_speculative_used']}; "
        f"WER {r['transcript_wer']['corpus']:.3f} ({r['transcript_wer']['exact']} exact)"
    )
    console.print(
        f"server: RSS peak {srv['rss_peak_mb']} MB (VmHWM {srv['rss_hwm_mb']} MB), CPU per session "
        f"{srv['cpu_s_per_session'].get('mean')} s ({srv['cpu_s_per_turn']} s per turn), "
        f"{srv['cores_used']} cores; loop lag p50/p99/max {srv['event_loop_lag_ms'].get('p50')}/"
        f"{srv['event_loop_lag_ms'].get('p99')}/{srv['event_loop_lag_ms'].get('max')} ms; "
        f"thread cores {srv['thread_cores']}"
    )
    console.print(
        f"machine: busy {m.get('machine_busy_cores')} cores (server {m.get('server_cores')}, client "
        f"{m.get('client_cores')}, other processes {m.get('other_processes_cores')}); load average "
        f"mean {m.get('load1_mean')} max {m.get('load1_max')}"
    )
    vals = [x.latency_s * 1000 for x in turns if x.latency_s is not None]
    console.print("response latency histogram (100 ms bins):")
    console.print(text_histogram(vals), markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------------
# The run.


def plan_turns(n: int, per_conv: int) -> list[list[Turn]]:
    meta = json.loads((FIXTURES / "transcripts.json").read_text())
    convs: list[list[Turn]] = []
    k = 0
    c = 0
    while k < n:
        conv = []
        for i in range(min(per_conv, n - k)):
            name = UTTERANCES[(c * 3 + i) % len(UTTERANCES)]  # each conversation starts elsewhere
            conv.append(Turn(c, i, name, meta[name]["text"], meta[name]["speech"][-1][1]))
            k += 1
        convs.append(conv)
        c += 1
    return convs


def start_server(
    args: argparse.Namespace, tmp: Path
) -> tuple[subprocess.Popen[bytes], int, Path, Path, float]:
    stats_file, log_file = tmp / "server.json", tmp / "server.log"
    cmd = [
        sys.executable,
        SELF,
        "--_serve",
        str(stats_file),
        "run",
        str(args.graph),
        "--port",
        "0",
        "--drain-timeout",
        "3",
    ]
    t0 = now()
    log_f = log_file.open("wb")
    env = dict(os.environ)
    env.update(dict(kv.split("=", 1) for kv in args.server_env))
    env["AH_BENCH_EXPERIMENTS"] = ",".join(args.experiment)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_f, cwd=ROOT, env=env)
    assert proc.stdout is not None
    port = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        m = re.search(r"ah is serving .* at http://[\w.]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        raise SystemExit(f"server did not start; see {log_file}:\n{log_file.read_text()[-3000:]}")
    # Drain the rest of the banner in the background so the pipe never fills.
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()  # type: ignore[union-attr]
    return proc, port, stats_file, log_file, now() - t0


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--_serve":
        serve_child(sys.argv[2], sys.argv[3:])
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=24, help="measured turns in all (default 24)")
    parser.add_argument("--per-conversation", type=int, default=8, help="turns per conversation")
    parser.add_argument("--chunk-ms", type=int, default=250, help="user audio chunk (SDK default 250)")
    parser.add_argument("--gap-s", type=float, default=0.3, help="silence after a reply has played out")
    parser.add_argument("--turn-timeout-s", type=float, default=25.0, help="give up on a reply after this")
    parser.add_argument("--graph", type=Path, default=DEFAULT_GRAPH, help="graph to serve")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="K=V",
        help="environment for the server (repeatable)",
    )
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        metavar="NAME[=V]",
        help="prototype a code change in the server process (repeatable): "
        + "; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()),
    )
    args = parser.parse_args()
    console = Console()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    t_run = now()
    tmp = Path(tempfile.mkdtemp(prefix="ah_local_latency_"))
    proc, port, stats_file, log_file, startup_s = start_server(args, tmp)
    base_url = f"http://127.0.0.1:{port}"
    from ah.runtime.graph_loader import load_graph

    agent_id = load_graph(args.graph).name  # the agent id is the graph's name
    console.print(
        f"server pid {proc.pid} on port {port}, ready in {startup_s:.1f} s (models preloaded); "
        f"graph {args.graph}; chunk {args.chunk_ms} ms; load average {os.getloadavg()[0]:.2f}"
    )
    sampler = Sampler(proc.pid)
    sampler.start()
    plan = plan_turns(args.turns, args.per_conversation)
    convs: list[dict[str, Any]] = []
    turns: list[Turn] = []
    warm: list[Turn] = []
    window = (0.0, 0.0)
    cpu_in_window = 0.0
    try:
        # Warm-up: Whisper and the LLM load in the first session's set-up; first runs are slow.
        meta = json.loads((FIXTURES / "transcripts.json").read_text())
        warm = [Turn(-1, 0, "user_01.wav", meta["user_01.wav"]["text"], meta["user_01.wav"]["speech"][-1][1])]
        console.print("warm-up conversation (1 turn, not reported)…")
        wres = run_conversation(base_url, agent_id, warm, args, lambda t: None)
        if wres["error"] or warm[0].first_audio is None:
            raise SystemExit(f"warm-up failed: {wres}; server log {log_file}")
        cold = warm[0].first_audio - (warm[0].speech_end_sent or 0.0)
        console.print(f"  cold first turn: {cold * 1000:.0f} ms, said {warm[0].response!r}")
        time.sleep(0.5)
        w0, c0 = now(), proc_cpu_s(proc.pid)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("turns", total=args.turns)

            def on_turn(t: Turn) -> None:
                lat = (
                    "—"
                    if t.first_audio is None or t.speech_end_sent is None
                    else (f"{(t.first_audio - t.speech_end_sent) * 1000:.0f} ms")
                )
                progress.console.print(
                    f"  conv {t.conversation} turn {t.index} {t.file}: latency {lat}; heard "
                    f"{' '.join(t.transcripts)!r}; reply {t.audio_s:.1f} s"
                    + (" TIMED OUT" if t.timed_out else "")
                    + (f" interrupted×{t.interruptions}" if t.interruptions else ""),
                    markup=False,
                    highlight=False,
                )
                progress.advance(task)

            for conv_turns in plan:
                cpu0 = proc_cpu_s(proc.pid)
                res = run_conversation(base_url, agent_id, conv_turns, args, on_turn)
                time.sleep(0.3)  # the server ends the session
                res["server_cpu_s"] = round(proc_cpu_s(proc.pid) - cpu0, 3)
                res["turns"] = len(conv_turns)
                convs.append(res)
                turns.extend(conv_turns)
                if res["error"] or res["disconnected_early"]:
                    console.print(f"[yellow]conversation problem:[/yellow] {res}")
        window = (w0, now())
        cpu_in_window = proc_cpu_s(proc.pid) - c0
        hwm = proc_status_mb(proc.pid, "VmHWM")
    finally:
        sampler.halt.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    result = summarise(turns, warm, convs, stats, sampler, window, (cpu_in_window, round(hwm, 1)))
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    log_tail = log_file.read_text()[-3000:] if log_file.exists() else ""
    problems = [
        line
        for line in log_tail.splitlines()
        if any(w in line for w in ("Traceback", "ERROR", "WARNING", "failed"))
    ]
    warm_doc = asdict(warm[0]) if warm else None
    doc = {
        "benchmark": "local_latency",
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "started_at": started,
        "duration_s": round(now() - t_run, 1),
        "config": {
            "graph": str(args.graph),
            "turns": args.turns,
            "per_conversation": args.per_conversation,
            "conversations": len(plan),
            "chunk_ms": args.chunk_ms,
            "gap_after_reply_s": args.gap_s,
            "server_startup_s": round(startup_s, 2),
            "server_env": args.server_env,
            "experiments": args.experiment,
            "client": "elevenlabs SDK Conversation (sync), requires_auth=False, custom AudioInterface",
        },
        "machine": machine,
        "definitions": {
            "response_latency_ms": "client: the chunk holding the last voiced sample (transcripts.json speech "
            "end) handed to the SDK -> the SDK's first output() call of the reply (ARCHITECTURE.md §5)",
            "response_latency_from_capture_ms": "as above, but from when that sample would have been spoken "
            "into a live microphone (adds the chunking delay, up to one chunk)",
            "vad_detect_ms": "speech end (client) -> the VAD's end frame leaves vad.silero",
            "endpoint_wait_ms": "VAD end frame -> the turn policy's UserTurnFrame (turn committed)",
            "llm_first_token_ms": "committed -> the LLM's first text delta (pool wait, prompt eval, 2 tokens "
            "for the first word)",
            "tts_first_audio_ms": "first text delta -> first SpeechFrame out of the TTS (waiting for the first "
            "sentence/clause + Piper synthesis of it)",
            "engine_tail_ms": "first SpeechFrame -> first audio at the client (channel hop, pacing, "
            "protocol send, socket, SDK decode)",
            "stt_ms": "the transcription whose text was used: its start (speculative: at the VAD end) -> done",
            "stt_overlap_with_endpoint_wait_ms": "part of stt_ms inside [VAD end, commit]",
            "stt_beyond_timer_ms": "transcript arrival after the turn policy's silence timer ran out (what STT "
            "added to the endpoint wait)",
            "server.cpu_s_per_session": "server process utime+stime during one conversation (all its turns)",
            "server.thread_cores": "CPU cores used per thread group in the server during the measured run",
            "machine_during_run": "/proc/stat busy cores of the whole machine (shared with other agents)",
        },
        "cold_first_turn": {
            "latency_ms": round((warm[0].first_audio - warm[0].speech_end_sent) * 1000, 1)
            if warm and warm[0].first_audio and warm[0].speech_end_sent
            else None,
            "turn": warm_doc,
        },
        **result,
        "conversations": convs,
        "per_turn": [asdict(t) for t in turns],
        "server_log_problems": problems[:20],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print_report(console, result, turns)
    if not args.no_plot:
        png = args.out.with_suffix(".png")
        lat = result["response_latency_ms"]
        if plot(
            turns,
            png,
            f"ah local voice agent, {args.chunk_ms} ms chunks: mean {lat.get('mean')} ms, "
            f"p95 {lat.get('p95')} ms (load avg {machine['loadavg_start'][0]}→{machine['loadavg_end'][0]})",
        ):
            console.print(f"plot: {png}")
    for p in problems[:5]:
        console.print(f"[yellow]server log:[/yellow] {p}", markup=True)
    console.print(f"wrote {args.out} in {doc['duration_s']} s")


if __name__ == "__main__":
    main()
