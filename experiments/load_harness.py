"""The client harness shared by the load benchmarks (``protocol_load.py``, ``capacity.py``, ``soak.py``).

Why one module: the three measure one ``ah`` server process under many real-time voice sessions, and
their figures are only comparable if they drive it the same way: the same 40 ms ``user_audio_chunk``
stream paced to the wall clock, the same ``pong`` for every ``ping``, the same event-loop lag probe, the
same ``/proc`` CPU and RSS readings, the same distributions and the same machine record. Each had its
own copy (or imported another benchmark's); a fix made in one copy was missed in the others.

What is here:

* the server process's plumbing: ``build_server`` + ``serve`` (what ``ah run GRAPH --port 0`` builds,
  announcing its port on stdout as ``PORT <port> <agent_id>``) on the server side, ``spawn_server`` +
  ``stop_server`` (SIGTERM, so the server drains and writes its figures) on the benchmark's side;
* the audio a client says (``tone_chunks``, ``speech_chunks``), the protocol messages it sends,
  ``Pacer`` (real-time pacing) and ``run_session`` (one scripted voice conversation, as
  ``protocol_load`` and ``capacity`` run it);
* ``LagProbe`` and ``lag_attribution`` (event-loop lag and whether the loop or the machine caused it);
* ``proc_cpu_s``, ``proc_rss_mb``, ``watch_peak_rss``; ``dist`` and ``window``; ``machine_info``.

What each benchmark measures, and how it reports it, stays in its own file. Import it as the
benchmarks do: ``sys.path.insert(0, ROOT)`` then ``from experiments.load_harness import ...``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from ah.server.app import AgentServer

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
CHUNK_S = 0.040
CHUNK_BYTES = int(SR * CHUNK_S) * 2
BURST_S = 1.0  # the tone a turn says
GAP_S = 0.5  # silence after a reply has been heard (run_session)
LAG_INTERVAL_S = 0.010
now = time.perf_counter  # CLOCK_MONOTONIC on Linux: the same clock in every process
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------
# The server process.


def build_server(graph_file: str, **config: Any) -> tuple[AgentServer, str]:
    """The server ``ah run GRAPH --port 0`` builds for one graph (``config``: more ``ServerConfig``
    fields), and the graph's name (its agent id). Warnings go to stderr, the benchmark's server log."""
    import logging

    from ah.runtime.graph_loader import load_graph
    from ah.server.access import AccessPolicy
    from ah.server.app import AgentServer, ServerConfig

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    graph = load_graph(Path(graph_file))
    server_config = ServerConfig(port=0, drain_timeout_s=2.0, **config)
    telemetry = None
    if metrics_dir := os.environ.get("AH_BENCH_TURN_METRICS"):  # the server's own per-turn figures
        from ah.telemetry.config import MetricsConfig, TelemetryConfig
        from ah.telemetry.hub import Telemetry

        telemetry = Telemetry(TelemetryConfig(metrics=MetricsConfig(jsonl_dir=Path(metrics_dir))))
    server = AgentServer({graph.name: graph}, server_config, AccessPolicy(), telemetry=telemetry)
    return server, graph.name


async def serve(
    server: AgentServer,
    agent_id: str,
    *probes: Callable[[], Coroutine[Any, Any, None]],
    preload: bool = True,
) -> None:
    """Start the server (preloading models first, as ``ah run`` does, unless ``preload`` is off), run the
    measuring ``probes`` beside it, tell the parent the port, and serve until SIGTERM has drained it."""
    if preload:
        await server.preload()
    await server.start()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(probe()) for probe in probes]
    print(f"PORT {server.port} {agent_id}", flush=True)
    try:
        await server.serve_forever()
    finally:
        for task in tasks:
            task.cancel()


async def spawn_server(
    argv: list[str], log: Path, *, start_timeout_s: float, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, int, str]:
    """Run ``python *argv`` (a benchmark re-run as its server), its stderr to ``log``; wait for its
    ``PORT`` line. Returns the process, the port and the agent id."""
    with log.open("wb") as log_f:
        server = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=log_f, cwd=ROOT, env=env
        )
    assert server.stdout is not None
    line = (await asyncio.wait_for(server.stdout.readline(), start_timeout_s)).decode().split()
    if not line or line[0] != "PORT":
        tail = log.read_text()[-2000:]  # noqa: ASYNC240 - the benchmark is ending: nothing else runs
        raise SystemExit(f"server did not start; see {log}:\n{tail}")
    return server, int(line[1]), line[2]


async def terminate(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM, so the process can write what it measured; killed if it is not gone in ``grace_s``."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def stop_server(server: asyncio.subprocess.Process) -> None:
    """The server drains its sessions and writes its figures (killed if not gone in 30 s)."""
    await terminate(server, 30)


def conversation_url(port: int, agent_id: str) -> str:
    return f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id={agent_id}"


# ---------------------------------------------------------------------------------------------------
# What a client says.


def tone_chunks() -> list[bytes]:
    """1.0 s of loud 440 Hz tone in 40 ms chunks: the energy VAD of the scripted graph hears it."""
    t = np.arange(int(SR * BURST_S)) / SR
    burst = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    return [burst[i : i + CHUNK_BYTES] for i in range(0, len(burst), CHUNK_BYTES)]


def speech_chunks(wav: Path) -> list[bytes]:
    """The voiced part of ``wav`` (per tests/fixtures/audio/transcripts.json) in 40 ms chunks, the last
    padded with silence: Silero VAD (graphs/cloud.yaml) hears speech, not a sine."""
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2), wav
        pcm = w.readframes(w.getnframes())
    spans = json.loads((wav.parent / "transcripts.json").read_text()).get(wav.name, {}).get("speech")
    if spans:
        pcm = pcm[int(spans[0][0] * SR) * 2 : int(spans[-1][1] * SR) * 2]
    return [pcm[i : i + CHUNK_BYTES].ljust(CHUNK_BYTES, b"\0") for i in range(0, len(pcm), CHUNK_BYTES)]


def audio_message(pcm: bytes) -> str:
    return json.dumps({"user_audio_chunk": base64.b64encode(pcm).decode("ascii")})


def init_message(user_name: str) -> str:
    return json.dumps(
        {"type": "conversation_initiation_client_data", "dynamic_variables": {"user_name": user_name}}
    )


def pong_message(ping: dict[str, Any]) -> str:
    return json.dumps({"type": "pong", "event_id": ping["ping_event"]["event_id"]})


class Pacer:
    """Sends a stream in real time: the k-th message goes at start + k * 40 ms, however long the
    sends before it took, so that a late send is made up for and the stream never runs ahead."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.t0 = now()
        self.k = 0

    async def send(self, text: str) -> float:
        """Wait for this message's slot, send it; returns when it was sent."""
        self.k += 1
        await asyncio.sleep(max(0.0, self.t0 + self.k * CHUNK_S - now()))
        await self.ws.send(text)
        return now()


