"""Protocol load benchmark: N real-time voice conversations through one ``ah`` server process.

Run it with ``.venv/bin/python experiments/protocol_load.py`` (``--sessions 20 --turns 3`` by default).
Issue 4 point 7: many sessions at once streaming audio in real time, with the per-message overhead
and the event-loop lag of the server under that load.

Three processes, so that client load does not distort the server's figures:

* the **server**: this file re-run as ``--_serve``. It builds exactly what ``ah run GRAPH --port 0``
  builds (``load_graph``, ``AgentServer(graphs, ServerConfig(...), AccessPolicy())``, the default
  asyncio loop, ``serve_forever`` with its SIGTERM drain) and adds measurement from the outside of
  the product code — nothing in ``src/ah`` is changed:
    - an event-loop lag probe: a task that sleeps 10 ms in a loop and records the overshoot;
    - per-message timers, by wrapping (in this process only) ``parse_client_message`` +
      ``ElevenLabsTransport._dispatch`` (one client message, from its text to its frame on the
      graph's channel — neither yields for audio or pong, so this is pure handling time),
      ``ProtocolState.send`` (one server message: JSON, the lock, the WebSocket frame, the socket
      write) and ``websockets``' ``Connection.data_received`` (WebSocket frame decoding);
  at SIGTERM it drains and writes the samples, stamped with ``perf_counter`` (CLOCK_MONOTONIC on
  Linux, so comparable across processes), to a JSON file.
* an **echo probe** (``--_probe``): one extra conversation that sends no audio, only a message of
  an unknown type every 200 ms, which the server answers at once with an ``error`` event; its
  round trip is the per-message overhead as seen from outside, idle and under load.
* the **clients** (this process): N conversations, each streaming 40 ms ``user_audio_chunk``
  messages paced to the wall clock, answering every ``ping``. A turn is 1.0 s of loud tone, then
  silence until the agent's reply has been heard, then 0.5 s more silence. Response latency
  (ARCHITECTURE.md §5) is from sending the last voiced chunk to receiving the first ``audio``.
  This process runs its own lag probe, so a slow client can be told from a slow server.

Phases, in one server process: warm-up (1 session, 1 turn, not reported), idle (only the echo
probe), 1 session (the baseline), N sessions. Server CPU time per phase comes from
``/proc/PID/stat`` (utime + stime); "net" subtracts the idle rate (the echo probe's cost).

The client, the lag probe, the ``/proc`` readings and the distributions are those of
``experiments/load_harness.py``, shared with ``capacity.py`` and ``soak.py``.

Results go to ``experiments/results/protocol_load.json``; the table shows N vs 1 ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.load_harness import (  # noqa: E402 - this folder is not a package on sys.path by default
    BURST_S,
    CHUNK_S,
    GAP_S,
    LAG_INTERVAL_S,
    LagProbe,
    SessionRun,
    build_server,
    command_line,
    conversation_url,
    dist,
    init_message,
    lag_attribution,
    machine_info,
    now,
    pong_message,
    proc_cpu_s,
    proc_rss_mb,
    run_session,
    serve,
    spawn_server,
    stop_server,
    turns_progress,
    watch_peak_rss,
    window,
)

SELF = str(Path(__file__).resolve())
DEFAULT_GRAPH = ROOT / "tests" / "graphs" / "scripted_voice.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "protocol_load.json"
PROBE_INTERVAL_S = 0.200
PROBE_TYPE = "ah_load_probe"
# What scripted_voice.yaml says, turn by turn (stt.scripted lines and llm.scripted replies cycle).
STT_LINES = ["What is the weather like?", "Tell me more.", "Stop there."]
REPLIES = [
    "It is sunny today, {name}. Expect clear skies all afternoon and a light breeze in the evening.",
    "There is not much more to say about it, really.",
]


# ---------------------------------------------------------------------------------------------------
# The server process.


class Recorder:
    """Per kind: when (perf_counter), wall duration, and CPU duration of this thread (thread_time).

    Wall time counts preemption by other processes (this machine is shared); CPU time does not, but
    where the timed code awaits and another task runs meanwhile, it counts that task's CPU too."""

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[list[float], list[float], list[float]]] = {}

    def add(self, kind: str, t: float, d: float, c: float) -> None:
        rec = self.kinds.get(kind)
        if rec is None:
            rec = self.kinds[kind] = ([], [], [])
        rec[0].append(t)
        rec[1].append(d)
        rec[2].append(c)