# ---------------------------------------------------------------------------------------------------
# One scripted voice conversation.


@dataclass
class Turn:
    index: int
    burst_end: float = 0.0  # when the last voiced chunk was sent
    transcript: str | None = None
    transcript_at: float | None = None
    response: str | None = None
    response_at: float | None = None
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    audio_s: float = 0.0
    done_at: float | None = None
    timed_out: bool = False

    @property
    def latency_s(self) -> float | None:
        return None if self.first_audio_at is None else self.first_audio_at - self.burst_end


@dataclass
class SessionRun:
    name: str
    turns: list[Turn] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    metadata_first: bool = False
    failure: str = ""
    closed_at: float = 0.0


async def run_session(
    url: str,
    name: str,
    turns: int,
    start_at: float,
    on_turn: Any,
    burst: list[bytes] | None = None,
) -> SessionRun:
    """At ``start_at``, one conversation of ``turns`` turns: each says ``burst`` (default: the tone),
    then silence until the reply has been heard (or 20 s have passed), then ``GAP_S`` more silence;
    ``on_turn()`` after each. A failed session is a result (``failure``), not an exception."""
    import websockets

    run = SessionRun(name)
    burst_msgs = [audio_message(c) for c in (tone_chunks() if burst is None else burst)]
    silence_msg = audio_message(bytes(CHUNK_BYTES))
    await asyncio.sleep(max(0.0, start_at - now()))
    sent = run.sent
    try:
        async with websockets.connect(url, max_size=1 << 24) as ws:
            await ws.send(init_message(name))
            sent["init"] = 1
            current: list[Turn | None] = [None]

            async def receive() -> None:
                async for raw in ws:
                    t = now()
                    msg = json.loads(raw)
                    kind = msg["type"]
                    if not run.received:
                        run.metadata_first = kind == "conversation_initiation_metadata"
                    run.received[kind] = run.received.get(kind, 0) + 1
                    turn = current[0]
                    if kind == "ping":
                        await ws.send(pong_message(msg))
                        sent["pong"] = sent.get("pong", 0) + 1
                    elif kind == "error":
                        run.errors.append(msg["error_event"])
                    elif turn is None:
                        continue
                    elif kind == "user_transcript" and turn.transcript is None:
                        turn.transcript = msg["user_transcription_event"]["user_transcript"]
                        turn.transcript_at = t
                    elif kind == "agent_response" and turn.response is None:
                        turn.response = msg["agent_response_event"]["agent_response"]
                        turn.response_at = t
                    elif kind == "audio":
                        if turn.first_audio_at is None:
                            turn.first_audio_at = t
                        turn.last_audio_at = t
                        turn.audio_s += len(msg["audio_event"]["audio_base_64"]) * 3 / 4 / 2 / SR

            receiver = asyncio.get_running_loop().create_task(receive())
            try:
                pacer = Pacer(ws)

                async def send_chunk(text: str) -> float:
                    when = await pacer.send(text)
                    sent["audio"] = sent.get("audio", 0) + 1
                    return when

                for i in range(turns):
                    turn = Turn(i)
                    run.turns.append(turn)
                    current[0] = turn
                    for text in burst_msgs:
                        turn.burst_end = await send_chunk(text)
                    deadline = turn.burst_end + 20.0
                    while True:  # silence until the reply has been heard (or the turn times out)
                        t = await send_chunk(silence_msg)
                        if receiver.done():
                            raise RuntimeError("connection closed by the server")
                        if (
                            turn.response_at is not None
                            and turn.first_audio_at is not None
                            and turn.last_audio_at is not None
                            and t >= turn.first_audio_at + turn.audio_s
                            and t - turn.last_audio_at >= 0.4
                        ):
                            turn.done_at = t
                            break
                        if t > deadline:
                            turn.timed_out = True
                            break
                    on_turn()
                    gap_end = now() + GAP_S
                    while now() < gap_end:
                        await send_chunk(silence_msg)
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
    except Exception as exc:  # a failed session is a result, not a crash of the benchmark
        run.failure = f"{type(exc).__name__}: {exc}"
    run.closed_at = now()
    return run


def turns_progress(console: Console) -> Progress:
    """The progress bar of a benchmark that counts turns, one task a phase or level."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("turns"),
        TimeElapsedColumn(),
        console=console,
    )


# ---------------------------------------------------------------------------------------------------
# Event-loop lag.


class LagProbe:
    """Sleeps 10 ms in a loop and records (when, how late, CPU this thread used meanwhile).

    The CPU figure tells the two causes of lag apart: the loop busy with its own callbacks (CPU
    about equal to the elapsed time) or the process not running at all (preempted on a shared
    machine, or blocked in a system call: CPU well below the elapsed time)."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.lag: list[float] = []
        self.cpu: list[float] = []
        self.asleep_since = float("inf")  # read by StallSampler from its own thread; inf: not running yet

    async def run(self) -> None:
        while True:
            t0, c0 = now(), time.thread_time()
            self.asleep_since = t0
            await asyncio.sleep(LAG_INTERVAL_S)
            t1 = now()
            self.t.append(t1)
            self.lag.append(max(0.0, t1 - t0 - LAG_INTERVAL_S))
            self.cpu.append(time.thread_time() - c0)

    def series(self) -> dict[str, list[float]]:
        """As written to the server's stats file: t (when), d (lag), c (CPU)."""
        return {"t": self.t, "d": self.lag, "c": self.cpu}