def _instrument(rec: Recorder) -> None:
    """Wrap the per-message paths of the server, in this process only."""
    import websockets.asyncio.connection as wsc

    import ah.nodes.elevenlabs.transport as tr
    from ah.nodes.elevenlabs.messages import ProtocolError, UserAudioChunk
    from ah.nodes.elevenlabs.state import ProtocolState

    parse_orig = tr.parse_client_message
    cpu = time.thread_time
    started: list[tuple[float, float] | None] = [None]

    def parse(raw: str | bytes) -> Any:
        t0, c0 = now(), cpu()
        try:
            msg = parse_orig(raw)
        except ProtocolError:
            rec.add("in:invalid", t0, now() - t0, cpu() - c0)  # parse only; the reply is an out:error
            raise
        started[0] = (t0, c0)  # _dispatch runs next, with no await in between
        return msg

    dispatch_orig = tr.ElevenLabsTransport._dispatch

    async def dispatch(self: Any, msg: Any) -> None:
        start, started[0] = started[0], None
        await dispatch_orig(self, msg)
        if start is not None:
            kind = "audio" if isinstance(msg, UserAudioChunk) else str(getattr(msg, "type", "?"))
            rec.add("in:" + kind, start[0], now() - start[0], cpu() - start[1])

    send_orig = ProtocolState.send

    async def send(self: Any, message: dict[str, Any]) -> bool:
        t0, c0 = now(), cpu()
        ok = await send_orig(self, message)
        rec.add("out:" + str(message.get("type")), t0, now() - t0, cpu() - c0)
        return ok

    received_orig = wsc.Connection.data_received

    def data_received(self: Any, data: bytes) -> None:
        t0, c0 = now(), cpu()
        received_orig(self, data)
        rec.add("ws_rx", t0, now() - t0, cpu() - c0)

    tr.parse_client_message = parse  # type: ignore[assignment]
    tr.ElevenLabsTransport._dispatch = dispatch  # type: ignore[method-assign]
    ProtocolState.send = send  # type: ignore[method-assign]
    wsc.Connection.data_received = data_received  # type: ignore[method-assign]


def serve_child(graph_file: str, stats_file: str, slow_callback_ms: float = 0.0) -> None:
    server, agent_id = build_server(graph_file)
    rec = Recorder()
    lag = LagProbe()
    _instrument(rec)

    async def main() -> None:
        if slow_callback_ms:  # diagnosis only: asyncio debug mode logs each callback slower than this
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = slow_callback_ms / 1000
        await serve(server, agent_id, lag.run, preload=False)  # as this benchmark has always run

    try:
        asyncio.run(main())  # the default asyncio loop
    finally:
        out = {
            "lag": lag.series(),
            "kinds": {k: {"t": t, "d": d, "c": c} for k, (t, d, c) in rec.kinds.items()},
            "started_sessions": server.started_sessions,
            "failed_sessions": server.failed_sessions,
        }
        Path(stats_file).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------------
# The echo probe process.


def probe_child(url: str, out_file: str) -> None:
    import websockets

    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with websockets.connect(url, max_size=1 << 24) as ws:
            await ws.send(init_message("probe"))
            replies: asyncio.Queue[float] = asyncio.Queue()

            async def receive() -> None:
                async for raw in ws:
                    t = now()
                    msg = json.loads(raw)
                    if msg["type"] == "ping":
                        await ws.send(pong_message(msg))
                    elif msg["type"] == "error" and PROBE_TYPE in msg["error_event"].get("message", ""):
                        replies.put_nowait(t)

            receiver = loop.create_task(receive())
            print("READY", flush=True)
            nxt = now()
            while not stop.is_set():
                while not replies.empty():  # a reply that came after its timeout
                    replies.get_nowait()
                t0 = now()
                await ws.send(json.dumps({"type": PROBE_TYPE}))
                with contextlib.suppress(TimeoutError):
                    t1 = await asyncio.wait_for(replies.get(), 5.0)
                    samples.append((t0, t1 - t0))
                nxt += PROBE_INTERVAL_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, nxt - now()))
            receiver.cancel()

    try:
        asyncio.run(main())
    finally:
        Path(out_file).write_text(json.dumps({"t": [s[0] for s in samples], "d": [s[1] for s in samples]}))


# ---------------------------------------------------------------------------------------------------
# Statistics.


def server_timings(
    kinds: dict[str, dict[str, list[float]]], select: Any, a: float, b: float
) -> dict[str, Any]:
    """Wall and thread-CPU distributions (µs) of the server records whose kind `select` picks."""
    chosen = [s for k, s in kinds.items() if select(k)]
    return {
        name: dist([x for s in chosen for x in window(s, a, b, v)], 1e6, 2)
        for v, name in (("d", "wall"), ("c", "cpu"))
    }


@dataclass
class Phase:
    name: str
    sessions: int
    start: float = 0.0
    end: float = 0.0
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    runs: list[SessionRun] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# The run.


async def run_benchmark(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ah_protocol_load_"))
    stats_file, probe_file, server_log = tmp / "server.json", tmp / "probe.json", tmp / "server.log"
    me = SELF
    server, port, agent_id = await spawn_server(
        [me, "--_serve", str(args.graph), str(stats_file), str(args.debug_slow_callback_ms)],
        server_log,
        start_timeout_s=60,
    )
    url = conversation_url(port, agent_id)
    console.print(
        f"server pid {server.pid} on port {port} ({agent_id}); echo probe every "
        f"{PROBE_INTERVAL_S * 1000:.0f} ms; clients in pid {os.getpid()}"
    )
    client_lag = LagProbe()
    lag_task = asyncio.get_running_loop().create_task(client_lag.run())
    phases: list[Phase] = []
    probe = None
    try:
        # Warm-up: the first session pays for imports and first-use costs; not reported.
        warm = await run_session(url, "warmup", 1, now(), lambda: None)
        if warm.failure or not warm.turns or warm.turns[0].timed_out:
            raise SystemExit(f"warm-up session failed: {warm.failure or 'turn timed out'}")
        probe = await asyncio.create_subprocess_exec(
            sys.executable, me, "--_probe", url, str(probe_file), stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        assert probe.stdout is not None
        await asyncio.wait_for(probe.stdout.readline(), 30)
        await asyncio.sleep(0.5)

        plan = [Phase("idle", 0), Phase("sessions_1", 1), Phase(f"sessions_{args.sessions}", args.sessions)]
        if args.sessions == 1:
            plan = plan[:2]
        with turns_progress(console) as progress:
            for phase in plan:
                task = progress.add_task(phase.name, total=max(1, phase.sessions * args.turns))
                phase.start, phase.cpu_start = now(), proc_cpu_s(server.pid)
                phase.rss_start_mb = phase.rss_peak_mb = proc_rss_mb(server.pid)
                watcher = asyncio.get_running_loop().create_task(watch_peak_rss(server.pid, phase))
                if phase.sessions == 0:
                    await asyncio.sleep(args.idle_s)
                    progress.advance(task)
                else:
                    t0 = now() + 0.05
                    stagger = args.stagger_s / phase.sessions if phase.sessions > 1 else 0.0
                    phase.runs = list(
                        await asyncio.gather(
                            *(
                                run_session(
                                    url,
                                    f"user{i:02d}",
                                    args.turns,
                                    t0 + i * stagger,
                                    lambda t=task: progress.advance(t),
                                )
                                for i in range(phase.sessions)
                            )
                        )
                    )
                phase.end, phase.cpu_end = now(), proc_cpu_s(server.pid)
                watcher.cancel()
                phases.append(phase)
                await asyncio.sleep(1.0)  # let the server wind the sessions down between phases
    finally:
        lag_task.cancel()
        if probe is not None and probe.returncode is None:
            probe.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(probe.wait(), 10)
        await stop_server(server)
    stats = (
        json.loads(stats_file.read_text())
        if stats_file.exists()
        else {"lag": {"t": [], "d": []}, "kinds": {}}
    )
    echo = json.loads(probe_file.read_text()) if probe_file.exists() else {"t": [], "d": []}
    return summarise(args, phases, stats, echo, {"t": client_lag.t, "d": client_lag.lag}, server_log)


def summarise(
    args: argparse.Namespace,
    phases: list[Phase],
    stats: dict[str, Any],
    echo: dict[str, Any],
    client_lag: dict[str, list[float]],
    server_log: Path,
) -> dict[str, Any]:
    kinds: dict[str, dict[str, list[float]]] = stats["kinds"]
    idle = phases[0]
    idle_rate = (idle.cpu_end - idle.cpu_start) / (idle.end - idle.start)
    out: dict[str, Any] = {}
    problems: list[str] = []
    for ph in phases:
        a, b = ph.start, ph.end
        wall = b - a
        cpu = ph.cpu_end - ph.cpu_start
        empty: dict[str, list[float]] = {"t": [], "d": [], "c": []}

        def both(select: Any, a: float = a, b: float = b) -> dict[str, Any]:
            return server_timings(kinds, select, a, b)

        in_audio = both(lambda k: k == "in:audio")
        in_pong = both(lambda k: k == "in:pong")
        out_all = both(lambda k: k.startswith("out:") and k != "out:error")
        out_audio = both(lambda k: k == "out:audio")
        ws_rx = kinds.get("ws_rx", empty)
        n_in_server = sum(len(window(s, a, b)) for k, s in kinds.items() if k.startswith("in:"))
        res: dict[str, Any] = {
            "sessions": ph.sessions,
            "wall_s": round(wall, 3),
            "server_event_loop_lag_ms": dist(window(stats["lag"], a, b), 1000, 3),
            "server_event_loop_lag_spikes": lag_attribution(stats["lag"], a, b),
            "client_event_loop_lag_ms": dist(window(client_lag, a, b), 1000, 3),
            "echo_rtt_ms": dist(window(echo, a, b), 1000, 3),
            "server_cpu_s": round(cpu, 3),
            "server_cores_used": round(cpu / wall, 4),
            "server_rss_mb": {"start": round(ph.rss_start_mb, 1), "peak": round(ph.rss_peak_mb, 1)},
            "server_messages": {
                "in": n_in_server,
                "out": sum(len(window(s, a, b)) for k, s in kinds.items() if k.startswith("out:")),
            },
        }
        if ph.sessions:
            net_cpu = max(0.0, cpu - idle_rate * wall)
            client_in = sum(
                r.sent.get("audio", 0) + r.sent.get("pong", 0) + r.sent.get("init", 0) for r in ph.runs
            )
            client_out = sum(sum(r.received.values()) for r in ph.runs)
            streamed_s = sum(r.sent.get("audio", 0) for r in ph.runs) * CHUNK_S
            turns = [t for r in ph.runs for t in r.turns]
            ok_turns = [t for t in turns if not t.timed_out and t.latency_s is not None]
            wrong = []
            for r in ph.runs:
                for t in r.turns:
                    want_tr = STT_LINES[t.index % len(STT_LINES)]
                    want_re = REPLIES[t.index % len(REPLIES)].format(name=r.name)
                    if t.transcript != want_tr or t.response != want_re:
                        wrong.append(
                            {
                                "session": r.name,
                                "turn": t.index,
                                "transcript": t.transcript,
                                "response": t.response,
                            }
                        )
            interruptions = sum(r.received.get("interruption", 0) for r in ph.runs)
            errors = [e for r in ph.runs for e in r.errors]
            failures = [f"{r.name}: {r.failure}" for r in ph.runs if r.failure]
            complete = sum(
                1
                for r in ph.runs
                if not r.failure
                and len(r.turns) == args.turns
                and all(not t.timed_out for t in r.turns)
                and r.metadata_first
            )
            res.update(
                {
                    "sessions_complete": complete,
                    "turns": {
                        "total": len(turns),
                        "answered": len(ok_turns),
                        "timed_out": sum(t.timed_out for t in turns),
                        "wrong_text": len(wrong),
                    },
                    "wrong_text_examples": wrong[:5],
                    "interruptions": interruptions,
                    "error_events": len(errors),
                    "error_examples": errors[:5],
                    "session_failures": failures[:5],
                    "client_messages": {
                        "sent": client_in,
                        "received": client_out,
                        "sent_per_s": round(client_in / wall, 1),
                        "received_per_s": round(client_out / wall, 1),
                    },
                    "response_latency_ms": dist([t.latency_s for t in ok_turns], 1000, 1),  # type: ignore[misc]
                    "transcript_latency_ms": dist(
                        [t.transcript_at - t.burst_end for t in turns if t.transcript_at is not None], 1000, 1
                    ),
                    "server_in_audio_handling_us": in_audio,
                    "server_in_pong_handling_us": in_pong,
                    "server_out_send_us": out_all,
                    "server_out_audio_send_us": out_audio,
                    "server_ws_decode_us_per_client_message": {
                        v: round(sum(window(ws_rx, a, b, k)) * 1e6 / max(1, client_in), 2)
                        for k, v in (("d", "wall"), ("c", "cpu"))
                    },
                    "server_cpu_net_s": round(net_cpu, 3),
                    "server_cpu_ms_per_session": round(net_cpu * 1000 / ph.sessions, 1),
                    "server_cpu_ms_per_session_audio_s": round(net_cpu * 1000 / max(streamed_s, 1e-9), 3),
                    "server_cpu_us_per_client_message": round(net_cpu * 1e6 / max(1, client_in), 1),
                    "server_cpu_us_per_message_in_or_out": round(
                        net_cpu * 1e6 / max(1, client_in + client_out), 1
                    ),
                }
            )
            if complete != ph.sessions:
                problems.append(
                    f"{ph.name}: {ph.sessions - complete} of {ph.sessions} sessions did not complete"
                )
            if errors:
                problems.append(f"{ph.name}: {len(errors)} error events, e.g. {errors[0]}")
            if interruptions:
                problems.append(f"{ph.name}: {interruptions} interruptions (none expected)")
            if wrong:
                problems.append(f"{ph.name}: {len(wrong)} turns with unexpected text, e.g. {wrong[0]}")
            if failures:
                problems.append(f"{ph.name}: session failures, e.g. {failures[0]}")
        out[ph.name] = res
    ratios: dict[str, Any] = {}
    if len(phases) == 3:
        one, many = out[phases[1].name], out[phases[2].name]

        def ratio(path: tuple[str, ...]) -> float | None:
            x: Any = one
            y: Any = many
            for key in path:
                x, y = (x or {}).get(key), (y or {}).get(key)
            return (
                round(y / x, 2) if isinstance(x, int | float) and isinstance(y, int | float) and x else None
            )

        for label, path in [
            ("server_event_loop_lag_p99", ("server_event_loop_lag_ms", "p99")),
            ("server_lag_own_work_p99", ("server_event_loop_lag_spikes", "own_work_bound_ms", "p99")),
            ("echo_rtt_p50", ("echo_rtt_ms", "p50")),
            ("echo_rtt_p99", ("echo_rtt_ms", "p99")),
            ("response_latency_p50", ("response_latency_ms", "p50")),
            ("response_latency_p95", ("response_latency_ms", "p95")),
            ("response_latency_p99", ("response_latency_ms", "p99")),
            ("server_in_audio_handling_cpu_p50", ("server_in_audio_handling_us", "cpu", "p50")),
            ("server_in_audio_handling_cpu_mean", ("server_in_audio_handling_us", "cpu", "mean")),
            ("server_in_audio_handling_wall_p50", ("server_in_audio_handling_us", "wall", "p50")),
            ("server_out_send_cpu_p50", ("server_out_send_us", "cpu", "p50")),
            ("server_out_send_wall_p50", ("server_out_send_us", "wall", "p50")),
            ("server_cpu_per_session", ("server_cpu_ms_per_session",)),
            ("server_cpu_per_client_message", ("server_cpu_us_per_client_message",)),
        ]:
            ratios[label] = ratio(path)
    if stats.get("failed_sessions"):
        problems.append(f"server counted {stats['failed_sessions']} failed sessions")
    log_tail = server_log.read_text()[-3000:] if server_log.exists() else ""
    if log_tail.strip():
        problems.append("server logged warnings/errors; see server_log_tail")
    return {
        "phases": out,
        f"ratios_{args.sessions}_vs_1": ratios,
        "problems": problems,
        "server_sessions": {"started": stats.get("started_sessions"), "failed": stats.get("failed_sessions")},
        "server_log_tail": log_tail,
    }


def print_table(console: Any, result: dict[str, Any], sessions: int) -> None:
    from rich.table import Table

    phases = result["phases"]
    names = list(phases)
    table = Table(
        title=f"ah protocol load: {sessions} real-time voice sessions vs 1 (server in its own process)"
    )
    table.add_column("figure")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column(f"{sessions} vs 1", justify="right")
    ratios = result.get(f"ratios_{sessions}_vs_1", {})

    def g(ph: dict[str, Any], *path: str) -> Any:
        x: Any = ph
        for key in path:
            x = x.get(key) if isinstance(x, dict) else None
        return x

    rows = [
        ("sessions complete", ("sessions_complete",), None, "{}"),
        ("turns answered / total", None, None, None),
        ("error events / interruptions", None, None, None),
        ("client msgs sent per s", ("client_messages", "sent_per_s"), None, "{}"),
        ("server loop lag p50 ms", ("server_event_loop_lag_ms", "p50"), None, "{:.2f}"),
        (
            "server loop lag p99 ms",
            ("server_event_loop_lag_ms", "p99"),
            "server_event_loop_lag_p99",
            "{:.2f}",
        ),
        ("server loop lag max ms", ("server_event_loop_lag_ms", "max"), None, "{:.2f}"),
        (
            "  of it own work, p99 ms",
            ("server_event_loop_lag_spikes", "own_work_bound_ms", "p99"),
            "server_lag_own_work_p99",
            "{:.2f}",
        ),
        ("  spikes >5 ms / not running", None, None, None),
        ("client loop lag p99 ms", ("client_event_loop_lag_ms", "p99"), None, "{:.2f}"),
        ("echo RTT p50 ms", ("echo_rtt_ms", "p50"), "echo_rtt_p50", "{:.2f}"),
        ("echo RTT p99 ms", ("echo_rtt_ms", "p99"), "echo_rtt_p99", "{:.2f}"),
        (
            "in: audio msg CPU p50 µs",
            ("server_in_audio_handling_us", "cpu", "p50"),
            "server_in_audio_handling_cpu_p50",
            "{:.1f}",
        ),
        ("in: audio msg CPU p99 µs", ("server_in_audio_handling_us", "cpu", "p99"), None, "{:.1f}"),
        (
            "in: audio msg wall p50 µs",
            ("server_in_audio_handling_us", "wall", "p50"),
            "server_in_audio_handling_wall_p50",
            "{:.1f}",
        ),
        ("in: audio msg wall p99 µs", ("server_in_audio_handling_us", "wall", "p99"), None, "{:.1f}"),
        ("in: ws decode CPU per msg µs", ("server_ws_decode_us_per_client_message", "cpu"), None, "{:.1f}"),
        ("out: send CPU p50 µs", ("server_out_send_us", "cpu", "p50"), "server_out_send_cpu_p50", "{:.1f}"),
        (
            "out: send wall p50 µs",
            ("server_out_send_us", "wall", "p50"),
            "server_out_send_wall_p50",
            "{:.1f}",
        ),
        ("out: send wall p99 µs", ("server_out_send_us", "wall", "p99"), None, "{:.1f}"),
        (
            "server CPU µs per client msg",
            ("server_cpu_us_per_client_message",),
            "server_cpu_per_client_message",
            "{:.1f}",
        ),
        ("server CPU ms per session", ("server_cpu_ms_per_session",), "server_cpu_per_session", "{:.1f}"),
        ("server cores used", ("server_cores_used",), None, "{:.3f}"),
        ("server RSS peak MB", ("server_rss_mb", "peak"), None, "{:.1f}"),
        ("response latency p50 ms", ("response_latency_ms", "p50"), "response_latency_p50", "{:.0f}"),
        ("response latency p95 ms", ("response_latency_ms", "p95"), "response_latency_p95", "{:.0f}"),
        ("response latency p99 ms", ("response_latency_ms", "p99"), "response_latency_p99", "{:.0f}"),
    ]
    for label, path, rkey, fmt in rows:
        cells = []
        for n in names:
            ph = phases[n]
            if label == "turns answered / total":
                cells.append(
                    f"{g(ph, 'turns', 'answered')}/{g(ph, 'turns', 'total')}" if ph["sessions"] else ""
                )
            elif label == "  spikes >5 ms / not running":
                sp = ph.get("server_event_loop_lag_spikes", {})
                cells.append(f"{sp.get('spikes')}/{sp.get('spikes_mostly_not_running')}")
            elif label == "error events / interruptions":
                cells.append(f"{ph.get('error_events')}/{ph.get('interruptions')}" if ph["sessions"] else "")
            else:
                v = g(ph, *path)
                cells.append("" if v is None else fmt.format(v))
        r = ratios.get(rkey) if rkey else None
        table.add_row(label, *cells, "" if r is None else f"{r:.2f}×")
    console.print(table)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_serve":
        serve_child(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_probe":
        probe_child(sys.argv[2], sys.argv[3])
        return
    from rich.console import Console

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions in the load phase")
    parser.add_argument("--turns", type=int, default=3, help="voice turns per session")
    parser.add_argument("--graph", type=Path, default=DEFAULT_GRAPH, help="graph to serve (a voice graph)")
    parser.add_argument(
        "--stagger-s",
        type=float,
        default=1.0,
        help="session i starts i*S/N s after the first (0: all in lockstep)",
    )
    parser.add_argument("--idle-s", type=float, default=3.0, help="length of the idle phase")
    parser.add_argument(
        "--debug-slow-callback-ms",
        type=float,
        default=0.0,
        help="diagnosis: run the server loop in asyncio debug mode and log callbacks slower than this "
        "(to the server log tail in the JSON); distorts the figures",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    console = Console()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    t0 = time.monotonic()
    result = asyncio.run(run_benchmark(args, console))
    machine["loadavg_end"] = os.getloadavg()
    doc = {
        "benchmark": "protocol_load",
        "command": command_line(),
        "started_at": started,
        "duration_s": round(time.monotonic() - t0, 1),
        "config": {
            "sessions": args.sessions,
            "turns": args.turns,
            "graph": str(args.graph.resolve().relative_to(ROOT))
            if args.graph.resolve().is_relative_to(ROOT)
            else str(args.graph),
            "stagger_s": args.stagger_s,
            "idle_s": args.idle_s,
            "chunk_ms": CHUNK_S * 1000,
            "burst_s": BURST_S,
            "gap_after_reply_s": GAP_S,
            "lag_probe_interval_ms": LAG_INTERVAL_S * 1000,
            "echo_probe_interval_ms": PROBE_INTERVAL_S * 1000,
        },
        "machine": machine,
        "definitions": {
            "server_event_loop_lag_ms": "overshoot of a 10 ms asyncio.sleep in a loop inside the server process",
            "echo_rtt_ms": "separate probe process: send a message of unknown type, receive the server's "
            "error event (parse + error send + two socket hops)",
            "server_in_audio_handling_us": "server: parse_client_message + ElevenLabsTransport._dispatch of one "
            "user_audio_chunk (text to frame on the graph channel); wall = "
            "perf_counter (counts preemption by other processes), cpu = "
            "thread_time (does not)",
            "server_ws_decode_us_per_client_message": "server: time in websockets Connection.data_received "
            "(frame decoding) / client messages sent",
            "server_out_send_us": "server: ProtocolState.send of one server message (JSON, lock, frame, "
            "socket write); error replies to the echo probe excluded",
            "server_cpu_us_per_client_message": "server process CPU (utime+stime, /proc) in the phase, minus the "
            "idle phase's rate, / client messages sent (all work included: "
            "VAD, turn policy, TTS, outgoing messages)",
            "server_cpu_ms_per_session": "that net CPU / sessions in the phase",
            "response_latency_ms": "client: sending the last voiced 40 ms chunk -> receiving the first audio "
            "message of the reply (ARCHITECTURE.md §5), includes endpointing (VAD "
            "160 ms + turn policy 300 ms) and the scripted LLM/TTS delays (~80 ms)",
        },
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(console, result, args.sessions)
    for p in result["problems"]:
        console.print(f"[yellow]problem:[/yellow] {p}", markup=True)
    console.print(f"wrote {args.out} in {doc['duration_s']} s")


if __name__ == "__main__":
    main()