class StallSampler:
    """Where the event loop is when it stalls: a thread that, while the lag probe is overdue by
    more than ``threshold_s``, samples the loop thread's Python stack every ``every_s``; and every
    garbage collection of generation 1 or 2 with its pause. Both say what a lag spike was spent on,
    which the lag figures alone cannot, and a sampling profiler does not single out."""

    def __init__(self, probe: LagProbe, threshold_s: float = 0.015, every_s: float = 0.002) -> None:
        import threading

        self.probe, self.threshold_s, self.every_s = probe, threshold_s, every_s
        self.stacks: dict[str, int] = {}
        self.gc_pauses: list[tuple[float, int, float]] = []  # (when, generation, seconds)
        self._gc_t0 = 0.0
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="stall-sampler", daemon=True)

    def start(self) -> None:
        import gc

        gc.callbacks.append(self._on_gc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 0:
            return
        if phase == "start":
            self._gc_t0 = now()
        else:
            self.gc_pauses.append((self._gc_t0, info["generation"], now() - self._gc_t0))

    def _sample(self) -> None:
        import traceback

        late = LAG_INTERVAL_S + self.threshold_s
        while not self._stop.wait(self.every_s):
            if now() - self.probe.asleep_since <= late:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:
                continue
            frames = traceback.extract_stack(frame)[-14:]
            key = " < ".join(f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed(frames))
            self.stacks[key] = self.stacks.get(key, 0) + 1

    def report(self, top: int = 25) -> dict[str, Any]:
        by_gen: dict[str, list[float]] = {}
        for _, gen, d in self.gc_pauses:
            by_gen.setdefault(f"gen{gen}", []).append(d)
        return {
            "sample_every_ms": self.every_s * 1000,
            "threshold_ms": self.threshold_s * 1000,
            "samples": sum(self.stacks.values()),
            "top_stacks": sorted(self.stacks.items(), key=lambda kv: -kv[1])[:top],
            "gc_pause_ms": {g: dist(v, 1000, 2) for g, v in sorted(by_gen.items())},
            "gc_pauses": [(round(t, 3), g, round(d * 1000, 2)) for t, g, d in self.gc_pauses],
        }


def lag_attribution(
    lag: dict[str, list[float]], a: float, b: float, threshold_s: float = 0.005
) -> dict[str, Any]:
    """Split lag into the server's own work and the machine's: a tick can be late by no more than
    the CPU the loop used during it (min(lag, cpu) bounds the lag the server caused itself); a
    spike with CPU under half the lag is mostly the process not running (preempted on a shared
    machine)."""
    ticks = [(d, c) for t, d, c in zip(lag["t"], lag["d"], lag["c"], strict=True) if a <= t <= b]
    spikes = [(d, c) for d, c in ticks if d > threshold_s]
    return {
        "own_work_bound_ms": dist([min(d, c) for d, c in ticks], 1000, 3),
        "spike_threshold_ms": threshold_s * 1000,
        "spikes": len(spikes),
        "spikes_mostly_not_running": sum(1 for d, c in spikes if c < 0.5 * d),
    }


# ---------------------------------------------------------------------------------------------------
# Statistics and /proc readings.


def dist(values: list[float], scale: float = 1.0, digits: int = 2) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    v = np.asarray(values) * scale
    return {
        "n": len(v),
        "mean": round(float(v.mean()), digits),
        "p50": round(float(np.percentile(v, 50)), digits),
        "p95": round(float(np.percentile(v, 95)), digits),
        "p99": round(float(np.percentile(v, 99)), digits),
        "max": round(float(v.max()), digits),
    }


def window(series: dict[str, list[float]], a: float, b: float, value: str = "d") -> list[float]:
    """The ``value`` samples of a time series ({"t": [...], value: [...]}) taken from ``a`` to ``b``."""
    return [d for t, d in zip(series["t"], series[value], strict=True) if a <= t <= b]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _HasPeakRss(Protocol):
    rss_peak_mb: float


async def watch_peak_rss(pid: int, into: _HasPeakRss) -> None:
    """Every 0.25 s, raise ``into.rss_peak_mb`` to the process's RSS where it is higher; until cancelled."""
    while True:
        await asyncio.sleep(0.25)
        into.rss_peak_mb = max(into.rss_peak_mb, proc_rss_mb(pid))


# ---------------------------------------------------------------------------------------------------
# The machine.


def run_clients(main: Coroutine[Any, Any, T]) -> T:
    """Run the clients' side on uvloop where it exists (as ``ah run`` serves), else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def command_line() -> str:
    """How this benchmark was started, to be pasted again."""
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def graph_label(graph: Path) -> str:
    """The graph file as the results name it: relative to the checkout where it is inside it, else absolute."""
    resolved = graph.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def parse_reference() -> dict[str, float]:
    """How long parsing one 40 ms user_audio_chunk takes here, hot (back to back) and cold (after a
    40 ms sleep, as a real-time stream delivers them): a yardstick for the server's own figures."""
    from ah.nodes.elevenlabs.messages import parse_client_message

    raw = audio_message(bytes(CHUNK_BYTES))
    out = {}
    for label, gap, n in (("hot_p50", 0.0, 2000), ("after_40ms_sleep_p50", CHUNK_S, 40)):
        ds = []
        for _ in range(n):
            if gap:
                time.sleep(gap)
            c0 = time.thread_time()
            parse_client_message(raw)
            ds.append(time.thread_time() - c0)
        out[label] = round(float(np.median(ds)) * 1e6, 2)
    return out


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
    for pkg in ("websockets", "numpy", "pydantic"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "perf_counter_clock": time.get_clock_info("perf_counter").implementation,
        "parse_user_audio_chunk_us": parse_reference(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "loadavg_start": os.getloadavg(),
        "packages": versions,
        "git_head": commit,
    }
